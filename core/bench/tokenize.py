"""``weightatlas bench tokenize``: tokenization and detokenization GB/s against a memcpy
of the same bytes, and windows/s read from a token store.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import numpy as np
import torch

from core.atlas import (
    Atlas,
)
from core.bench.common import best_seconds, write_store
from core.tokens.plan import detokenize, tokenize_state_dict
from core.tokens.schemes import DEFAULT_TOKEN_SIZE, SCHEMES, trainable_of
from core.tokens.store import TokenStore, WindowDataset


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
    repeat = max(1, args.repeat)
    d = DEFAULT_TOKEN_SIZE
    out: dict[str, Any] = {"token_size": d, "threads": torch.get_num_threads(), "models": {}}
    for arch in ("resnet18", "vit_small_patch16_224"):
        out["models"][arch], weights = _scheme_speeds(arch, d, repeat)
        if arch == "resnet18":
            store_weights = weights
    out["store"] = _store_speeds(*store_weights, d, args.n or 20000, repeat)
    return out


def _scheme_speeds(
    arch: str, d: int, repeat: int
) -> tuple[dict[str, Any], tuple[dict[str, torch.Tensor], Any, set[str]]]:
    """Tokenize and detokenize GB/s of a fresh timm ``arch`` per scheme, against a memcpy of
    the same bytes; also ``(state dict, model, trainable names)`` for the store bench."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    trainable = trainable_of(model)
    sd = {k: v.detach() for k, v in model.state_dict().items() if k in trainable}
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    r: dict[str, Any] = {"weights": sum(t.numel() for t in sd.values()), "bytes": nbytes}
    t_copy = best_seconds(lambda sd=sd: _memcpy(sd), repeat)
    r["memcpy_gb_per_s"] = nbytes / t_copy / 1e9
    for scheme in SCHEMES:
        tk = tokenize_state_dict(sd, scheme, d, trainable=trainable, model=model)
        t_tok = best_seconds(
            lambda sd=sd, s=scheme, tr=trainable, m=model: tokenize_state_dict(
                sd, s, d, trainable=tr, model=m
            ),
            repeat,
        )
        t_det = best_seconds(lambda tk=tk: detokenize(tk.tokens, tk.layers), repeat)
        r[f"{scheme}_tokenize_gb_per_s"] = nbytes / t_tok / 1e9
        r[f"{scheme}_tokenize_vs_memcpy"] = t_copy / t_tok
        r[f"{scheme}_detokenize_gb_per_s"] = nbytes / t_det / 1e9
        r[f"{scheme}_detokenize_vs_memcpy"] = t_copy / t_det
        r[f"{scheme}_tokens"] = tk.n_tokens
        r[f"{scheme}_padding_fraction"] = 1 - tk.valid.sum().item() / max(1, tk.tokens.numel())
    return r, (sd, model, trainable)


def _store_speeds(
    store_sd: dict[str, torch.Tensor],
    store_model: Any,
    store_trainable: set[str],
    d: int,
    n: int,
    repeat: int,
) -> dict[str, Any]:
    """Windows/s read from a token store of four copies of one model (against slicing the
    same tokens in memory), and whole-model reads with checksums checked vs unchecked."""
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

        t_win = best_seconds(read_windows, repeat)
        src = tk.tokens.numpy()
        rng = np.random.default_rng(0)
        starts = rng.integers(0, src.shape[0] - ws, size=n)

        def copy_windows() -> None:
            for s in starts:
                torch.from_numpy(src[s : s + ws].copy())

        t_base = best_seconds(copy_windows, repeat)

        def read_models(verify: bool) -> None:  # each model whole, as embed reads them
            s = TokenStore(atlas.tokens_dir, verify=verify)
            for mid in s.ids:
                s.get(mid)

        t_checked = best_seconds(lambda: read_models(True), repeat)
        t_unchecked = best_seconds(lambda: read_models(False), repeat)
        return {
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
