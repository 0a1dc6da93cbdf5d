"""The embedding tables of an atlas read back, and nearest neighbours among them, without torch.

The app's Atlas page shows a model's neighbours from these (numpy and safetensors' numpy
reader only), so a click on the map never waits for torch to import (issue 27). Embedding a
new model folder needs the backbone: ``core.embeddings.table``, which re-exports these.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from core.atlas import Atlas, EmbeddingTables
from core.errors import WeightAtlasError

DISTANCE_METRICS = ("cosine", "zscore", "euclidean")
# the neighbours' and the UMAP map's metric of atlases embedded before
# ``EmbedConfig.neighbour_metric`` existed
LEGACY_MAP_METRIC = "cosine"


def check_metric(metric: str) -> None:
    """Raise a one-line error for a metric outside ``DISTANCE_METRICS``."""
    if metric not in DISTANCE_METRICS:
        raise WeightAtlasError(
            f"unknown distance metric {metric!r}; choose from {', '.join(DISTANCE_METRICS)}"
        )


def map_metric(info: dict[str, Any]) -> str:
    """The metric of an atlas' neighbours and UMAP map, from its ``embeddings/info.json``:
    ``map_metric`` (``EmbedConfig.neighbour_metric``, written by ``embed``), else
    ``LEGACY_MAP_METRIC`` (embeddings written before the field existed)."""
    metric = str(info.get("map_metric", LEGACY_MAP_METRIC))
    check_metric(metric)
    return metric


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as numpy arrays (one-line error when it is missing)."""
    if not path.exists():
        raise WeightAtlasError(f"{path} is missing; run `weightatlas embed` first")
    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def embeddings_dir(atlas: Atlas, backbone_dir: str | Path | None = None) -> Path:
    """Where embeddings of the atlas' main backbone (or of another backbone) are written."""
    if backbone_dir is None or Path(backbone_dir).resolve() == atlas.backbone_dir.resolve():
        return atlas.embeddings_dir
    return Path(backbone_dir) / "embeddings"


@dataclass
class Embeddings:
    """The embedding tables of an atlas."""

    z: np.ndarray  # (M, L)
    layer_z: np.ndarray  # (S, L)
    layer_spread: np.ndarray  # (S,)
    models: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    s_w: np.ndarray | None = None  # (M, 35) the weights' statistics, when `embed` stored them
    # the neighbours' metric (``core.embeddings.distances.map_metric`` of the atlas)
    metric: str = LEGACY_MAP_METRIC

    @functools.cached_property
    def ids(self) -> list[str]:
        """Model ids in row order (built once: the app asks per query, 100,000 at a time)."""
        return [r["id"] for r in self.models]

    @functools.cached_property
    def rows(self) -> dict[str, int]:
        """Row of ``z`` of each model id."""
        return {r["id"]: int(r["row"]) for r in self.models}

    @functools.cached_property
    def unit_z(self) -> np.ndarray:
        """``z`` in float64 with unit rows (cosine distances are one matrix-vector product)."""
        z = self.z.astype(np.float64)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    @functools.cached_property
    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        z = self.z.astype(np.float64)
        return z.mean(0), np.maximum(z.std(0), 1e-12)

    @functools.cached_property
    def _scaled_z(self) -> np.ndarray:
        """``z`` as ``metric`` compares it: standardized for ``zscore``, float64 otherwise."""
        z = self.z.astype(np.float64)
        if self.metric == "zscore":
            mu, sd = self._moments
            return (z - mu) / sd
        return z

    def distances(self, v: np.ndarray) -> np.ndarray:
        """``(M,)`` distances of every row to ``v (L,)`` under ``metric`` (as
        ``core.embeddings.distances.pairwise_distances`` with the atlas as reference)."""
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if self.metric == "cosine":
            return 1.0 - self.unit_z @ (v / max(float(np.linalg.norm(v)), 1e-12))
        if self.metric == "zscore":
            mu, sd = self._moments
            v = (v - mu) / sd
        return np.sqrt(np.maximum(((self._scaled_z - v) ** 2).sum(1), 0.0))

    def vector(self, model_id: str) -> np.ndarray:
        """The embedding of one collected model."""
        row = self.rows.get(model_id)
        if row is None:
            raise WeightAtlasError(f"{model_id!r} is not in the atlas' embeddings")
        return self.z[row]


def load_embeddings(
    atlas: str | Path,
    backbone_dir: str | Path | None = None,
    *,
    models: list[dict[str, Any]] | None = None,
    layers: bool = True,
) -> Embeddings:
    """Read ``ATLAS/embeddings/`` (or another backbone's embeddings).

    Args:
        atlas: an embedded atlas.
        backbone_dir: another backbone's folder (its ``embeddings/``); None: the atlas' own.
        models: the rows of ``models.jsonl`` (at least ``id`` and ``row``) when the caller has
            read them already (the app's map table), else read here.
        layers: False leaves ``layers`` empty (``layers.jsonl`` is several times the size of
            the model rows, and neighbour queries do not need it).
    """
    a = Atlas.open(atlas)
    out = EmbeddingTables(embeddings_dir(a, backbone_dir))
    t = read_tensors(out.tensors_path)
    return Embeddings(
        z=t["z"],
        layer_z=t["layer_z"],
        layer_spread=t["layer_spread"],
        models=out.models() if models is None else models,
        layers=out.layers() if layers else [],
        s_w=t.get("s_w"),
        metric=map_metric(out.info()),
    )


def nearest(
    emb: Embeddings, v: np.ndarray, k: int, skip: str | None = None
) -> list[tuple[str, float]]:
    """The ``k`` models of ``emb`` nearest to the vector ``v (L,)`` in ``emb.metric``, nearest
    first, ``skip`` (the queried model itself) left out."""
    if v.shape[0] != emb.z.shape[1]:
        raise WeightAtlasError(f"vector has {v.shape[0]} dims, embeddings have {emb.z.shape[1]}")
    d = emb.distances(v)
    # the k + 1 smallest (one may be the model itself), ties as a stable full sort orders them:
    # every distance up to the (k+1)-th smallest, then a stable sort of those few
    m = min(k + 1, len(d))
    if m == 0:
        return []
    cut = np.partition(d, m - 1)[m - 1]
    near = np.flatnonzero(d <= cut)
    order = near[np.argsort(d[near], kind="stable")]
    ids = emb.ids
    out = [(ids[i], float(d[i])) for i in order if ids[i] != skip]
    return out[:k]


def neighbours_of(emb: Embeddings, model_id: str, k: int) -> list[tuple[str, float]]:
    """The ``k`` collected models nearest to the collected model ``model_id`` (not itself), as
    ``core.embeddings.table.neighbours`` gives them for an id."""
    return nearest(emb, emb.vector(model_id).astype(np.float64), k, skip=model_id)
