"""Speed benchmarks, each comparing against a baseline measured in the same run; JSON on stdout.

    weightatlas bench tokenize
    weightatlas bench collect --n 1000
    weightatlas bench train --preset ci
    weightatlas bench sample
    weightatlas bench app
    weightatlas bench lineage --n 1000

Every benchmark is here, one section each, as ``bench_<name>(args) -> dict``; ``BENCHES`` at the
end maps names to them (``weightatlas bench NAME`` in ``core.cli``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atlas import (
    Atlas,
    TokenTable,
    append_jsonl,
    atomic_path,
    write_json,
)
from core.backbone.config import build_configs
from core.backbone.device import autocast, compute_dtype, cpu_bf16_flags
from core.backbone.inference import packed_backbone
from core.backbone.model import (
    BACKBONE_PRESETS,
    Backbone,
    BackboneConfig,
    find_backbone,
    flops_per_token,
    load_backbone,
    load_config,
    save_backbone,
)
from core.collection.checks import inspect_model_dir
from core.collection.config import CollectConfig
from core.collection.facts import ModelFacts
from core.collection.sources import cache_repos
from core.config import build_config
from core.embeddings.encode import haloed_apply, position_code, resolve_window
from core.errors import RejectedModel, WeightAtlasError
from core.generation.build import BF16_MIN_WIDTH, embed_config
from core.generation.config import SampleConfig
from core.generation.evaluation import read_card_block
from core.generation.prompts import resolve_target
from core.generation.sample import sample
from core.tokens.plan import detokenize, tokenize_model_dir, tokenize_state_dict
from core.tokens.schemes import DEFAULT_TOKEN_SIZE, SCHEMES, Tokenized, trainable_of
from core.tokens.shards import SHARD_TENSORS, model_checksum, shard_layout
from core.tokens.store import TokenStore, WindowDataset

# ------------------------------------------------------------ collect


def scan_cache(root: str | Path, cfg: CollectConfig | None = None) -> list[dict[str, Any]]:
    """Header-only scan of an HF cache: per repo, card + config + safetensors headers, no tensor data.

    Returns:
        ``{"id", "status", "reason", "params", "n_tensors"}`` per repo.
    """
    cfg = cfg or CollectConfig()
    out = []
    for model_id, rev, snap in cache_repos(Path(root)):
        facts = ModelFacts(model_id, rev, "hf-cache")
        try:
            inspect_model_dir(snap, cfg, facts)
            out.append(
                {
                    "id": model_id,
                    "status": "ok",
                    "reason": None,
                    "params": facts.params,
                    "n_tensors": len(facts.tensors),
                }
            )
        except RejectedModel as e:
            out.append(
                {
                    "id": model_id,
                    "status": "rejected",
                    "reason": e.reason,
                    "params": facts.params,
                    "n_tensors": 0,
                }
            )
    return out


def _walk_read(root: Path) -> int:
    """Baseline: os.walk + read the same bytes as the scan (config, card, 8 + n header bytes)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if name.endswith(".safetensors"):
                with open(p, "rb") as f:
                    n = int.from_bytes(f.read(8), "little")
                    total += 8 + len(f.read(n))
            elif name in ("config.json", "README.md"):
                with open(p, "rb") as f:
                    total += len(f.read())
    return total


def _bench_seed_repos(tmp: Path) -> list[Path]:
    """Snapshot folders to replicate: those of the zoo ``$WEIGHTATLAS_ZOO`` names, else two tiny
    transformers models made here."""
    zoo = Path(os.environ["WEIGHTATLAS_ZOO"]) if os.environ.get("WEIGHTATLAS_ZOO") else None
    if zoo is not None and zoo.is_dir():
        snaps = [snap for _id, _rev, snap in cache_repos(zoo)]
        if snaps:
            return snaps
    import transformers

    seeds = []
    for i, cfg in enumerate(
        (
            transformers.BertConfig(
                vocab_size=64,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
            ),
            transformers.ViTConfig(
                image_size=8,
                patch_size=4,
                num_channels=1,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                num_labels=10,
            ),
        )
    ):
        model = (transformers.BertModel if i == 0 else transformers.ViTForImageClassification)(cfg)
        d = tmp / "seed" / str(i)
        model.save_pretrained(d)
        (d / "README.md").write_text("---\nlicense: mit\ntags: [bench]\n---\n")
        seeds.append(d)
    return seeds


