"""Map quality: do a model's nearest neighbours share what matters? (DESIGN: what the map is for)

Leave-one-run-out k-NN (``k`` = 5 by default): a model's neighbours are the ``k`` nearest models
of *other* training runs (``core.embeddings.distances.reference_groups``), so a checkpoint's own
siblings never vouch for it. Three figures per space:

- ``family_accuracy``: the neighbours' majority family (ties: the nearest of the tied) is the
  model's family;
- ``task_accuracy``: within the model's family (families with at least two tasks), the majority
  task of its ``k`` nearest same-family neighbours is its task;
- ``test_accuracy_r2``: R² of the neighbours' mean test accuracy as a prediction of its own;
- ``test_accuracy_r2_same_task``: the same with the neighbours drawn from the model's own family
  and task only, and R² taken within family and task (against each pair's mean): does the map
  order the models of one zoo by accuracy, apart from grouping tasks (whose mean accuracies
  differ) together?

The module imports no torch at the top, so that the app can show a stored result at once;
:func:`map_quality` imports the embedding readers where it computes.

Spaces: the full model embedding (the neighbour lists' metric, ``EmbedConfig.neighbour_metric``,
cosine by default and for atlases embedded before it), each stored
2-D map (``umap``, ``pca``; Euclidean), and the weights' plain statistics s(W)
(``core.embeddings.statistics``, standardized Euclidean). ``reference`` holds the same figures
for the predictors that ignore the features: the majority family / task and the mean test
accuracy of the other runs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.atlas import Atlas, EmbeddingTables, read_json
from core.errors import WeightAtlasError
from core.manifest import as_row

# Shapes: M models, F features.

MAP_QUALITY_K = 5
FIGURES = ("family_accuracy", "task_accuracy", "test_accuracy_r2", "test_accuracy_r2_same_task")
SPACES = ("embedding", "umap", "pca", "s(W)")
RESULT_NAME = "map_quality"


def _vote(labels: list[Any]) -> Any:
    """The most frequent label, ties broken by the earliest (nearest) of the tied."""
    counts = Counter(labels)
    top = max(counts.values())
    return next(v for v in labels if counts[v] == top)


def _nearest(d: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row of ``d`` (inf = not allowed), the indices of its ``k`` nearest finite columns,
    nearest first."""
    out = []
    for row in d:
        n = int(np.isfinite(row).sum())
        if n == 0:
            out.append(np.zeros(0, dtype=int))
            continue
        kk = min(k, n)
        idx = np.argpartition(row, kk - 1)[:kk]
        out.append(idx[np.argsort(row[idx], kind="stable")])
    return out


def _r2(y: np.ndarray, pred: np.ndarray, groups: list[Any] | None = None) -> float | None:
    """R² of ``pred`` for ``y``; with ``groups``, within groups: against each group's own mean
    (the variance the group means leave), not the overall mean."""
    if groups is None:
        centre = y.mean()
    else:
        index: dict[Any, int] = {}
        keys = np.array([index.setdefault(g, len(index)) for g in groups], dtype=np.int64)
        centre = (np.bincount(keys, y) / np.bincount(keys))[keys]
    ss = float(((y - centre) ** 2).sum())
    if len(y) < 2 or ss <= 0:
        return None
    return float(1.0 - ((y - pred) ** 2).sum() / ss)


Distances = np.ndarray | Callable[[int, int], np.ndarray]
BLOCK_ROWS = 1024  # rows of the distance matrix at a time: memory BLOCK_ROWS x M, not M x M


