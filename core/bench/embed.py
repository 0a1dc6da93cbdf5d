"""``weightatlas bench embed``: ``embed --model`` of a Hub-format BERT (the whole path: read,
tokenize, haloed encoder pass, pooling) against the backbone's own plain forward pass over the
same tokens, in one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.atlas import Atlas
from core.backbone.model import load_backbone
from core.bench.common import cpu_name, random_backbone_atlas
from core.embeddings.encode import (
    BF16_EMBED_TOLERANCE,
    EmbedConfig,
    resolve_window,
    single_model_encoder,
)
from core.errors import WeightAtlasError
from core.tokens.plan import tokenize_model_dir

# the BERTs ``bench embed --preset`` builds (transformers, random init, saved as safetensors)
EMBED_BENCH_MODELS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 512},
    "base": {},  # BertConfig's defaults: bert-base, 110 M parameters
}  # fmt: skip


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of the fastest of ``repeat`` calls of ``fn``."""
    best = (float("inf"), float("inf"))
    for _ in range(max(1, repeat)):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best


def plain_backbone_pass(backbone: Any, tokens: torch.Tensor, positions: torch.Tensor,
                        window: int, batch_size: int) -> None:  # fmt: skip
    """The backbone's own fp32 forward over every token once: ``backbone.encode`` (its own
    position code) over consecutive windows of ``window`` tokens (no halo), ``batch_size``
    windows per call, the last window shorter."""
    n = len(tokens)
    full = n // window * window
    x = tokens[:full].view(-1, window, tokens.shape[-1])
    p = positions[:full].view(-1, window, 3)
    with torch.inference_mode():
        for b in range(0, len(x), batch_size):
            backbone.encode(x[b : b + batch_size], p[b : b + batch_size])
        if full < n:
            backbone.encode(tokens[None, full:], positions[None, full:])


def bench_embed(args: argparse.Namespace) -> dict[str, Any]:
    """``embed --model`` of a BERT (``--preset tiny`` (default) or ``base``: 110 M parameters)
    against the backbone's own plain forward pass over the same tokens, in one run.

    The backbone is an untrained ``demo``-preset one (d_model 256; timing does not depend on
    its weights). ``embed_model`` is the whole single-model path (read and tokenize the
    safetensors, the streamed haloed encoder pass in ``EmbedConfig.dtype`` auto, per-layer
    moments, pooling); the baseline ``backbone_pass`` is ``plain_backbone_pass``: fp32, each
    token once, no halo (the haloed path encodes window / (window - 2 halo) = 1.33x the
    tokens). Both give wall and process CPU seconds (CPU seconds per thread count stand for a
    quiet machine's wall time when other jobs share the cores; ``loadavg`` says how loaded it
    was). Peak RSS is the process' own.
    """
    import transformers

    from core.embeddings.table import embed_model_dir_full

    name = args.preset or "tiny"
    if name not in EMBED_BENCH_MODELS:
        raise WeightAtlasError(
            f"bench embed: --preset {name!r}; choose {sorted(EMBED_BENCH_MODELS)}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = max(1, args.repeat)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        bert = transformers.BertModel(transformers.BertConfig(**EMBED_BENCH_MODELS[name]))
        params = sum(p.numel() for p in bert.parameters())
        bert.save_pretrained(root / "bert", safe_serialization=True)
        del bert
        random_backbone_atlas(root / "atlas", "demo")
        cfg = EmbedConfig()
        backbone = load_backbone(Atlas.open(root / "atlas").backbone_dir).eval()
        precision = single_model_encoder(backbone, cfg)[1]
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t_embed, c_embed = _timed(
            lambda: embed_model_dir_full(root / "bert", root / "atlas", cfg=cfg), repeat
        )
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tk = tokenize_model_dir(root / "bert", "dense", int(backbone.cfg.token_size))
        window, halo = resolve_window(cfg, backbone)
        tokens = tk.tokens.masked_fill(~tk.mask, 0.0)
        positions = torch.as_tensor(tk.positions, dtype=torch.long)
        t_pass, c_pass = _timed(
            lambda: plain_backbone_pass(backbone, tokens, positions, window, cfg.batch_size),
            repeat,
        )
    n = tk.n_tokens
    return {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "loadavg_1min_before_after": [load0[0], os.getloadavg()[0]],
        "model": f"transformers BertModel ({name})",
        "params": params,
        "tokens": n,
        "window": window,
        "halo": halo,
        "embed_precision": precision,
        "bf16_embed_tolerance_rel_l2": BF16_EMBED_TOLERANCE,
        "embed_model_seconds": t_embed,
        "embed_model_cpu_seconds": c_embed,
        "embed_model_tokens_per_s": n / t_embed,
        "baseline_backbone_pass_seconds": t_pass,
        "baseline_backbone_pass_cpu_seconds": c_pass,
        "baseline_backbone_pass_tokens_per_s": n / t_pass,
        "embed_model_vs_backbone_pass": t_pass / t_embed,
        "embed_model_vs_backbone_pass_cpu": c_pass / c_embed,
        "peak_rss_mb_before_embed": rss0 / 1024,
        "peak_rss_mb_after_embed": rss1 / 1024,
    }
