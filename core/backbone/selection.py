"""Checkpoint selection on what the embedding is for, next to reconstruction.

``TrainConfig.select``:

- ``rec``: the median per-layer validation R^2 of conv and linear layers
  (``val_layer_r2_median_conv_linear``), reconstruction alone;
- ``rec+knn``: that plus ``select_weight`` times ``knn``, the mean of two leave-one-run-out
  k-NN figures over the *validation* models' pooled embeddings (``val_select_score``): the
  share of models whose ``select_k`` nearest models of other runs have its family (majority
  vote), and, within families with at least two tasks, the share whose nearest same-family
  models of other runs have its task. The embedding pools each model's token latents by
  per-channel mean and std over all its tokens (the atlas embedding's ``mean+std``), computed
  from per-layer sums so that data-parallel ranks can add them; distances are Euclidean on
  dims standardized over the validation models (the atlas distance's ``zscore``). Where no
  validation model has the labels a figure needs, ``knn`` counts as 0 (reconstruction alone).

Only the validation models' tokens are encoded (``Evaluator`` of the val split), and only their
manifest rows are read (``knn_labels``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from core.backbone.config import SELECT_METRIC, TrainConfig
from core.collection.facts import run_of

SCORE_METRIC = "val_select_score"


def selection_metric(tcfg: TrainConfig) -> str:
    """The metrics-row key the best checkpoint maximizes under ``tcfg.select``."""
    return SCORE_METRIC if tcfg.select == "rec+knn" else SELECT_METRIC


def knn_labels(atlas: Any, ids: list[str]) -> dict[str, list[Any]]:
    """``{"ids", "group", "family", "task"}`` of the models ``ids`` (in order) from the
    manifest: the leave-out group is the training run (``run_of``)."""
    rows = {r["id"]: r for r in atlas.manifest() if r["id"] in set(ids)}
    out: dict[str, list[Any]] = {"ids": list(ids), "group": [], "family": [], "task": []}
    for i in ids:
        row = rows.get(i) or {"id": i}
        out["group"].append(run_of(row))
        out["family"].append(row.get("family"))
        out["task"].append((row.get("labels") or {}).get("task"))
    return out


def pooled_from_sums(sums: torch.Tensor, owner: torch.Tensor, n_models: int) -> np.ndarray:
    """Per-model ``[mean, std]`` (M, 2L) of token latents from per-layer sums.

    Args:
        sums: (S, 1 + 2L) float64 per layer: token count, sum of z, sum of z^2.
        owner: (S,) the model index of each layer.
        n_models: M.
    """
    per = torch.zeros(n_models, sums.shape[1], dtype=torch.float64).index_add_(0, owner, sums)
    L = (sums.shape[1] - 1) // 2
    n = per[:, :1].clamp_min(1.0)
    mean = per[:, 1 : 1 + L] / n
    var = (per[:, 1 + L :] - n * mean**2) / (n - 1).clamp_min(1.0)
    return torch.cat([mean, var.clamp_min(0.0).sqrt()], 1).numpy()


def _vote(labels: list[Any]) -> Any:
    counts = Counter(labels)
    top = max(counts.values())
    return next(v for v in labels if counts[v] == top)  # ties: the nearest of the tied


def knn_figures(vectors: np.ndarray, labels: dict[str, list[Any]], k: int) -> dict[str, Any]:
    """Leave-one-run-out k-NN family and within-family task accuracy, and their mean ``knn``.

    Args:
        vectors: (M, F) pooled embeddings of the models of ``labels["ids"]``.
        labels: ``knn_labels`` of those models.
        k: neighbours.
    """
    z = np.asarray(vectors, dtype=np.float64)
    sd = z.std(0)
    z = (z - z.mean(0)) / np.where(sd > 0, sd, 1.0)
    d = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    group = np.array(labels["group"], dtype=object)
    fam = np.array([f or "" for f in labels["family"]], dtype=object)
    task = np.array([t or "" for t in labels["task"]], dtype=object)
    other = group[:, None] != group[None, :]
    tasks_of = Counter(f for f, t in set(zip(fam, task, strict=True)) if f and t)
    out: dict[str, Any] = {}
    for name, allowed, label, who in (
        ("family", other & (fam != "")[None, :], fam, fam != ""),
        (
            "task",
            other & (fam[:, None] == fam[None, :]) & (task != "")[None, :],
            task,
            np.array([bool(f and t and tasks_of[f] >= 2) for f, t in zip(fam, task, strict=True)]),
        ),
    ):
        hits = []
        for i in np.flatnonzero(who):
            cand = np.flatnonzero(allowed[i])
            if len(cand) == 0:
                continue
            near = cand[np.argsort(d[i, cand], kind="stable")[:k]]
            hits.append(_vote(list(label[near])) == label[i])
        out[f"knn_{name}_accuracy"] = float(np.mean(hits)) if hits else None
    figs = [v for v in out.values() if v is not None]
    out["knn"] = float(np.mean(figs)) if figs else None
    return out
