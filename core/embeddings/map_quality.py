"""Map quality: do a model's nearest neighbours share what matters? (DESIGN: what the map is for)

Leave-one-run-out k-NN (``k`` = 5 by default): a model's neighbours are the ``k`` nearest models
of *other* training runs (``core.embeddings.distances.reference_groups``), so a checkpoint's own
siblings never vouch for it. Three figures per space:

- ``family_accuracy``: the neighbours' majority family (ties: the nearest of the tied) is the
  model's family;
- ``task_accuracy``: within the model's family (families with at least two tasks), the majority
  task of its ``k`` nearest same-family neighbours is its task;
- ``test_accuracy_r2``: R² of the neighbours' mean test accuracy as a prediction of its own.

Spaces: the full model embedding (the atlas' distance metric, ``zscore`` by default), each stored
2-D map (``umap``, ``pca``; Euclidean), and the weights' plain statistics s(W)
(``core.embeddings.statistics``, standardized Euclidean). ``reference`` holds the same figures
for the predictors that ignore the features: the majority family / task and the mean test
accuracy of the other runs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from core.atlas import Atlas, atomic_write_bytes, read_json, write_json
from core.embeddings.distances import pairwise_distances, reference_groups
from core.embeddings.encode import embeddings_dir
from core.embeddings.statistics import sw_features
from core.embeddings.table import load_embeddings
from core.errors import WeightAtlasError

# Shapes: M models, F features.

MAP_QUALITY_K = 5
FIGURES = ("family_accuracy", "task_accuracy", "test_accuracy_r2")
SPACES = ("embedding", "umap", "pca", "s(W)")
RESULT_NAME = "map_quality"


def _vote(labels: list[Any]) -> Any:
    """The most frequent label, ties broken by the earliest (nearest) of the tied."""
    counts = Counter(labels)
    top = max(counts.values())
    return next(v for v in labels if counts[v] == top)


def _neighbours(d: np.ndarray, allowed: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the indices of its ``k`` nearest allowed columns, nearest first."""
    d = np.where(allowed, d, np.inf)
    out = []
    for i in range(len(d)):
        n = int(np.isfinite(d[i]).sum())
        if n == 0:
            out.append(np.zeros(0, dtype=int))
            continue
        kk = min(k, n)
        idx = np.argpartition(d[i], kk - 1)[:kk]
        out.append(idx[np.argsort(d[i, idx], kind="stable")])
    return out


def _r2(y: np.ndarray, pred: np.ndarray) -> float | None:
    ss = float(((y - y.mean()) ** 2).sum())
    if len(y) < 2 or ss <= 0:
        return None
    return float(1.0 - ((y - pred) ** 2).sum() / ss)


def knn_figures(
    d: np.ndarray,
    groups: list[str],
    family: list[str | None],
    task: list[str | None],
    accuracy: list[float | None],
    k: int = MAP_QUALITY_K,
) -> dict[str, Any]:
    """The three leave-one-run-out k-NN figures from a distance matrix.

    Args:
        d: ``(M, M)`` distances between the models.
        groups: the leave-out group (training run) of each model.
        family, task, accuracy: each model's label (None where unknown).
        k: neighbours per model.

    Returns:
        ``{family_accuracy, task_accuracy, test_accuracy_r2, n_family, n_task, n_accuracy}``
        (a figure is None when no model has the labels it needs).
    """
    m = len(groups)
    g = np.unique(np.asarray(groups, dtype=object), return_inverse=True)[1]
    other_run = g[:, None] != g[None, :]
    fam = np.array([f if f is not None else "" for f in family], dtype=object)
    has_fam = fam != ""
    out: dict[str, Any] = {}

    nn = _neighbours(d, other_run & has_fam[None, :], k)
    hits = [_vote(list(fam[nn[i]])) == fam[i] for i in range(m) if has_fam[i] and len(nn[i])]
    out["family_accuracy"] = float(np.mean(hits)) if hits else None
    out["n_family"] = len(hits)

    tsk = np.array([t if t is not None else "" for t in task], dtype=object)
    pairs = set(zip(fam[tsk != ""], tsk[tsk != ""], strict=True))
    tasks_per_family = Counter(f for f, _ in pairs)
    multi = np.array(
        [bool(has_fam[i] and tsk[i] != "" and tasks_per_family[fam[i]] >= 2) for i in range(m)],
        dtype=bool,
    )
    same_fam = fam[:, None] == fam[None, :]
    nn = _neighbours(d, other_run & same_fam & multi[None, :], k)
    hits = [_vote(list(tsk[nn[i]])) == tsk[i] for i in range(m) if multi[i] and len(nn[i])]
    out["task_accuracy"] = float(np.mean(hits)) if hits else None
    out["n_task"] = len(hits)

    acc = np.array([a if a is not None else np.nan for a in accuracy], dtype=np.float64)
    has_acc = np.isfinite(acc)
    nn = _neighbours(d, other_run & has_acc[None, :], k)
    keep = [i for i in range(m) if has_acc[i] and len(nn[i])]
    pred = np.array([acc[nn[i]].mean() for i in keep])
    out["test_accuracy_r2"] = _r2(acc[keep], pred) if keep else None
    out["n_accuracy"] = len(keep)
    return out