def make_bench_cache(root: Path, n: int, seeds: list[Path]) -> None:
    """``n`` HF-cache repos ``models--bench--mI`` hardlinking the seed snapshots' files."""
    for i in range(n):
        seed = seeds[i % len(seeds)]
        rev = hashlib.sha1(f"bench-{i}".encode()).hexdigest()
        repo = root / f"models--bench--m{i:05d}"
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(rev)
        for f in seed.iterdir():
            if f.is_file():
                os.link(f.resolve(), snap / f.name)


def bench_collect(args: argparse.Namespace) -> dict[str, Any]:
    """Header-only scan of N cached repos vs. os.walk + reading the same bytes (models/s)."""
    n = args.n or 1000
    repeat = max(1, args.repeat or 3)
    tmp = Path(tempfile.mkdtemp(prefix="wa-bench-collect-"))
    try:
        seeds = _bench_seed_repos(tmp)
        cache = tmp / "cache"
        cache.mkdir()
        make_bench_cache(cache, n, seeds)

        def best(fn: Callable[[], Any]) -> tuple[float, Any]:
            times, out = [], None
            for _ in range(repeat):
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            return min(times), out

        t_base, nbytes = best(lambda: _walk_read(cache))
        t_scan, rows = best(lambda: scan_cache(cache))
        ok = sum(r["status"] == "ok" for r in rows)
        return {
            "n_repos": n,
            "seed_repos": len(seeds),
            "repeat": repeat,
            "scan_seconds": t_scan,
            "scan_models_per_s": n / t_scan,
            "baseline_seconds": t_base,
            "baseline_models_per_s": n / t_base,
            "scan_over_baseline_time": t_scan / t_base,
            "bytes_read_per_repo": nbytes / n,
            "scan_ok": ok,
            "scan_rejected": dict(Counter(r["reason"] for r in rows if r["status"] != "ok")),
            "target_seconds_for_1000": 10.0,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------ tokenize


def _best(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _memcpy(sd: dict[str, torch.Tensor]) -> None:
    total = sum(t.numel() for t in sd.values())
    dst = torch.empty(total, dtype=torch.float32)
    at = 0
    for t in sd.values():
        dst[at : at + t.numel()].copy_(t.reshape(-1))
        at += t.numel()


def bench_tokenize(args: argparse.Namespace) -> dict[str, Any]:
    """GB/s of dense/sparse tokenization and detokenization vs a memcpy of the same bytes.

    Also: windows/s read from a token store (``--n`` windows of 256 tokens, default 20000), and
    whole-model reads (four ResNet-18s) with their checksums checked against unchecked reads.
    """

    import timm

    repeat = max(1, args.repeat)
    d = DEFAULT_TOKEN_SIZE
    out: dict[str, Any] = {"token_size": d, "threads": torch.get_num_threads(), "models": {}}
    for arch in ("resnet18", "vit_small_patch16_224"):
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False)
        trainable = trainable_of(model)
        sd = {k: v.detach() for k, v in model.state_dict().items() if k in trainable}
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        r: dict[str, Any] = {"weights": sum(t.numel() for t in sd.values()), "bytes": nbytes}
        t_copy = _best(lambda sd=sd: _memcpy(sd), repeat)
        r["memcpy_gb_per_s"] = nbytes / t_copy / 1e9
        for scheme in SCHEMES:
            tk = tokenize_state_dict(sd, scheme, d, trainable=trainable, model=model)
            t_tok = _best(
                lambda sd=sd, s=scheme, tr=trainable, m=model: tokenize_state_dict(
                    sd, s, d, trainable=tr, model=m
                ),
                repeat,
            )
            t_det = _best(lambda tk=tk: detokenize(tk.tokens, tk.layers), repeat)
            r[f"{scheme}_tokenize_gb_per_s"] = nbytes / t_tok / 1e9
            r[f"{scheme}_tokenize_vs_memcpy"] = t_copy / t_tok
            r[f"{scheme}_detokenize_gb_per_s"] = nbytes / t_det / 1e9
            r[f"{scheme}_detokenize_vs_memcpy"] = t_copy / t_det
            r[f"{scheme}_tokens"] = tk.n_tokens
            r[f"{scheme}_padding_fraction"] = 1 - tk.valid.sum().item() / max(1, tk.tokens.numel())
        out["models"][arch] = r
        if arch == "resnet18":
            store_sd, store_model, store_trainable = sd, model, trainable

    n = args.n or 20000
    ws = 256
    with tempfile.TemporaryDirectory() as tmp:
        atlas = Atlas.create(tmp)
        tk = tokenize_state_dict(store_sd, "dense", d, trainable=store_trainable, model=store_model)
        write_store(atlas.tokens_dir, {f"m{i}": tk for i in range(4)}, "dense", d)
        store = TokenStore(atlas.tokens_dir)
        ds = WindowDataset(store, store.ids, ws, seed=0)
        m = len(ds)

        def read_windows() -> None:
            for i in range(n):
                ds[i % m]

        t_win = _best(read_windows, repeat)
        src = tk.tokens.numpy()
        rng = np.random.default_rng(0)
        starts = rng.integers(0, src.shape[0] - ws, size=n)

        def copy_windows() -> None:
            for s in starts:
                torch.from_numpy(src[s : s + ws].copy())

        t_base = _best(copy_windows, repeat)

        def read_models(verify: bool) -> None:  # each model whole, as embed reads them
            s = TokenStore(atlas.tokens_dir, verify=verify)
            for mid in s.ids:
                s.get(mid)

        t_checked = _best(lambda: read_models(True), repeat)
        t_unchecked = _best(lambda: read_models(False), repeat)
        out["store"] = {
            "window_tokens": ws,
            "windows": n,
            "windows_per_s": n / t_win,
            "baseline_in_memory_slice_windows_per_s": n / t_base,
            "seconds": t_win,
            "whole_model_reads": len(store.ids),
            "whole_model_reads_checked_seconds": t_checked,
            "baseline_whole_model_reads_unchecked_seconds": t_unchecked,
            "checksum_overhead_fraction": t_checked / t_unchecked - 1,
        }
    return out


def write_store(
    tokens_dir: Path, models: dict[str, Tokenized], scheme: str, token_size: int
) -> None:
    """Write in-memory tokenized models as one shard plus an index part (bench, tests, generated sets)."""
    rows = []
    at = 0
    shard = "shard-" + hashlib.sha1("\n".join(models).encode()).hexdigest()[:16] + ".safetensors"
    head, table = shard_layout(
        sum(t.n_tokens for t in models.values()), token_size, {"format": "pt"}
    )
    tokens_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(tokens_dir / shard) as tmp, open(tmp, "wb") as f:
        f.write(head)
        for name in SHARD_TENSORS:
            for tk in models.values():
                t = {"positions": tk.positions, "tokens": tk.tokens, "valid": tk.valid}[name]
                f.write(t.contiguous().numpy().tobytes())
    for mid, tk in models.items():
        rows.append(
            {
                "id": mid,
                "status": "ok",
                "scheme": scheme,
                "token_size": token_size,
                "shard": shard,
                "offset": at,
                "n_tokens": tk.n_tokens,
                "n_values": int(tk.valid.sum()),
                "family": None,
                "split": None,
                "layers": [e.to_dict() for e in tk.layers],
                "excluded": tk.excluded,
                "checksum": model_checksum(
                    {"tokens": tk.tokens, "valid": tk.valid, "positions": tk.positions},
                    0,
                    tk.n_tokens,
                ),
            }
        )
        at += tk.n_tokens
    append_jsonl(TokenTable(tokens_dir).parts_dir / "rank-00000.jsonl", rows)


# ------------------------------------------------------------ train


def _matmul_flops(
    device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int], repeat: int
) -> float:
    """Best FLOP/s of an (m, k) @ (k, n) matmul on ``device`` in ``dtype``."""
    m, k, n = shape
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * m * k * n / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Training throughput of a preset, fp32 path vs the default (``dtype=auto``) path.

    In one run on one device: the fp32 and bf16 matmul peaks (best of an n x n matmul; also
    the model's own MLP matmul shape), and tokens/s of a full training step (two views, forward
    + backward + AdamW) in fp32 and in the default dtype, all interleaved per repetition so
    that a busy machine slows each alike, best of ``--repeat``. Model FLOPs are counted
    analytically (``core.backbone.model.flops_per_token``); MFU is against the larger of the peaks. ``--n`` sets the windows per step (default: the preset's batch);
    ``--threads`` pins the intra-op threads (default: all cores). On CUDA, peak memory too.
    """
    preset = args.preset or "ci"
    bcfg, tcfg = build_configs(preset)
    device = torch.device(args.device)
    threads = getattr(args, "threads", None) or os.cpu_count() or 1
    if device.type == "cpu":
        torch.set_num_threads(threads)
    default = compute_dtype(tcfg.dtype, device)
    B = args.n or tcfg.batch_size
    T = bcfg.window
    tokens = 2 * B * T  # two views per window
    repeat = max(1, args.repeat)
    iters = 8 if device.type == "cuda" else 3
    n_mm = 8192 if device.type == "cuda" else 2048
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    # the MLP's first matmul as the model runs it: (tokens, C) @ (C, hidden)
    model_shape = (tokens, bcfg.d_model, int(bcfg.mlp_ratio * bcfg.d_model))
    peaks = dict.fromkeys(dtypes, 0.0)
    at_shape = dict.fromkeys(dtypes, 0.0)
    paths = {"fp32": torch.float32}
    if default != torch.float32:
        paths["default"] = default
    from core.backbone.train import step_fn  # the training loop's optimizer and step

    steps = {name: step_fn(bcfg, tcfg, device, dt, B) for name, dt in paths.items()}
    losses = {name: fn() for name, fn in steps.items()}  # warm-up (and a sanity value)
    best = dict.fromkeys(paths, float("inf"))
    peak_mem = {}
    for _ in range(repeat):  # peaks and steps interleaved: a busy machine slows all alike
        for name, dt in dtypes.items():
            peaks[name] = max(peaks[name], _matmul_flops(device, dt, (n_mm,) * 3, 1))
            at_shape[name] = max(at_shape[name], _matmul_flops(device, dt, model_shape, 1))
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            _sync(device)
            best[name] = min(best[name], (time.perf_counter() - t) / iters)
            if device.type == "cuda":
                peak_mem[name] = torch.cuda.max_memory_allocated(device) / 1e9
    if "default" not in paths:
        best["default"], losses["default"] = best["fp32"], losses["fp32"]
        peak_mem["default"] = peak_mem.get("fp32")
    flops_tok = flops_per_token(bcfg, T)
    peak = max(peaks.values())
    best_dtype = max(peaks, key=peaks.get)
    out: dict[str, Any] = {
        "preset": preset,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_bf16_flags": sorted(cpu_bf16_flags()) if device.type == "cpu" else None,
        "threads": torch.get_num_threads(),
        "default_dtype": "bf16-autocast" if default == torch.bfloat16 else "fp32",
        "params": sum(p.numel() for p in Backbone(bcfg).parameters()),
        "d_model": bcfg.d_model,
        "n_layers": bcfg.n_layers,
        "batch_windows": B,
        "window": T,
        "token_size": bcfg.token_size,
        "tokens_per_step": tokens,
        "gflops_per_token": flops_tok / 1e9,
        "matmul_n": n_mm,
        "fp32_matmul_tflops_per_s": peaks["fp32"] / 1e12,
        "bf16_matmul_tflops_per_s": peaks["bf16"] / 1e12,
        "best_dtype": best_dtype,
        "model_matmul_shape": list(model_shape),
        "fp32_model_shape_matmul_tflops_per_s": at_shape["fp32"] / 1e12,
        "bf16_model_shape_matmul_tflops_per_s": at_shape["bf16"] / 1e12,
        "repeat": repeat,
        "iters_per_repeat": iters,
    }
    for name in ("fp32", "default"):
        tps = tokens / best[name]
        out[name] = {
            "seconds_per_step": best[name],
            "tokens_per_s": tps,
            "model_tflops_per_s": flops_tok * tps / 1e12,
            "mfu": flops_tok * tps / peak,
            "mfu_vs_own_dtype_peak": flops_tok
            * tps
            / (peaks["fp32"] if name == "fp32" or default == torch.float32 else peaks["bf16"]),
            "first_loss": losses[name],
        }
        if device.type == "cuda":
            out[name]["peak_memory_gb"] = peak_mem.get(name)
    out["speedup_default_vs_fp32"] = out["default"]["tokens_per_s"] / out["fp32"]["tokens_per_s"]
    # flat keys of the default path (what earlier versions of this bench reported)
    out["tokens_per_s"] = out["default"]["tokens_per_s"]
    out["mfu"] = out["default"]["mfu"]
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass

    return platform.processor() or "cpu"


# ------------------------------------------------------------ sample
def _random_backbone_atlas(root: Path, preset: str, scheme: str = "dense") -> None:
    """A throwaway atlas holding only an untrained backbone and a token-store index (bench)."""

    a = Atlas.create(root)
    cfg = build_config(BackboneConfig, BACKBONE_PRESETS, preset)
    torch.manual_seed(0)
    save_backbone(Backbone(cfg), a.backbone_dir)
    write_json(a.tokens.index_path, {"scheme": scheme, "token_size": cfg.token_size, "models": {}})


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
        _random_backbone_atlas(root, preset)
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
                        block = read_card_block(paths[0])
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


def bench_app(args: argparse.Namespace) -> dict[str, Any]:
    """The explorer's response times in a real browser (``explorer.bench``; needs playwright).

    The explorer is imported here, not at the top: ``core`` does not depend on the app, and a
    machine without the app's browser can still run every other benchmark.
    """
    from explorer.bench import bench_app as run

    return run(args)


# name -> benchmark(args) -> JSON-ready dict
# ------------------------------------------------------------ lineage
BENCH_TREES = {  # the seed trees when $WEIGHTATLAS_TREES_ZOO is not set (~1 minute to train)
    "families": "cnn,mlp",
    "tasks": "digits10:1",
    "checkpoints": "8",
    "trees": "cnn/digits10:2,mlp/digits10:2",
    "tree_wrong": "1",
    "tree_undeclared": "1",
}


def _permuted_copies(zoo_dir: Path, out: Path, n: int) -> tuple[list[Path], list[str], dict]:
    """``n`` model folders: the zoo's models, then copies whose every tensor is shuffled by one
    fixed permutation per copy (and tensor shape): distances inside a copy are the zoo's
    exactly, copies are unrelated to each other. Returns folders, ids and the copied truth."""
    import safetensors.torch

    from core.trees.score import zoo_truth
    from core.zoos.zoo import read_zoo

    rows = read_zoo(zoo_dir)
    truth = zoo_truth(zoo_dir)
    dirs, ids, copied = [], [], {}
    for k in range(-(-n // len(rows))):
        perms: dict[tuple[int, ...], torch.Tensor] = {}
        for r in rows:
            if len(dirs) == n:
                break
            src = zoo_dir / r["path"]
            sd = safetensors.torch.load_file(src / "model.safetensors")
            if k:
                g = torch.Generator().manual_seed(k)
                for name, t in sd.items():
                    if t.is_floating_point() and t.dim() >= 2:
                        if t.shape not in perms:
                            perms[t.shape] = torch.randperm(t.numel(), generator=g)
                        sd[name] = t.flatten()[perms[t.shape]].reshape(t.shape).contiguous()
            d = out / f"c{k}" / r["id"].split("/")[1]
            d.mkdir(parents=True)
            shutil.copy(src / "config.json", d / "config.json")
            safetensors.torch.save_file(sd, str(d / "model.safetensors"))
            model_id = f"c{k}/{r['id']}"
            dirs.append(d)
            ids.append(model_id)
            t = truth.get(r["id"])
            if t is not None:
                copied[model_id] = {
                    **t,
                    "tree": f"c{k}/{t['tree']}",
                    "parents": [f"c{k}/{p}" for p in t["parents"]],
                }
    return dirs, ids, copied


def bench_lineage(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of lineage recovery on N models (the trees zoo repeated as unrelated copies) at
    several N and samples per tensor, ours against MoTHer on the same fingerprints, with the
    accuracy of both against the copied truth."""
    from core.trees.lineage import compare, fingerprints
    from core.trees.recover import recover
    from core.trees.score import score
    from core.zoos.zoo import zoo

    n = args.n or 1000
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="wa-bench-lineage-"))
    try:
        zoo_dir = os.environ.get("WEIGHTATLAS_TREES_ZOO")
        if zoo_dir is None:
            zoo_dir = zoo("ci", tmp / "zoo", overrides=BENCH_TREES, progress=False)
        dirs, ids, truth = _permuted_copies(Path(zoo_dir), tmp / "models", n)
        sizes = sorted({m for m in (100, 300, n) if m <= n})
        runs = []
        for per_tensor in (256, 1024, 4096):
            for m in sizes if per_tensor == 1024 else [n]:
                t0 = time.perf_counter()
                fps = fingerprints(dirs[:m], per_tensor)
                t_fp = time.perf_counter() - t0
                t0 = time.perf_counter()
                own = recover(fps, "deltas")
                t_own = time.perf_counter() - t0
                t0 = time.perf_counter()
                mother = recover(fps, "mother")
                t_mother = time.perf_counter() - t0
                rows = compare(ids[:m], own, [[] for _ in range(m)], [None] * m, None, mother)
                s_own = score(rows, truth)
                s_mother = score(rows, truth, "mother_tree", "mother_parent")
                runs.append(
                    {
                        "models": m,
                        "per_tensor": per_tensor,
                        "fingerprint_seconds": round(t_fp, 3),
                        "recover_seconds": round(t_own, 3),
                        "lineage_seconds": round(t_fp + t_own, 3),
                        "mother_recover_seconds": round(t_mother, 3),
                        "pairs_compared": own.pairs_compared,
                        "ari": s_own["ari"],
                        "edge_accuracy": s_own["edge_accuracy"],
                        "mother_ari": s_mother["ari"],
                        "mother_edge_accuracy": s_mother["edge_accuracy"],
                    }
                )
        weights = sum(d.joinpath("model.safetensors").stat().st_size for d in dirs[:n])
        # model size: one checkpoint shaped like 12 BERT-base feed-forward blocks (57 M values)
        import safetensors.torch

        big = tmp / "big"
        big.mkdir()
        g = torch.Generator().manual_seed(0)
        safetensors.torch.save_file(
            {
                f"layer.{i}.{w}.weight": torch.randn(*shape, generator=g) * 0.02
                for i in range(12)
                for w, shape in (("up", (3072, 768)), ("down", (768, 3072)))
            },
            str(big / "model.safetensors"),
        )
        big_mb = (big / "model.safetensors").stat().st_size / 2**20
        t0 = time.perf_counter()
        fingerprints([big], 1024)
        t_big = time.perf_counter() - t0
        return {
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "models": n,
            "seed_zoo": str(zoo_dir),
            "weights_mb": round(weights / 2**20, 2),
            "target_seconds_for_1000": 60.0,
            "runs": runs,
            "large_model_mb": round(big_mb, 1),
            "large_model_fingerprint_seconds": round(t_big, 3),
            "fingerprint_mb_per_s": round(big_mb / t_big, 1),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------ embed

# the BERTs ``bench embed --preset`` builds (transformers, random init, saved as safetensors)
EMBED_BENCH_MODELS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 512},
    "base": {},  # BertConfig's defaults: bert-base, 110 M parameters
}  # fmt: skip


