"""Reconstruction fidelity: per-layer reports, and the encode-decode of one model's tokens (the
accuracy of models after it is ``core.generation.evaluation.reconstruction_accuracy``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atlas import Atlas
from core.config import build_config
from core.embeddings.encode import (
    EMBED_PRESETS,
    EmbedConfig,
    _masked_tokens,
    haloed_apply,
    open_backbone,
    resolve_window,
)
from core.errors import WeightAtlasError
from core.tokens.plan import detokenize, tokenize_model_dir
from core.tokens.store import TokenStore

# layer report


def layer_kind(shape: list[int] | tuple[int, ...]) -> str:
    """A coarse kind from a tensor's rank: conv (4-D), matrix (2-D), vector (1-D), tensor."""
    return {4: "conv", 2: "matrix", 1: "vector", 0: "scalar"}.get(len(shape), "tensor")


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance between the empirical value distributions of two equal-size arrays."""
    return float(np.mean(np.abs(np.sort(a.ravel()) - np.sort(b.ravel()))))


def _subsample(v: np.ndarray, n: int) -> np.ndarray:
    if v.size <= n:
        return v.ravel()
    idx = np.linspace(0, v.size - 1, n).round().astype(np.int64)
    return v.ravel()[idx]


def model_tokens(atlas: Atlas, model_id: str) -> tuple[Any, list[Any]]:
    """``(tokenized model, its layer table)`` from the token store, else tokenized from the
    model's weights in the atlas in the store's scheme and token size.

    Raises:
        WeightAtlasError: the atlas holds neither tokens nor weights of ``model_id``.
    """
    from core.catalog import weights_dir
    from core.embeddings.table import token_scheme

    store = TokenStore(atlas.tokens_dir)
    if model_id in set(store.ids):
        return store.get(model_id), store.layers(model_id)
    path = weights_dir(atlas.root, model_id)
    if path is None:
        raise WeightAtlasError(f"{model_id!r} has neither tokens nor weights in {atlas.root}")
    tok = tokenize_model_dir(path, *token_scheme(atlas), digest=False)
    return tok, tok.layers


def layer_report(
    atlas: str | Path,
    model_id: str,
    backbone_dir: str | Path | None = None,
    *,
    max_values: int = 4096,
) -> list[dict[str, Any]]:
    """Per-layer reconstruction of one model through the backbone.

    Args:
        atlas: a tokenized atlas with a trained backbone.
        model_id: a model in the token store, or one whose weights the atlas holds (tokenized
            here in the store's scheme and token size: a demo atlas ships weights for more
            models than tokens).
        backbone_dir: another backbone directory (ablations); default the atlas' backbone.
        max_values: values returned per layer (evenly subsampled; metrics use all values).

    Returns:
        One record per layer: ``name, kind, shape, n_values, original, reconstructed`` (lists
        of at most ``max_values`` floats), ``r2, mse, w1_over_std``.
    """

    a = Atlas.open(atlas)
    tok, layers = model_tokens(a, model_id)
    cfg = build_config(EmbedConfig, EMBED_PRESETS, "ci")
    backbone = open_backbone(a, backbone_dir, cfg.device)
    tokens, positions = _masked_tokens(tok)
    window, halo = resolve_window(cfg, backbone)
    with torch.no_grad():
        z = haloed_apply(backbone.encode, tokens, positions, window, halo, cfg.batch_size)
        recon = haloed_apply(backbone.decode, z, positions, window, halo, cfg.batch_size)
    orig_sd = detokenize(tokens, layers)
    rec_sd = detokenize(recon.float(), layers)
    out = []
    for entry in layers:
        o = orig_sd[entry.name].double().numpy().ravel()
        r = rec_sd[entry.name].double().numpy().ravel()
        var = o.var()
        mse = float(np.mean((o - r) ** 2))
        std = float(np.sqrt(var))
        out.append(
            {
                "name": entry.name,
                "kind": layer_kind(tuple(entry.shape)),
                "shape": list(entry.shape),
                "n_values": int(o.size),
                "original": _subsample(o, max_values).tolist(),
                "reconstructed": _subsample(r, max_values).tolist(),
                "r2": float(1.0 - mse / var) if var > 0 else None,
                "mse": mse,
                "w1_over_std": wasserstein1(o, r) / std if std > 0 else None,
                "std_ratio": float(r.std()) / std if std > 0 else None,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# encode-decode accuracy


def reconstruct_tokens(
    backbone: Any, tokens: torch.Tensor, positions: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """Haloed encode then decode of one model's tokens ``(N, D)`` (the embed stage's windows)."""

    cfg = build_config(EmbedConfig, EMBED_PRESETS, "ci")
    window, halo = resolve_window(cfg, backbone)
    with torch.no_grad():
        z = haloed_apply(backbone.encode, tokens, positions, window, halo, batch_size)
        return haloed_apply(backbone.decode, z, positions, window, halo, batch_size).float()


# ---------------------------------------------------------------------------------------------