def reference_figures(
    groups: list[str],
    family: list[str | None],
    task: list[str | None],
    accuracy: list[float | None],
) -> dict[str, Any]:
    """The same figures for the predictors that ignore the features, also leave-one-run-out:
    the other runs' majority family, the majority task of the family's other runs, and the mean
    test accuracy of the other runs."""
    m = len(groups)
    fam = [f or "" for f in family]
    tsk = [t or "" for t in task]
    per_family: dict[str, set[str]] = {}
    for f, t in zip(fam, tsk, strict=True):
        if f and t:
            per_family.setdefault(f, set()).add(t)

    def majority(values: list[str]) -> str | None:
        counts = Counter(values)
        return max(sorted(counts), key=lambda v: counts[v]) if counts else None

    fam_hits, task_hits, acc_true, acc_pred = [], [], [], []
    for i in range(m):
        others = [j for j in range(m) if groups[j] != groups[i]]
        if fam[i]:
            pick = majority([fam[j] for j in others if fam[j]])
            if pick is not None:
                fam_hits.append(pick == fam[i])
        if fam[i] and tsk[i] and len(per_family.get(fam[i], ())) >= 2:
            pick = majority([tsk[j] for j in others if fam[j] == fam[i] and tsk[j]])
            if pick is not None:
                task_hits.append(pick == tsk[i])
        if accuracy[i] is not None:
            vals = [accuracy[j] for j in others if accuracy[j] is not None]
            if vals:
                acc_true.append(float(accuracy[i]))  # type: ignore[arg-type]
                acc_pred.append(float(np.mean(vals)))  # type: ignore[arg-type]
    return {
        "family_accuracy": float(np.mean(fam_hits)) if fam_hits else None,
        "task_accuracy": float(np.mean(task_hits)) if task_hits else None,
        "test_accuracy_r2": _r2(np.array(acc_true), np.array(acc_pred)) if acc_true else None,
        "n_family": len(fam_hits),
        "n_task": len(task_hits),
        "n_accuracy": len(acc_true),
    }


def _test_accuracy(row: dict[str, Any]) -> float | None:
    labels = row.get("labels") or {}
    for v in (labels.get("test_accuracy"), (row.get("metrics") or {}).get("test_accuracy")):
        if isinstance(v, int | float) and np.isfinite(v):
            return float(v)
    return None


def embeddings_stamp(atlas: Atlas, backbone_dir: str | Path | None = None) -> str:
    """Short sha256 of the embeddings table and maps: a cached map quality is reused only for
    the very embeddings it was computed from."""
    out = embeddings_dir(atlas, backbone_dir)
    h = hashlib.sha256()
    for name in ("models.safetensors", "maps.json", "models.jsonl"):
        path = out / name
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def map_quality(
    atlas: str | Path,
    backbone_dir: str | Path | None = None,
    k: int = MAP_QUALITY_K,
) -> dict[str, Any]:
    """Leave-one-run-out k-NN map quality of an embedded atlas (see the module docstring).

    Args:
        atlas: an embedded atlas.
        backbone_dir: another backbone's embeddings (default: the atlas' own).
        k: neighbours per model.

    Returns:
        ``{k, n_models, n_runs, metric, stamp, spaces: {embedding, umap, pca, s(W)},
        reference}``, each space a ``knn_figures`` dict (``s(W)`` is None when the atlas holds
        neither stored s(W) nor every model's tokens).
    """
    a = Atlas.open(atlas)
    out = embeddings_dir(a, backbone_dir)
    emb = load_embeddings(a.root, backbone_dir)
    if len(emb.models) < 2:
        raise WeightAtlasError(f"map quality needs at least 2 embedded models in {out}")
    ids = emb.ids
    manifest = {r["id"]: r for r in a.manifest()}
    rows = [{**r, **manifest.get(r["id"], {})} for r in emb.models]
    groups = reference_groups(a, ids)
    family = [r.get("family") or (r.get("labels") or {}).get("family") for r in rows]
    task = [(r.get("labels") or {}).get("task") for r in rows]
    accuracy = [_test_accuracy(r) for r in rows]
    info = read_json(out / "info.json") if (out / "info.json").exists() else {}
    metric = str(info.get("config", {}).get("distance_metric", "zscore"))

    def figures(x: np.ndarray, how: str) -> dict[str, Any]:
        x = np.asarray(x, dtype=np.float64)
        d = pairwise_distances(x, x, how, x)
        return {**knn_figures(d, groups, family, task, accuracy, k), "dims": int(x.shape[1])}

    spaces: dict[str, Any] = {"embedding": figures(emb.z, metric)}
    maps = read_json(out / "maps.json") if (out / "maps.json").exists() else {}
    for name in ("umap", "pca"):
        coords = maps.get(name) or {}
        if all(i in coords for i in ids):
            xy = np.array([coords[i] for i in ids], dtype=np.float64)
            d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
            spaces[name] = {**knn_figures(d, groups, family, task, accuracy, k), "dims": 2}
        else:
            spaces[name] = None
    sw = sw_features(a, ids, emb)
    spaces["s(W)"] = figures(sw, "zscore") if sw is not None else None
    return {
        "k": int(k),
        "n_models": len(ids),
        "n_runs": len(set(groups)),
        "metric": metric,
        "pooling": str(info.get("config", {}).get("pooling", "mean")),
        "stamp": embeddings_stamp(a, backbone_dir),
        "spaces": spaces,
        "reference": reference_figures(groups, family, task, accuracy),
    }


