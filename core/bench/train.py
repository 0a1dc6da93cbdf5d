"""``weightatlas bench train``: training throughput of a preset, fp32 against the default
(``dtype=auto``) path, with the matmul peaks and MFU.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from core.backbone.config import build_configs
from core.backbone.device import compute_dtype, cpu_bf16_flags
from core.backbone.model import (
    Backbone,
    flops_per_token,
)
from core.bench.common import cpu_name


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
    analytically (``core.backbone.model.flops_per_token``); MFU is against the larger of the
    peaks. ``--n`` sets the windows per step (default: the preset's batch); ``--threads`` pins
    the intra-op threads (default: all cores). On CUDA, peak memory too. On a CPU with more
    than one thread, the default path also at one thread (``default_1_thread``): on a machine
    whose cores other jobs keep busy, OpenMP threads that wait on each other can cost more than
    they bring. ``--atlas`` also times one validation pass (``Evaluator.run``) over that
    atlas' val split, the reference path against the fast one (``validation``).
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
    # the MLP's first matmul as the model runs it: (tokens, C) @ (C, hidden)
    model_shape = (tokens, bcfg.d_model, int(bcfg.mlp_ratio * bcfg.d_model))
    paths = {"fp32": torch.float32}
    if default != torch.float32:
        paths["default"] = default
    from core.backbone.train import step_fn  # the training loop's optimizer and step

    steps = {name: step_fn(bcfg, tcfg, device, dt, B) for name, dt in paths.items()}
    losses = {name: fn() for name, fn in steps.items()}  # warm-up (and a sanity value)
    one_thread = device.type == "cpu" and threads > 1
    if one_thread:  # "fp32" < "default": the default path when there is one
        steps["default_1_thread"] = _at_threads(steps[max(paths)], 1, threads)
    peaks, at_shape, best, peak_mem = _measure(device, steps, model_shape, n_mm, iters, repeat)
    if "default" not in paths:
        best["default"], losses["default"] = best["fp32"], losses["fp32"]
        peak_mem["default"] = peak_mem.get("fp32")
    flops_tok = flops_per_token(bcfg, T)
    peak = max(peaks.values())
    best_dtype = max(peaks, key=peaks.get)
    out: dict[str, Any] = {
        "preset": preset,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
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
        own = peaks["fp32"] if name == "fp32" or default == torch.float32 else peaks["bf16"]
        out[name] = _path_result(tokens / best[name], best[name], flops_tok, peak, own)
        out[name]["first_loss"] = losses[name]
        if device.type == "cuda":
            out[name]["peak_memory_gb"] = peak_mem.get(name)
    out["speedup_default_vs_fp32"] = out["default"]["tokens_per_s"] / out["fp32"]["tokens_per_s"]
    if one_thread:
        one = best["default_1_thread"]
        out["default_1_thread"] = {"seconds_per_step": one, "tokens_per_s": tokens / one}
        out["speedup_1_thread_vs_threads"] = best["default" if "default" in paths else "fp32"] / one
    if getattr(args, "atlas", None):
        out["validation"] = bench_validation(args.atlas, bcfg, tcfg, device, repeat)
    # flat keys of the default path (what earlier versions of this bench reported)
    out["tokens_per_s"] = out["default"]["tokens_per_s"]
    out["mfu"] = out["default"]["mfu"]
    return out


def _measure(
    device: torch.device,
    steps: dict[str, Callable[[], Any]],
    model_shape: tuple[int, int, int],
    n_mm: int,
    iters: int,
    repeat: int,
) -> tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, float]]:
    """Best FLOP/s of an ``n_mm``-cube matmul and of the model's matmul shape per dtype (fp32,
    bf16), and best seconds of each training step in ``steps`` (``iters`` per repetition),
    interleaved per repetition so that a busy machine slows all alike.

    Returns:
        ``(peaks, peaks at the model's shape, seconds per step, CUDA peak memory in GB)``.
    """
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = dict.fromkeys(dtypes, 0.0)
    at_shape = dict.fromkeys(dtypes, 0.0)
    best = dict.fromkeys(steps, float("inf"))
    peak_mem = {}
    for _ in range(repeat):
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
    return peaks, at_shape, best, peak_mem


def _at_threads(fn: Callable[[], Any], n: int, restore: int) -> Callable[[], Any]:
    """``fn`` run with ``n`` intra-op threads (``restore`` threads set again after it)."""

    def run() -> Any:
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(restore)

    return run


def _path_result(
    tokens_per_s: float, seconds: float, flops_tok: float, peak: float, own_peak: float
) -> dict[str, Any]:
    """One training path's speed: seconds per step, tokens/s, model TFLOP/s and MFU against the
    larger matmul peak and against its own dtype's."""
    return {
        "seconds_per_step": seconds,
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_s": flops_tok * tokens_per_s / 1e12,
        "mfu": flops_tok * tokens_per_s / peak,
        "mfu_vs_own_dtype_peak": flops_tok * tokens_per_s / own_peak,
    }


def bench_validation(
    atlas: str, bcfg: Any, tcfg: Any, device: torch.device, repeat: int
) -> dict[str, Any]:
    """Seconds of one validation pass (``core.backbone.validation.Evaluator.run``, the
    selection's k-NN included) over an atlas' val split with an untrained backbone of the
    preset: the reference path (windows read per pass, ``R2Meter``) against the fast one
    (windows and position codes kept, per-kind sums from per-layer sums), interleaved per
    repetition, best of ``repeat``; the fast path's first pass (which fills its cache) apart.
    The two passes' selection scores are reported side by side."""
    import dataclasses

    from core.atlas import Atlas
    from core.backbone.device import setup_dist
    from core.backbone.selection import knn_labels
    from core.backbone.train import _kinds
    from core.backbone.validation import Evaluator
    from core.tokens.store import TokenStore

    at = Atlas.open(atlas)
    store = TokenStore(at.tokens_dir)
    ids = [r["id"] for r in at.accepted("val") if r["id"] in store and not r.get("duplicate_of")]
    bcfg = dataclasses.replace(bcfg, token_size=store.token_size)
    torch.manual_seed(0)
    model = Backbone(bcfg).to(device).eval()
    d = setup_dist(str(device))
    kinds = _kinds(store, ids)
    evs = {name: Evaluator(store, ids, bcfg.window, kinds) for name in ("reference", "fast")}
    evs["reference"].fast = False
    labels = knn_labels(at, ids)
    for ev in evs.values():
        ev.knn_labels = labels
    t = time.perf_counter()
    res = {"fast": evs["fast"].run(model, d, tcfg.batch_size, tcfg, with_layers=True)}
    first = time.perf_counter() - t
    best = {name: float("inf") for name in evs}
    for _ in range(repeat):
        for name, ev in evs.items():
            _sync(device)
            t = time.perf_counter()
            res[name] = ev.run(model, d, tcfg.batch_size, tcfg, with_layers=True)
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t)
    return {
        "val_models": len(ids),
        "val_tokens": sum(store.n_tokens(i) for i in ids),
        "windows": len(evs["fast"].chunks),
        "batch_windows": tcfg.batch_size,
        "reference_seconds": best["reference"],
        "fast_seconds": best["fast"],
        "fast_first_pass_seconds": first,
        "speedup": best["reference"] / best["fast"],
        "select_score": {n: r.get("select_score") for n, r in res.items()},
        "r2": {n: r.get("r2") for n, r in res.items()},
    }
