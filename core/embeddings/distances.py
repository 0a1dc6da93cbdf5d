"""Distances in embedding space: nearest neighbours, leave-one-run-out calibration, strangers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atlas import Atlas, EmbeddingTables
from core.collection.facts import run_key
from core.embeddings.encode import EmbedConfig
from core.embeddings.reader import (  # noqa: F401  (re-exported: their old home)
    DISTANCE_METRICS,
    LEGACY_MAP_METRIC,
    check_metric,
    embeddings_dir,
    map_metric,
    read_tensors,
)
from core.errors import WeightAtlasError
from core.models.formats import read_model_config, snapshot_root
from core.models.registry import library_of, model_type_of


def cosine_distances(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``1 - cos(z_i, v)`` for every row of ``z (M, L)``."""
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    vn = v / max(float(np.linalg.norm(v)), 1e-12)
    return 1.0 - zn @ vn


OUTSIDE_PERCENTILE = 99.0
OUTSIDE_MEANING = (
    "outside the atlas: farther from its nearest atlas models than 99% of the atlas' own models "
    "are from theirs; its map position (a weighted mean of its neighbours' positions) and its "
    "neighbours say little, since nothing like it was collected"
)


def pairwise_distances(z: np.ndarray, v: np.ndarray, metric: str, ref: np.ndarray) -> np.ndarray:
    """Distances ``(M, K)`` between rows of ``z (M, L)`` and ``v (K, L)``.

    ``cosine``: ``1 - cos``; ``zscore``: Euclidean after standardizing every latent dimension
    by the mean and std of ``ref`` (the atlas); ``euclidean``: plain Euclidean.
    """
    check_metric(metric)
    if metric == "cosine":
        zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return 1.0 - zn @ vn.T
    if metric == "zscore":
        mu, sd = ref.mean(0), np.maximum(ref.std(0), 1e-12)
        a, b = (z - mu) / sd, (v - mu) / sd
    else:
        a, b = z, v
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def knn_distance(
    z: np.ndarray, v: np.ndarray, k: int, skip: int | None = None, metric: str = "zscore"
) -> float:
    """Mean distance from ``v`` to its ``k`` nearest rows of ``z`` (row ``skip`` left out)."""
    d = pairwise_distances(z, np.asarray(v, np.float64).reshape(1, -1), metric, z)[:, 0]
    if skip is not None:
        d = np.delete(d, skip)
    if len(d) == 0:
        return float("nan")
    k = max(1, min(k, len(d)))
    return float(np.partition(d, k - 1)[:k].mean())


def loo_knn_distances(
    z: np.ndarray, k: int, metric: str = "zscore", groups: list[str] | None = None
) -> np.ndarray:
    """Each atlas model's leave-one-out k-NN distance: mean distance to its ``k`` nearest
    other atlas models. ``z (M, L)`` -> ``(M,)``.

    ``groups`` (one key per row, e.g. the training run): leave the whole group out, so that a
    checkpoint's siblings of the same run do not make the atlas look tighter than it is to a
    newcomer (a new run of a known kind has no sibling in the atlas).
    """
    m = len(z)
    if m < 2:
        return np.zeros(m)
    k = max(1, min(k, m - 1))
    g = np.unique(np.asarray(groups, dtype=object), return_inverse=True)[1] if groups else None
    out = np.empty(m)
    for lo in range(0, m, 1024):  # blocks of rows: memory 1024 x M, not M x M
        hi = min(lo + 1024, m)
        d = pairwise_distances(z[lo:hi], z, metric, z)
        d[np.arange(hi - lo), np.arange(lo, hi)] = np.inf
        if g is not None:
            d[g[lo:hi, None] == g[None, :]] = np.inf
        near = np.partition(d, k - 1, axis=1)[:, :k]
        finite = np.isfinite(near)
        out[lo:hi] = np.where(finite, near, 0.0).sum(1) / np.maximum(finite.sum(1), 1)
    return out


def reference_groups(atlas: Atlas, ids: list[str]) -> list[str]:
    """The leave-out group of each atlas model: its training run (``core.collection.facts.run_key``: zoo
    checkpoints of one run), else its base model, else itself."""

    rows = {r["id"]: r for r in atlas.manifest()}
    out = []
    for i in ids:
        row = rows.get(i, {})
        key = run_key(i, row.get("labels") or {})
        if key == i and isinstance(row.get("base_model"), str):
            key = f"base:{row['base_model']}"
        out.append(key)
    return out


def distance_percentile(loo: np.ndarray, dist: float) -> float:
    """Percent of the atlas models whose own (leave-one-out) k-NN distance is below ``dist``."""
    if len(loo) == 0:
        return float("nan")
    return float(100.0 * (np.asarray(loo) < dist).mean())


def model_architecture(path: str | Path) -> tuple[str, str]:
    """``(library, model_type)`` of a model folder, read from its ``config.json`` the way the
    collector reads it (regular file, size and depth limits; remote code is refused)."""

    path = Path(path)
    config = read_model_config(path, snapshot_root(path))
    return library_of(config), model_type_of(config)