def cached_map_quality(
    atlas: str | Path, backbone_dir: str | Path | None = None, k: int = MAP_QUALITY_K
) -> dict[str, Any]:
    """``ATLAS/results/map_quality.json`` when it was computed from these very embeddings (same
    ``embeddings_stamp``, same ``k``), else :func:`map_quality` computed now (not written: the
    atlas may be read-only, as the shipped demo is)."""
    a = Atlas.open(atlas)
    path = a.results_dir / f"{RESULT_NAME}.json"
    if backbone_dir is None and path.exists():
        try:
            stored = read_json(path)
        except (OSError, ValueError):
            stored = {}
        if stored.get("stamp") == embeddings_stamp(a) and stored.get("k") == k:
            return stored
    return map_quality(a.root, backbone_dir, k)


def write_map_quality(atlas: str | Path, result: dict[str, Any], name: str = RESULT_NAME) -> Path:
    """Write ``ATLAS/results/NAME.json`` and ``NAME.md``; returns the JSON's path."""
    a = Atlas.open(atlas)
    a.results_dir.mkdir(parents=True, exist_ok=True)
    write_json(a.results_dir / f"{name}.json", result)
    atomic_write_bytes(a.results_dir / f"{name}.md", map_quality_markdown(result).encode())
    return a.results_dir / f"{name}.json"


FIGURE_TITLES = {
    "family_accuracy": "family of the neighbours = the model's family (accuracy)",
    "task_accuracy": "task of the neighbours, within a family (accuracy)",
    "test_accuracy_r2": "test accuracy from the neighbours (kNN R²)",
}
REFERENCE_TITLES = {
    "family_accuracy": "majority family",
    "task_accuracy": "majority task of the family",
    "test_accuracy_r2": "mean predictor",
}


def map_quality_rows(result: dict[str, Any]) -> list[list[Any]]:
    """Table rows: per figure, its value in every space and for the reference predictor."""
    rows = []
    for fig in FIGURES:
        cells: list[Any] = [FIGURE_TITLES[fig]]
        for space in SPACES:
            s = result["spaces"].get(space)
            cells.append(None if s is None else s.get(fig))
        ref = result["reference"].get(fig)
        cells.append(f"{REFERENCE_TITLES[fig]} {_num(ref)}")
        rows.append(cells)
    return rows


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def map_quality_markdown(result: dict[str, Any]) -> str:
    """The map-quality table with its one-paragraph explanation."""
    head = ["figure", "embedding", "2-D UMAP", "2-D PCA", "s(W)", "reference"]
    lines = [
        f"Leave-one-run-out, k = {result['k']} nearest models of other training runs, "
        f"{result['n_models']} models in {result['n_runs']} runs. Embedding: "
        f"{result.get('pooling', 'mean')} pooling, {result['metric']} distance; maps: Euclidean "
        "on the 2-D coordinates; s(W): standardized Euclidean on the weights' statistics. Task: "
        "families with at least two tasks, neighbours of the same family.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for cells in map_quality_rows(result):
        lines.append(
            "| " + " | ".join([cells[0], *(_num(v) for v in cells[1:-1]), cells[-1]]) + " |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
