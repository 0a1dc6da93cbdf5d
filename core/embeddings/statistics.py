"""s(W): per-layer weight statistics pooled over relative depth, the probes' baseline (003 §3)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.atlas import Atlas
from core.tokens.store import TokenStore

DEPTH_BINS = 4


STAT_NAMES = ("mean", "std", "q0", "q25", "q50", "q75", "q100")


def depth_pooled(layer_z: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """Per-layer vectors ``(n_layers, F)`` in depth order pooled like s(W).

    Returns:
        ``((DEPTH_BINS + 1) * F,)``: the mean over each bin of relative depth (an empty bin
        takes ``overall``), then ``overall``.
    """
    n = len(layer_z)
    depth = (np.arange(n) + 0.5) / max(n, 1)
    bins = np.minimum((depth * DEPTH_BINS).astype(int), DEPTH_BINS - 1)
    feats = [
        layer_z[bins == b].mean(0) if (bins == b).any() else overall for b in range(DEPTH_BINS)
    ]
    return np.concatenate([*feats, overall]).astype(np.float64)


# s(W)


def layer_stats(values: np.ndarray) -> np.ndarray:
    """``(7,)`` mean, std and quintiles of one layer's values."""
    v = values.astype(np.float64, copy=False)
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return np.array([v.mean(), v.std(), *q])


def weight_statistics(
    tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
) -> np.ndarray:
    """The s(W) feature vector of one tokenized model.

    Args:
        tokens: ``(N, D)`` raw weight values.
        mask: ``(N, D)`` which entries are real values.
        positions: ``(N, 3)`` ``[n, l, k]``; ``l`` is the layer index (depth order).

    Returns:
        ``(7 * (DEPTH_BINS + 1),)``: per bin of relative depth the mean of its layers'
        statistics (an empty bin takes the whole-model statistics), then the whole-model
        statistics.
    """
    t = tokens.numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    m = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    layer = np.asarray(positions)[:, 1]
    ids = np.unique(layer)
    per_layer = []
    for lid in ids:
        rows = layer == lid
        per_layer.append(layer_stats(t[rows][m[rows]]))
    return depth_pooled(np.stack(per_layer), layer_stats(t[m]))  # (n_layers, 7), (7,)


def sw_features(atlas: Atlas, ids: list[str], emb: Any = None) -> np.ndarray | None:
    """``(M, 35)`` s(W) of ``ids``: stored by ``embed`` beside the embeddings (``emb.s_w``),
    else computed from the token store; None when some model has neither (the shipped demo
    atlas keeps the tokens of a few models only)."""
    if emb is not None and getattr(emb, "s_w", None) is not None:
        rows = {r["id"]: r["row"] for r in emb.models}
        return emb.s_w[[rows[i] for i in ids]].astype(np.float64)
    if not atlas.tokens.exists():
        return None
    store = TokenStore(atlas.tokens_dir)
    have = set(store.ids)
    if any(i not in have for i in ids):
        return None
    out = []
    for mid in tqdm(ids, desc="s(W)", unit="model", leave=False):
        tok = store.get(mid)
        out.append(
            weight_statistics(
                torch.as_tensor(tok.tokens),
                torch.as_tensor(tok.mask),
                torch.as_tensor(tok.positions),
            )
        )
    return np.stack(out)


# ---------------------------------------------------------------------------------------------