def architecture_in_atlas(
    atlas: str | Path, architecture: tuple[str, str], ids: list[str] | None = None
) -> dict[str, Any]:
    """Whether the atlas holds a model of the same architecture (library and ``model_type``,
    as in the manifest).

    Args:
        atlas: an atlas directory.
        architecture: ``(library, model_type)``, e.g. from :func:`model_architecture`.
        ids: the reference models (default: every accepted manifest row).

    Returns:
        ``{architecture, architecture_in_atlas, architecture_count, architecture_note}``.
    """
    a = Atlas.open(atlas)
    rows = {r["id"]: r for r in a.manifest() if r.get("status") == "accepted"}
    keep = set(ids) if ids is not None else set(rows)
    library, model_type = architecture
    count = sum(
        1
        for i, r in rows.items()
        if i in keep and r.get("library") == library and r.get("model_type") == model_type
    )
    name = f"{library}/{model_type}"
    note = (
        f"{count} atlas model(s) share its architecture ({name})"
        if count
        else f"no model of this architecture ({name}) is in the atlas; its position on the map "
        "is an extrapolation"
    )
    return {
        "architecture": name,
        "architecture_in_atlas": count > 0,
        "architecture_count": count,
        "architecture_note": note,
    }


def atlas_distance(
    atlas: str | Path,
    vector: np.ndarray | torch.Tensor,
    backbone_dir: str | Path | None = None,
    k: int | None = None,
    metric: str | None = None,
    architecture: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """How far a new (embedded or generated) model is from the atlas.

    ``distance`` is the mean distance from ``vector`` to its ``k`` nearest atlas models
    (``metric``: ``EmbedConfig.distance_metric``, default ``zscore``); ``percentile`` ranks it
    among the atlas models' own leave-one-out k-NN distances (a model's whole training run left
    out: ``reference_groups``). Above the 99th percentile the model is ``outside`` the atlas
    (see ``OUTSIDE_MEANING``). With ``architecture`` (``(library, model_type)``), it also says
    whether any embedded atlas model has that architecture (:func:`architecture_in_atlas`), a
    separate statement from the distance.

    Returns:
        ``{distance, percentile, outside, k, atlas_p99, atlas_max, meaning}``, plus
        ``architecture*`` keys when ``architecture`` is given.
    """
    a = Atlas.open(atlas)
    out = EmbeddingTables(embeddings_dir(a, backbone_dir))
    z = read_tensors(out.tensors_path)["z"].astype(np.float64)
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.shape[0] != z.shape[1]:
        raise WeightAtlasError(f"vector has {v.shape[0]} dims, embeddings have {z.shape[1]}")
    info = out.info()
    if k is None:
        k = int(info.get("config", {}).get("distance_k", EmbedConfig.distance_k))
    if metric is None:
        metric = str(info.get("config", {}).get("distance_metric", EmbedConfig.distance_metric))
    rows = out.models()
    stored = info.get("atlas_distance", {})
    if (
        stored.get("k") == k
        and stored.get("metric") == metric
        and len(rows) == len(z)
        and all("atlas_distance" in r for r in rows)
    ):  # computed by `embed` (leave-one-run-out), in row order
        loo = np.array([r["atlas_distance"] for r in sorted(rows, key=lambda r: r["row"])])
    else:  # embeddings written before atlas distances existed
        groups = reference_groups(a, [r["id"] for r in rows]) if len(rows) == len(z) else None
        loo = loo_knn_distances(z, k, metric, groups)
    dist = knn_distance(z, v, k, metric=metric)
    pct = distance_percentile(loo, dist)
    outside = bool(pct > OUTSIDE_PERCENTILE)
    return {
        "distance": dist,
        "percentile": pct,
        "outside": outside,
        "k": int(min(k, len(z))),
        "metric": metric,
        "atlas_p99": float(np.percentile(loo, OUTSIDE_PERCENTILE)) if len(loo) else None,
        "atlas_max": float(loo.max()) if len(loo) else None,
        "meaning": OUTSIDE_MEANING if outside else "inside the atlas",
        **(
            architecture_in_atlas(a.root, architecture, [r["id"] for r in rows])
            if architecture is not None
            else {}
        ),
    }


def place_on_map(
    atlas: str | Path, vector: np.ndarray | torch.Tensor, backbone_dir: str | Path | None = None
) -> dict[str, list[float]]:
    """Place an embedding ``(L,)`` on the atlas' existing PCA and UMAP maps without refitting.

    PCA applies the stored mean and components. UMAP takes the inverse-distance weighted mean
    of the map positions of the nearest collected models (the atlas' ``map_metric`` in
    embedding space, the metric the map was fitted with).
    """
    a = Atlas.open(atlas)
    tables = EmbeddingTables(embeddings_dir(a, backbone_dir))
    rdir = tables.reducers_dir
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    pca = read_tensors(rdir / "pca.safetensors")
    if v.shape[0] != pca["mean"].shape[0]:
        raise WeightAtlasError(
            f"vector has {v.shape[0]} dims, the map expects {pca['mean'].shape[0]}"
        )
    xy_pca = (v - pca["mean"]) @ pca["components"].T
    um = read_tensors(rdir / "umap.safetensors")
    train_z = um["train_z"].astype(np.float64)
    d = pairwise_distances(train_z, v[None], map_metric(tables.info()), train_z)[:, 0]
    k = int(min(int(um["n_neighbors"][0]), len(d)))
    nn_idx = np.argsort(d, kind="stable")[:k]
    wts = 1.0 / np.maximum(d[nn_idx], 1e-9)
    xy_umap = (wts[:, None] * um["coords"][nn_idx]).sum(0) / wts.sum()
    return {"pca": xy_pca.tolist(), "umap": xy_umap.tolist()}


# ---------------------------------------------------------------------------------------------
