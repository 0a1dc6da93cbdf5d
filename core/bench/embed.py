"""``weightatlas bench embed``: embedding Hub-format BERTs through the token path against
a plain backbone pass over the same tokens.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from core.atlas import (
    Atlas,
)
from core.backbone.model import (
    load_backbone,
)
from core.bench.common import best_seconds, cpu_name, random_backbone_atlas
from core.embeddings.encode import haloed_apply, position_code, resolve_window
from core.errors import WeightAtlasError
from core.tokens.plan import tokenize_model_dir

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
        random_backbone_atlas(root / "atlas", "demo")
        cfg = EmbedConfig()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t_embed = best_seconds(
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

        t_pass = best_seconds(backbone_pass, repeat)
    n = tk.n_tokens
    return {
        "cpu": cpu_name(),
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
