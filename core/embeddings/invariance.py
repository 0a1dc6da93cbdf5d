"""Permutation invariance of the model embedding: do function-preserving copies stay put?

A permuted copy of a model (``core.backbone.views``: its hidden units reordered, the same
function) is the same model; its embedding should land next to the original's. For every
validation and test model of a family with permutation views, ``permutation_ratios`` embeds
``copies`` permuted copies and reports, per family, the median over models of

    ratio = distance(embedding(copy), embedding(original)) / median inter-model distance,

the median taken over all pairs of distinct validation and test models (every family), in the
atlas distance (Euclidean on embedding dims standardized over those models: ``zscore``).
Token embeddings come from ``encode_tokens`` (haloed, as ``weightatlas embed`` computes them)
and are pooled by ``pool_model`` with the embedding config's pooling (the atlas embedding).
With ``cfg.canonical`` (the default) both the original and the copy are encoded in canonical
form, as ``weightatlas embed`` encodes them: a copy then lands on its original by construction
(up to exact ties); ``canonical=False`` measures what the backbone itself learned.

    rows = permutation_ratios("ATLAS", "ATLAS/backbone")   # {family: {...}, "all": {...}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.atlas import Atlas
from core.backbone.model import load_backbone
from core.backbone.views import canonicalize_tokens, permute_tokens, store_groups
from core.embeddings.encode import (
    EmbedConfig,
    _masked_tokens,
    encode_tokens,
    pool_model,
    position_code,
)
from core.errors import WeightAtlasError
from core.tokens.store import TokenStore


def permutation_ratios(
    atlas: str | Path,
    backbone_dir: str | Path | None = None,
    splits: tuple[str, ...] = ("val", "test"),
    copies: int = 1,
    seed: int = 0,
    cfg: EmbedConfig | None = None,
) -> dict[str, Any]:
    """Per family: median, max and count of the permuted copies' distance ratios (see module doc).

    Args:
        atlas: a tokenized atlas.
        backbone_dir: the backbone (default: the atlas' own).
        splits: the models measured (and whose pairwise distances set the scale).
        copies: permuted copies per model.
        seed: the permutations' seed.
        cfg: embedding settings, pooling included (default ``EmbedConfig()``).

    Returns:
        ``{family: {"median_ratio", "max_ratio", "models"}, ..., "median_distance": float,
        "models": int}``.
    """
    a = Atlas.open(atlas)
    cfg = cfg or EmbedConfig()
    backbone = load_backbone(backbone_dir if backbone_dir is not None else a.backbone_dir)
    store = TokenStore(a.tokens_dir)
    rows = [
        r for s in splits for r in a.accepted(s) if r["id"] in store and not r.get("duplicate_of")
    ]
    if len(rows) < 3:
        raise WeightAtlasError(f"{a.root}: fewer than 3 tokenized models in {', '.join(splits)}")
    ids = [r["id"] for r in rows]
    groups = store_groups(a, store, ids)

    def canon(tokens: torch.Tensor, layers: list[Any], mine: list[Any]) -> torch.Tensor:
        return canonicalize_tokens(tokens, layers, mine) if cfg.canonical else tokens

    def embed(tokens: torch.Tensor, positions: torch.Tensor, code: torch.Tensor) -> np.ndarray:
        z = encode_tokens(backbone, tokens, positions, cfg, code)
        return pool_model(z, positions, cfg.pooling).double().numpy()

    base, perm, fam = [], [], []
    for r in tqdm(rows, desc="permutation ratios", unit="model"):
        tok = store.get(r["id"])
        tokens, positions = _masked_tokens(tok)
        code = position_code(backbone, positions)
        mine = groups.get(r["id"]) or []
        base.append(embed(canon(tokens, tok.layers, mine), positions, code))
        if mine:
            g = torch.Generator().manual_seed(seed)
            for _ in range(copies):
                ptok = permute_tokens(tokens, tok.layers, mine, g)
                perm.append((len(base) - 1, embed(canon(ptok, tok.layers, mine), positions, code)))
                fam.append(r.get("family"))
    z = np.stack(base)
    mu, sd = z.mean(0), z.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    zs = (z - mu) / sd
    d = np.sqrt(((zs[:, None] - zs[None]) ** 2).sum(-1))
    scale = float(np.median(d[np.triu_indices(len(z), 1)]))
    out: dict[str, Any] = {"median_distance": scale, "models": len(z)}
    ratios: dict[str, list[float]] = {}
    for (i, v), f in zip(perm, fam, strict=True):
        ratios.setdefault(f or "?", []).append(float(np.linalg.norm((v - mu) / sd - zs[i]) / scale))
    for f, vals in sorted(ratios.items()):
        out[f] = {
            "median_ratio": float(np.median(vals)),
            "max_ratio": float(np.max(vals)),
            "models": len(vals),
        }
    return out
