"""``weightatlas bench sample``: seconds of ``sample`` per architecture, fp32 against
bf16, with random init + save as the baseline; the decode pass alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.atlas import GeneratedCard
from core.backbone.device import autocast, compute_dtype
from core.backbone.inference import packed_backbone
from core.backbone.model import (
    find_backbone,
    load_backbone,
    load_config,
)
from core.bench.common import random_backbone_atlas
from core.embeddings.encode import haloed_apply, position_code, resolve_window
from core.generation.build import BF16_MIN_WIDTH, embed_config
from core.generation.config import SampleConfig
from core.generation.prompts import resolve_target
from core.generation.sample import sample


def bench_sample(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of ``sample`` for a zoo family and a 5-draw ``timm:resnet18``, fp32 vs bf16.

    Uses an untrained backbone of ``--preset`` (timing does not depend on its weights; use
    ``demo`` for the demo atlas' size) and one untrained fresh prompt. Per architecture the
    backbone precisions ``fp32`` and ``auto`` (bf16 where fast, ``SampleConfig.dtype``) are
    timed interleaved, best of ``--repeat``; in-run baseline: random init + save of the same
    architecture and count. Each run's own estimate (made before it) is reported next to it.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or "ci"
    n = args.n or 10
    repeat = max(1, args.repeat)
    out: dict[str, Any] = {
        "backbone_preset": preset,
        "device": args.device,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "atlas"
        random_backbone_atlas(root, preset)
        width = load_config(find_backbone(root)).d_model
        auto = compute_dtype("auto", torch.device(args.device))
        if args.device == "cpu" and width < BF16_MIN_WIDTH:
            auto = torch.float32  # as core.generation.build.backbone_precision decides
        out["auto_dtype"] = str(auto)
        for name, arch, k in (("zoo_cnn", "zoo:cnn", n), ("timm_resnet18", "timm:resnet18", 5)):
            target = resolve_target(
                arch, "dense", load_config(find_backbone(root)).token_size
            )  # imports, untimed
            best = {"fp32": float("inf"), "auto": float("inf")}
            estimate: dict[str, Any] = {}
            phases: dict[str, Any] = {}
            best_base = float("inf")
            for r in range(repeat):
                for dtype in ("fp32", "auto"):
                    overrides = {"n_prompts": 1, "prompt_epochs": 0, "device": args.device}
                    t0 = time.perf_counter()
                    over = {**overrides, "dtype": dtype, "n": k, "keep": k, "seed": r}
                    paths = sample(root, arch, "ci", over, out_dir=Path(tmp) / f"gen{r}{dtype}")
                    seconds = time.perf_counter() - t0
                    if seconds < best[dtype]:
                        block = GeneratedCard(paths[0]).block()
                        best[dtype] = seconds
                        phases[dtype] = block.get("seconds", {})
                        estimate[dtype] = (block.get("estimated_seconds") or {}).get("total")
                t0 = time.perf_counter()
                for i in range(k):
                    target.arch.save(target.arch.build(i), Path(tmp) / f"base{r}" / str(i))
                best_base = min(best_base, time.perf_counter() - t0)
            out[name] = {
                "arch": arch,
                "n_models": k,
                "n_tokens": int(len(target.positions)),
                "seconds_fp32": best["fp32"],
                "seconds_auto": best["auto"],
                "speedup_auto_vs_fp32": best["fp32"] / best["auto"],
                "estimated_seconds_fp32": estimate.get("fp32"),
                "estimated_seconds_auto": estimate.get("auto"),
                "phase_seconds": phases,
                "models_per_s": k / best["auto"],
                "baseline_random_init_save_seconds": best_base,
                "baseline_models_per_s": k / best_base,
            }
            if name == "timm_resnet18" and args.device == "cpu":
                out["decode_pass"] = _pass_timings(load_backbone(root), target.positions, repeat)
    return out


def _pass_timings(backbone: Any, positions: torch.Tensor, repeat: int) -> dict[str, Any]:
    """Seconds of one haloed decode pass over ``positions`` (a target's whole sequence) in fp32,
    under bf16 autocast (the baseline) and through the packed bf16 copy that sampling uses
    (``core.backbone.inference``); interleaved, best of ``repeat``."""
    cfg = SampleConfig()
    window, halo = resolve_window(embed_config(cfg), backbone)
    code = position_code(backbone, positions)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(len(positions), backbone.cfg.latent_dim, generator=g)
    packed = packed_backbone(backbone)
    cpu, bf16, fp32 = torch.device("cpu"), torch.bfloat16, torch.float32
    # name -> (decode, autocast dtype: float32 is none)
    variants: dict[str, tuple[Callable[..., torch.Tensor], torch.dtype]] = {
        "fp32": (backbone.decode, fp32),
        "bf16_autocast": (backbone.decode, bf16),
    }
    if packed is not None:
        variants["bf16_packed"] = (packed.decode, fp32)
    best = dict.fromkeys(variants, float("inf"))
    with torch.inference_mode():
        for _ in range(repeat):
            for key, (decode, dtype) in variants.items():
                t0 = time.perf_counter()
                with autocast(cpu, dtype):
                    haloed_apply(decode, z, positions, window, halo, cfg.batch_size, code=code)
                best[key] = min(best[key], time.perf_counter() - t0)
    res: dict[str, Any] = {
        "n_tokens": len(positions),
        "window": window,
        "halo": halo,
        "seconds": best,
        "tokens_per_s": {k: len(positions) / v for k, v in best.items()},
    }
    if packed is not None:
        res["speedup_packed_vs_autocast"] = best["bf16_autocast"] / best["bf16_packed"]
        res["speedup_packed_vs_fp32"] = best["fp32"] / best["bf16_packed"]
    return res