def bench_embed(args: argparse.Namespace) -> dict[str, Any]:
    """``embed --model`` of a BERT (``--preset tiny`` (default) or ``base``: 110 M parameters)
    against the backbone's own haloed pass over the same tokens, in one run.

    The backbone is an untrained ``demo``-preset one (timing does not depend on its weights).
    ``embed_model`` is the whole single-model path (read and tokenize the safetensors, the
    streamed encoder pass, per-layer moments, pooling); ``backbone_pass`` is
    ``haloed_apply(backbone.encode, ...)`` over the already tokenized model with the position
    code computed once, which is what the path costs at least. Peak RSS is the process' own.
    """
    import resource

    import transformers

    from core.embeddings.encode import EmbedConfig
    from core.embeddings.table import embed_model_dir_full

    name = args.preset or "tiny"
    if name not in EMBED_BENCH_MODELS:
        raise WeightAtlasError(
            f"bench embed: --preset {name!r}; choose {sorted(EMBED_BENCH_MODELS)}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = max(1, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        bert = transformers.BertModel(transformers.BertConfig(**EMBED_BENCH_MODELS[name]))
        params = sum(p.numel() for p in bert.parameters())
        bert.save_pretrained(root / "bert", safe_serialization=True)
        del bert
        _random_backbone_atlas(root / "atlas", "demo")
        cfg = EmbedConfig()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t_embed = _best(
            lambda: embed_model_dir_full(root / "bert", root / "atlas", cfg=cfg), repeat
        )
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        backbone = load_backbone(Atlas.open(root / "atlas").backbone_dir).eval()
        tk = tokenize_model_dir(root / "bert", "dense", int(backbone.cfg.token_size))
        window, halo = resolve_window(cfg, backbone)
        tokens = tk.tokens.masked_fill(~tk.mask, 0.0)

        def backbone_pass() -> None:
            code = position_code(backbone, tk.positions)
            haloed_apply(
                backbone.encode, tokens, tk.positions, window, halo, cfg.batch_size, code=code
            )

        t_pass = _best(backbone_pass, repeat)
    n = tk.n_tokens
    return {
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "model": f"transformers BertModel ({name})",
        "params": params,
        "tokens": n,
        "window": window,
        "halo": halo,
        "embed_model_seconds": t_embed,
        "embed_model_tokens_per_s": n / t_embed,
        "baseline_backbone_pass_seconds": t_pass,
        "baseline_backbone_pass_tokens_per_s": n / t_pass,
        "embed_model_vs_backbone_pass": t_pass / t_embed,
        "peak_rss_mb_before_embed": rss0 / 1024,
        "peak_rss_mb_after_embed": rss1 / 1024,
    }


BENCHES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "embed": bench_embed,
    "tokenize": bench_tokenize,
    "collect": bench_collect,
    "train": bench_train,
    "sample": bench_sample,
    "app": bench_app,
    "lineage": bench_lineage,
}
