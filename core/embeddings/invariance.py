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

    rows = permutation_ratios("ATLAS", "ATLAS/backbone")   # {family: {...}, "median_distance", ...}

``permutation_invariance`` measures both forms for ``weightatlas evaluate`` (the atlas
embedding's, as ``embeddings/info.json`` records it, and the learned one on raw tokens) in one
pass: the backbone loaded, the tokens read and the copies drawn once for both;
``write_permutation`` owns ``ATLAS/results/permutation.json`` and ``.md``. Issue 25's target: a
ratio of at most ``PERMUTATION_TARGET``.
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

PERMUTATION_TARGET = 0.1  # issue 25: a permuted copy within 0.1 of the median inter-model distance
RESULT_NAME = "permutation"


def permutation_ratios(
    atlas: str | Path,
    backbone_dir: str | Path | None = None,
    splits: tuple[str, ...] = ("val", "test"),
    copies: int = 1,
    seed: int = 0,
    cfg: EmbedConfig | None = None,
    desc: str = "permutation ratios",
) -> dict[str, Any]:
    """Per family: median, max and count of the permuted copies' distance ratios (see module doc).

    Args:
        atlas: a tokenized atlas.
        backbone_dir: the backbone (default: the atlas' own).
        splits: the models measured (and whose pairwise distances set the scale).
        copies: permuted copies per model.
        seed: the permutations' seed.
        cfg: embedding settings, pooling included (default ``EmbedConfig()``).
        desc: the progress bar's label.

    Returns:
        ``{family: {"median_ratio", "max_ratio", "models"}, ..., "median_distance": float,
        "models": int}``.
    """
    cfg = cfg or EmbedConfig()
    forms = (bool(cfg.canonical),)
    return _ratios_in_forms(atlas, backbone_dir, splits, copies, seed, cfg, forms, desc)[forms[0]]


def _ratios_in_forms(
    atlas: str | Path,
    backbone_dir: str | Path | None,
    splits: tuple[str, ...],
    copies: int,
    seed: int,
    cfg: EmbedConfig,
    forms: tuple[bool, ...],
    desc: str,
) -> dict[bool, dict[str, Any]]:
    """``permutation_ratios`` for each form (canonical True / False; ``cfg.canonical`` is not
    read) in one pass: the backbone loaded, each model's tokens read and its copies drawn once,
    then encoded in every form. A model without groups, or a canonical copy whose tokens are
    its original's canonical tokens, is encoded once and its embedding reused (the encoder is
    a function of its input)."""
    a = Atlas.open(atlas)
    backbone = load_backbone(backbone_dir if backbone_dir is not None else a.backbone_dir)
    store = TokenStore(a.tokens_dir)
    rows = [
        r for s in splits for r in a.accepted(s) if r["id"] in store and not r.get("duplicate_of")
    ]
    if len(rows) < 3:
        raise WeightAtlasError(f"{a.root}: fewer than 3 tokenized models in {', '.join(splits)}")
    ids = [r["id"] for r in rows]
    groups = store_groups(a, store, ids)

    def embed(tokens: torch.Tensor, positions: torch.Tensor, code: torch.Tensor) -> np.ndarray:
        z = encode_tokens(backbone, tokens, positions, cfg, code)
        return pool_model(z, positions, cfg.pooling).double().numpy()

    base: dict[bool, list[np.ndarray]] = {f: [] for f in forms}
    perm: dict[bool, list[np.ndarray]] = {f: [] for f in forms}
    owner, fam = [], []  # per copy: its original's row in base, its family
    for r in tqdm(rows, desc=desc, unit="model"):
        tok = store.get(r["id"])
        tokens, positions = _masked_tokens(tok)
        code = position_code(backbone, positions)
        mine = groups.get(r["id"]) or []
        z: dict[bool, np.ndarray] = {}
        if False in forms or not mine:
            z[False] = embed(tokens, positions, code)
        canon = tokens  # canonicalize_tokens gives tokens itself without groups
        if True in forms and mine:
            canon = canonicalize_tokens(tokens, tok.layers, mine)
            z[True] = embed(canon, positions, code)
        elif True in forms:
            z[True] = z[False]
        for f in forms:
            base[f].append(z[f])
        if mine:
            g = torch.Generator().manual_seed(seed)
            for _ in range(copies):
                ptok = permute_tokens(tokens, tok.layers, mine, g)
                owner.append(len(base[forms[0]]) - 1)
                fam.append(r.get("family"))
                if False in forms:
                    perm[False].append(embed(ptok, positions, code))
                if True in forms:
                    pcanon = canonicalize_tokens(ptok, tok.layers, mine)
                    same = torch.equal(pcanon, canon)
                    perm[True].append(base[True][-1] if same else embed(pcanon, positions, code))
    return {f: _ratio_table(np.stack(base[f]), perm[f], owner, fam) for f in forms}


def _ratio_table(
    z: np.ndarray, perm: list[np.ndarray], owner: list[int], fam: list[str | None]
) -> dict[str, Any]:
    """The ratios of the copies' embeddings ``perm`` to their originals' rows ``owner`` of ``z``
    (M, E), on dims standardized over ``z``, per family (``permutation_ratios``' result)."""
    mu, sd = z.mean(0), z.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    zs = (z - mu) / sd
    d = np.sqrt(((zs[:, None] - zs[None]) ** 2).sum(-1))
    scale = float(np.median(d[np.triu_indices(len(z), 1)]))
    out: dict[str, Any] = {"median_distance": scale, "models": len(z)}
    ratios: dict[str, list[float]] = {}
    for v, i, f in zip(perm, owner, fam, strict=True):
        ratios.setdefault(f or "?", []).append(float(np.linalg.norm((v - mu) / sd - zs[i]) / scale))
    for f, vals in sorted(ratios.items()):
        out[f] = {
            "median_ratio": float(np.median(vals)),
            "max_ratio": float(np.max(vals)),
            "models": len(vals),
        }
    return out


def ratio_families(ratios: dict[str, Any]) -> list[str]:
    """The families of a ``permutation_ratios`` result (its per-family entries), sorted."""
    return sorted(k for k, v in ratios.items() if isinstance(v, dict))


def permutation_invariance(
    atlas: str | Path,
    backbone_dir: str | Path | None = None,
    cfg: EmbedConfig | None = None,
    copies: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Permutation ratios of the atlas embedding and of what the backbone learned.

    Args:
        atlas: a tokenized atlas.
        backbone_dir: the backbone (default: the atlas' own).
        cfg: the embedding's settings (``core.embeddings.table.embedded_config``: window, halo,
            pooling and canonical form as the atlas' embeddings were written).
        copies: permuted copies per model.
        seed: the permutations' seed.

    Returns:
        ``{"embedding": ratios in cfg's form, "learned": ratios on raw tokens (canonical=False),
        "canonical": cfg.canonical, "pooling", "copies", "seed", "target"}``, the ratios as
        ``permutation_ratios`` returns them. Without canonical form both are one measurement.
    """
    cfg = cfg or EmbedConfig()
    forms = (False, True) if cfg.canonical else (False,)
    desc = "permutation ratios, learned" + (" and canonical" if cfg.canonical else "")
    ratios = _ratios_in_forms(atlas, backbone_dir, ("val", "test"), copies, seed, cfg, forms, desc)
    learned = ratios[False]
    embedding = ratios[True] if cfg.canonical else learned
    return {
        "embedding": embedding,
        "learned": learned,
        "canonical": bool(cfg.canonical),
        "pooling": cfg.pooling,
        "copies": copies,
        "seed": seed,
        "target": PERMUTATION_TARGET,
    }


def family_models(result: dict[str, Any], family: str) -> int:
    """How many models of ``family`` a ``permutation_invariance`` result permuted (its
    ratios count copies: ``copies`` per model)."""
    return int(result["learned"][family]["models"]) // max(int(result.get("copies", 1)), 1)


def _ratio(ratios: dict[str, Any], family: str, key: str = "median_ratio") -> float | None:
    entry = ratios.get(family)
    return entry.get(key) if isinstance(entry, dict) else None


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def permutation_summary(result: dict[str, Any]) -> str:
    """One line for the CLI: per family the embedding's ratio and the learned one, and the target.

    ``permutation ratio (copy distance / median inter-model distance): cnn 0.000 (learned
    0.265), mlp 0.000 (learned 0.300); target <= 0.1``
    """
    head = "permutation ratio (copy distance / median inter-model distance): "
    if result.get("skipped"):
        return head + f"not measured ({result['skipped']})"
    emb, learned = result["embedding"], result["learned"]
    fams = ratio_families(learned)
    if not fams:
        return head + "no validation or test model of a family with permutation views"
    cells = [
        f"{f} {_num(_ratio(emb, f))} (learned {_num(_ratio(learned, f))})"
        if result.get("canonical")
        else f"{f} {_num(_ratio(learned, f))}"
        for f in fams
    ]
    form = "canonical form" if result.get("canonical") else "no canonical form: embedding = learned"
    return (
        head + ", ".join(cells) + f"; target <= {result.get('target', PERMUTATION_TARGET)} ({form})"
    )


def permutation_markdown(result: dict[str, Any]) -> str:
    """The table: per family the embedding's and the learned median ratio, the learned max, and
    how many models were permuted; a line on what each column measures."""
    if result.get("skipped"):
        return f"Permutation ratios not measured: {result['skipped']}.\n"
    emb, learned = result["embedding"], result["learned"]
    fams = ratio_families(learned)
    form = (
        "canonical form (every unit group's hidden units sorted by norm before encoding, as the "
        "atlas' embeddings were written)"
        if result.get("canonical")
        else "raw tokens (the atlas' embeddings were written without canonical form)"
    )
    lines = [
        "| family | embedding ratio | learned ratio | learned max | models |",
        "|---|---|---|---|---|",
        *(
            f"| {f} | {_num(_ratio(emb, f))} | {_num(_ratio(learned, f))} | "
            f"{_num(_ratio(learned, f, 'max_ratio'))} | {family_models(result, f)} |"
            for f in fams
        ),
        "",
        "Ratio: the distance between a function-preserving permuted copy of a validation or test "
        "model and the model itself, over the median distance between two different models "
        f"(embedding {_num(emb.get('median_distance'))}, learned "
        f"{_num(learned.get('median_distance'))}, over {learned.get('models')} models; "
        "atlas distance on standardized embedding dims), the median over the family's models "
        f"({result.get('copies', 1)} cop{'y' if result.get('copies', 1) == 1 else 'ies'} each). "
        f"Embedding: the atlas' embedding, {form}, {result.get('pooling')} pooling. Learned: the "
        "same backbone on raw tokens, what its training made of permutations. Target: at most "
        f"{result.get('target', PERMUTATION_TARGET)} (issue 25).",
    ]
    if not fams:
        lines = ["No validation or test model of a family with permutation views."]
    return "\n".join(lines) + "\n"


def write_permutation(atlas: str | Path, result: dict[str, Any], name: str = RESULT_NAME) -> Path:
    """Write ``ATLAS/results/NAME.json`` and ``NAME.md``; returns the JSON's path."""
    return Atlas.open(atlas).write_result(name, result, permutation_markdown(result))