def knn_figures(
    d: Distances,
    groups: list[str],
    family: list[str | None],
    task: list[str | None],
    accuracy: list[float | None],
    k: int = MAP_QUALITY_K,
) -> dict[str, Any]:
    """The three leave-one-run-out k-NN figures.

    Args:
        d: ``(M, M)`` distances between the models, or ``d(lo, hi) -> (hi - lo, M)`` giving
            rows ``lo:hi`` of it (computed a block at a time).
        groups: the leave-out group (training run) of each model.
        family, task, accuracy: each model's label (None where unknown).
        k: neighbours per model.

    Returns:
        ``{family_accuracy, task_accuracy, test_accuracy_r2, test_accuracy_r2_same_task,
        n_family, n_task, n_accuracy, n_same_task}`` (a figure is None when no model has the
        labels it needs).
    """
    m = len(groups)
    g = np.unique(np.asarray(groups, dtype=object), return_inverse=True)[1]
    fam = np.array([f if f is not None else "" for f in family], dtype=object)
    tsk = np.array([t if t is not None else "" for t in task], dtype=object)
    acc = np.array([a if a is not None else np.nan for a in accuracy], dtype=np.float64)
    has_fam, has_acc = fam != "", np.isfinite(acc)
    pairs = set(zip(fam[tsk != ""], tsk[tsk != ""], strict=True))
    tasks_per_family = Counter(f for f, _ in pairs)
    multi = np.array(
        [bool(has_fam[i] and tsk[i] != "" and tasks_per_family[fam[i]] >= 2) for i in range(m)],
        dtype=bool,
    )
    fam_hits: list[bool] = []
    task_hits: list[bool] = []
    keep: list[int] = []
    pred: list[float] = []
    keep_same: list[int] = []
    pred_same: list[float] = []
    for lo in range(0, m, BLOCK_ROWS):
        hi = min(lo + BLOCK_ROWS, m)
        block = np.array(d[lo:hi] if isinstance(d, np.ndarray) else d(lo, hi), dtype=np.float64)
        block = np.where(g[lo:hi, None] != g[None, :], block, np.inf)  # other runs only
        for r, nn in enumerate(_nearest(np.where(has_fam[None, :], block, np.inf), k)):
            if has_fam[lo + r] and len(nn):
                fam_hits.append(_vote(list(fam[nn])) == fam[lo + r])
        same = (fam[lo:hi, None] == fam[None, :]) & multi[None, :]
        for r, nn in enumerate(_nearest(np.where(same, block, np.inf), k)):
            if multi[lo + r] and len(nn):
                task_hits.append(_vote(list(tsk[nn])) == tsk[lo + r])
        block = np.where(has_acc[None, :], block, np.inf)
        for r, nn in enumerate(_nearest(block, k)):
            if has_acc[lo + r] and len(nn):
                keep.append(lo + r)
                pred.append(float(acc[nn].mean()))
        same_task = (fam[lo:hi, None] == fam[None, :]) & (tsk[lo:hi, None] == tsk[None, :])
        same_task &= has_fam[None, :] & (tsk != "")[None, :]
        for r, nn in enumerate(_nearest(np.where(same_task, block, np.inf), k)):
            if has_acc[lo + r] and len(nn):
                keep_same.append(lo + r)
                pred_same.append(float(acc[nn].mean()))
    return {
        "family_accuracy": float(np.mean(fam_hits)) if fam_hits else None,
        "task_accuracy": float(np.mean(task_hits)) if task_hits else None,
        "test_accuracy_r2": _r2(acc[keep], np.array(pred)) if keep else None,
        "test_accuracy_r2_same_task": (
            _r2(acc[keep_same], np.array(pred_same), [(fam[i], tsk[i]) for i in keep_same])
            if keep_same
            else None
        ),
        "n_family": len(fam_hits),
        "n_task": len(task_hits),
        "n_accuracy": len(keep),
        "n_same_task": len(keep_same),
    }


def _majority(counts: Counter) -> str | None:
    """The most frequent label (ties: the first in sorted order), None if there is none."""
    live = {v: c for v, c in counts.items() if c > 0}
    return max(sorted(live), key=lambda v: live[v]) if live else None


def reference_figures(
    groups: list[str],
    family: list[str | None],
    task: list[str | None],
    accuracy: list[float | None],
) -> dict[str, Any]:
    """The same figures for the predictors that ignore the features, also leave-one-run-out:
    the other runs' majority family, the majority task of the family's other runs, the mean
    test accuracy of the other runs and that of the other runs of the model's family and task.

    Also ``task_ceiling``: the share of the task-scored models whose family and task occur in
    another run. No leave-one-run-out vote can name a task that no other run of the family has,
    so no space can score above it; a code that puts every same-task model of other runs
    nearest reaches it when those runs hold at least ``k // 2 + 1`` such models (or ties are
    broken by the nearest, as here)."""
    fam = [f or "" for f in family]
    tsk = [t or "" for t in task]
    per_family: dict[str, set[str]] = {}
    for f, t in zip(fam, tsk, strict=True):
        if f and t:
            per_family.setdefault(f, set()).add(t)
    fam_all = Counter(f for f in fam if f)
    task_all = Counter((f, t) for f, t in zip(fam, tsk, strict=True) if f and t)
    acc_sum, acc_n = 0.0, 0
    by_group: dict[str, dict[str, Any]] = {}
    for i, key in enumerate(groups):
        b = by_group.setdefault(key, {"fam": Counter(), "task": Counter(), "sum": 0.0, "n": 0})
        if fam[i]:
            b["fam"][fam[i]] += 1
            if tsk[i]:
                b["task"][(fam[i], tsk[i])] += 1
        if accuracy[i] is not None:
            b["sum"] += float(accuracy[i])  # type: ignore[arg-type]
            b["n"] += 1
            acc_sum += float(accuracy[i])  # type: ignore[arg-type]
            acc_n += 1
    fam_hits, task_hits, task_reachable, acc_true, acc_pred = [], [], [], [], []
    for i, key in enumerate(groups):
        b = by_group[key]
        if fam[i]:
            pick = _majority(fam_all - b["fam"])
            if pick is not None:
                fam_hits.append(pick == fam[i])
        if fam[i] and tsk[i] and len(per_family.get(fam[i], ())) >= 2:
            rest = Counter({t: c for (f, t), c in (task_all - b["task"]).items() if f == fam[i]})
            pick = _majority(rest)
            if pick is not None:
                task_hits.append(pick == tsk[i])
                task_reachable.append(rest[tsk[i]] > 0)
        if accuracy[i] is not None and acc_n > b["n"]:
            acc_true.append(float(accuracy[i]))  # type: ignore[arg-type]
            acc_pred.append((acc_sum - b["sum"]) / (acc_n - b["n"]))
    return {
        "family_accuracy": float(np.mean(fam_hits)) if fam_hits else None,
        "task_accuracy": float(np.mean(task_hits)) if task_hits else None,
        "test_accuracy_r2": _r2(np.array(acc_true), np.array(acc_pred)) if acc_true else None,
        "test_accuracy_r2_same_task": _same_task_mean_r2(groups, fam, tsk, accuracy),
        "task_ceiling": float(np.mean(task_reachable)) if task_reachable else None,
        "n_family": len(fam_hits),
        "n_task": len(task_hits),
        "n_accuracy": len(acc_true),
    }


def _same_task_mean_r2(
    groups: list[str], fam: list[str], tsk: list[str], accuracy: list[float | None]
) -> float | None:
    """R² within family and task of the mean test accuracy of the other runs of each model's
    family and task (models whose family and task no other run has are left out, as the k-NN
    figure leaves them)."""
    totals: dict[tuple[str, ...], list[float]] = {}  # (f, t) and (run, f, t) -> [sum, n]
    for key, f, t, a in zip(groups, fam, tsk, accuracy, strict=True):
        if f and t and a is not None:
            for k in ((f, t), (key, f, t)):
                totals.setdefault(k, [0.0, 0.0])
                totals[k][0] += float(a)
                totals[k][1] += 1
    y, pred, pair = [], [], []
    for key, f, t, a in zip(groups, fam, tsk, accuracy, strict=True):
        if f and t and a is not None:
            (s_all, n_all), (s_run, n_run) = totals[(f, t)], totals[(key, f, t)]
            if n_all > n_run:
                y.append(float(a))
                pred.append((s_all - s_run) / (n_all - n_run))
                pair.append((f, t))
    return _r2(np.array(y), np.array(pred), pair) if y else None


def embeddings_stamp(atlas: Atlas, backbone_dir: str | Path | None = None) -> str:
    """Short sha256 of the embeddings table and maps: a cached map quality is reused only for
    the very embeddings it was computed from."""
    if backbone_dir is None:
        out = EmbeddingTables(atlas.embeddings_dir)
    else:
        from core.embeddings.encode import embeddings_dir  # torch: only for another backbone

        out = EmbeddingTables(embeddings_dir(atlas, backbone_dir))
    h = hashlib.sha256()
    for path in (out.tensors_path, out.maps_path, out.models_path):
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
    # torch-backed readers imported here: the Atlas page reads a stored result (and this
    # module's tables) before torch is loaded (issue 27)
    from core.embeddings.distances import map_metric, pairwise_distances, reference_groups
    from core.embeddings.encode import embeddings_dir
    from core.embeddings.statistics import sw_features
    from core.embeddings.table import load_embeddings

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
    accuracy = [as_row(r).accuracy for r in rows]
    info = EmbeddingTables(out).info()
    metric = map_metric(info)  # the neighbour lists' metric

    def figures(x: np.ndarray, how: str) -> dict[str, Any]:
        x = np.asarray(x, dtype=np.float64)

        def rows(lo: int, hi: int) -> np.ndarray:
            if how == "euclidean":  # the 2-D maps
                return np.sqrt(((x[lo:hi, None, :] - x[None, :, :]) ** 2).sum(-1))
            return pairwise_distances(x[lo:hi], x, how, x)

        return {**knn_figures(rows, groups, family, task, accuracy, k), "dims": int(x.shape[1])}

    spaces: dict[str, Any] = {"embedding": figures(emb.z, metric)}
    maps_path = EmbeddingTables(out).maps_path
    maps = read_json(maps_path) if maps_path.exists() else {}
    for name in ("umap", "pca"):
        coords = maps.get(name) or {}
        if all(i in coords for i in ids):
            xy = np.array([coords[i] for i in ids], dtype=np.float64)
            spaces[name] = figures(xy, "euclidean")
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


def stored_map_quality(atlas: str | Path) -> dict[str, Any] | None:
    """``ATLAS/results/map_quality.json`` if it was computed from the atlas' current embeddings
    (same ``embeddings_stamp``) with ``MAP_QUALITY_K``, else None."""
    a = Atlas.open(atlas)
    path = a.results_dir / f"{RESULT_NAME}.json"
    if not path.exists():
        return None
    try:
        stored = read_json(path)
    except (OSError, ValueError):
        return None
    ok = stored.get("stamp") == embeddings_stamp(a) and stored.get("k") == MAP_QUALITY_K
    return stored if ok else None


def cached_map_quality(
    atlas: str | Path, backbone_dir: str | Path | None = None, k: int = MAP_QUALITY_K
) -> dict[str, Any]:
    """``ATLAS/results/map_quality.json`` when it was computed from these very embeddings (same
    ``embeddings_stamp``, same ``k``), else :func:`map_quality` computed now (not written: the
    atlas may be read-only, as the shipped demo is)."""
    if backbone_dir is None and k == MAP_QUALITY_K:
        stored = stored_map_quality(atlas)
        if stored is not None:
            return stored
    return map_quality(atlas, backbone_dir, k)


def write_map_quality(atlas: str | Path, result: dict[str, Any], name: str = RESULT_NAME) -> Path:
    """Write ``ATLAS/results/NAME.json`` and ``NAME.md``; returns the JSON's path."""
    return Atlas.open(atlas).write_result(name, result, map_quality_markdown(result))


FIGURE_TITLES = {
    "family_accuracy": "family of the neighbours = the model's family (accuracy)",
    "task_accuracy": "task of the neighbours, within a family (accuracy)",
    "test_accuracy_r2": "test accuracy from the neighbours (kNN R²)",
    "test_accuracy_r2_same_task": "test accuracy from neighbours of the same family and task "
    "(kNN R² within family and task)",
}
REFERENCE_TITLES = {
    "family_accuracy": "majority family",
    "task_accuracy": "majority task of the family",
    "test_accuracy_r2": "mean predictor",
    "test_accuracy_r2_same_task": "mean of the family and task's other runs",
}


def map_quality_rows(result: dict[str, Any]) -> list[list[Any]]:
    """Table rows: per figure, its value in every space and for the reference predictor (a
    figure that neither holds, as in results written before the figure existed, has no row)."""
    rows = []
    for fig in FIGURES:
        cells: list[Any] = [FIGURE_TITLES[fig]]
        for space in SPACES:
            s = result["spaces"].get(space)
            cells.append(None if s is None else s.get(fig))
        ref = result["reference"].get(fig)
        if fig not in result["reference"] and all(c is None for c in cells[1:]):
            continue
        text = f"{REFERENCE_TITLES[fig]} {_num(ref)}"
        ceiling = result["reference"].get("task_ceiling")
        if fig == "task_accuracy" and ceiling is not None:  # atlases evaluated before: none
            text += f"; ceiling {_num(ceiling)}"
        cells.append(text)
        rows.append(cells)
    return rows


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def map_quality_table(
    result: dict[str, Any],
    *,
    reference_head: str = "reference",
    blank: str = "n/a",
    align: bool = False,
    escape: Callable[[str], str] | None = None,
) -> str:
    """The map-quality table (:func:`map_quality_rows`) as markdown, numbers to three decimals.

    ``results/map_quality.md`` uses the defaults; the app's Atlas page passes its own header,
    blank cells, right-aligned numbers and its markdown escaping.

    Args:
        result: a :func:`map_quality` result.
        reference_head: the header of the last column (the predictors without the features).
        blank: the cell of a figure a space does not have (None or NaN).
        align: left-align the text columns and right-align the number columns.
        escape: applied to every text cell (titles, the reference column); None: as is.

    Returns:
        The header, the rule and one line per figure, without a final newline.
    """
    head = ["figure", "embedding", "2-D UMAP", "2-D PCA", "s(W)", reference_head]
    text = escape or str

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return blank
        return f"{v:.3f}" if isinstance(v, int | float) else text(str(v))

    rule = "|:---|" + "---:|" * (len(head) - 2) + ":---|" if align else "|" + "---|" * len(head)
    body = [
        "| " + " | ".join([text(cells[0]), *(cell(v) for v in cells[1:-1]), text(cells[-1])]) + " |"
        for cells in map_quality_rows(result)
    ]
    return "\n".join(["| " + " | ".join(head) + " |", rule, *body])


def map_quality_markdown(result: dict[str, Any]) -> str:
    """The map-quality table with its one-paragraph explanation."""
    intro = (
        f"Leave-one-run-out, k = {result['k']} nearest models of other training runs, "
        f"{result['n_models']} models in {result['n_runs']} runs. Embedding: "
        f"{result.get('pooling', 'mean')} pooling, {result['metric']} distance; maps: Euclidean "
        "on the 2-D coordinates; s(W): standardized Euclidean on the weights' statistics. Task: "
        "families with at least two tasks, neighbours of the same family; ceiling: the share of "
        "those models whose family and task occur in another run (no leave-one-run-out vote can "
        "name a task no other run has)."
    )
    return f"{intro}\n\n{map_quality_table(result)}\n"


# ---------------------------------------------------------------------------------------------
