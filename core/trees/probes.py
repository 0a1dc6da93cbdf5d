"""Probes within model trees (ProbeX's claim, Horwitz et al., CVPR 2025): predict the task a
fine-tune was trained on from its weights, inside the trees it comes from and across trees.

Models: those the lineage table calls fine-tunes (``relation == "finetune"``; roots, merges and
precision copies are left out), per family. Labels: the task in the model's card. Features, all
from the lineage fingerprints on the weight tensors every probed model of the family shares:

- ``s(W)``: per tensor mean, std, five quantiles, norm and kurtosis of the weights;
- ``delta s(W)``: the same statistics of the weights minus the root of the model's recovered
  tree (the weights' own lineage, not the zoo's truth);
- ``W (one layer)`` and ``delta W (one layer)``: the sampled values of the first shared tensor
  (ProbeX probes one layer's raw weights), raw and minus the root.

``within trees``: leave one model out (the training set holds its tree's other models);
``across trees``: leave one tree out (the probe never saw the tree it is tested on). Logistic
regression on standardized features; the majority rate of each training fold beside it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from core.atlas import Atlas
from core.trees.fingerprints import Fingerprint
from core.trees.table import LineageTable, _parents

FEATURES = ("s(W)", "delta s(W)", "W (one layer)", "delta W (one layer)")


def _root(rows: dict[str, dict[str, Any]], model_id: str) -> str:
    seen = {model_id}
    while True:
        parents = _parents(rows[model_id].get("parent"))
        if not parents or parents[0] not in rows or parents[0] in seen:
            return model_id
        model_id = parents[0]
        seen.add(model_id)


def _stats(x: np.ndarray) -> list[float]:
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    c = x - x.mean()
    var = float((c**2).mean())
    kurt = float((c**4).mean()) / var**2 if var > 0 else 0.0
    return [float(x.mean()), float(x.std()), *map(float, q), float(np.linalg.norm(x)), kurt]


def features(fp: Fingerprint, root: Fingerprint, keys: list[Any]) -> dict[str, np.ndarray]:
    """The four feature vectors of one model (``keys``: the shared tensors, in order)."""
    out: dict[str, list[float]] = {f: [] for f in FEATURES}
    for k in keys:
        w, d = fp.samples[k].astype(np.float64), fp.samples[k] - root.samples[k]
        out["s(W)"] += _stats(w)
        out["delta s(W)"] += _stats(d.astype(np.float64))
    out["W (one layer)"] = list(fp.samples[keys[0]])
    out["delta W (one layer)"] = list(fp.samples[keys[0]] - root.samples[keys[0]])
    return {f: np.asarray(v, dtype=np.float64) for f, v in out.items()}


def _fit_predict(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(y[train])) < 2:
        return np.full(len(test), y[train][0])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x[train], y[train])
    return clf.predict(x[test])


def tree_probes(atlas: str | Path, fingerprints: dict[str, Fingerprint]) -> dict[str, Any]:
    """Task probes within and across trees, per family and pooled (accuracies, counts).

    Args:
        atlas: an atlas with a lineage table.
        fingerprints: model id -> fingerprint (``core.trees.lineage.fingerprints``).
    """
    a = Atlas.open(atlas)
    rows = LineageTable(a.root).by_id()
    manifest = {r["id"]: r for r in a.accepted()}
    fams: dict[str, list[str]] = {}
    for m, r in rows.items():
        task = (manifest.get(m, {}).get("labels") or {}).get("task")
        if r.get("relation") == "finetune" and task and m in fingerprints:
            fams.setdefault(str(manifest[m].get("family")), []).append(m)
    out: dict[str, Any] = {"families": {}}
    pooled: dict[tuple[str, str], list[int]] = {}
    for fam, ids in sorted(fams.items()):
        keys = sorted(set.intersection(*(set(fingerprints[m].samples) for m in ids)))
        roots = [_root(rows, m) for m in ids]
        if not keys or any(r not in fingerprints for r in roots):
            continue
        keys = [k for k in keys if all(k in fingerprints[r].samples for r in roots)]
        if not keys:
            continue
        y = np.array([manifest[m]["labels"]["task"] for m in ids])
        trees = np.array([rows[m]["tree"] for m in ids])
        feats = [features(fingerprints[m], fingerprints[r], keys) for m, r in zip(ids, roots)]
        res: dict[str, Any] = {"models": len(ids), "trees": len(set(trees)), "tasks": len(set(y))}
        for setting, groups in (("within", np.arange(len(ids))), ("across", trees)):
            folds = [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
            if setting == "across" and len(folds) < 2:
                continue
            for name in (*FEATURES, "majority"):
                right = 0
                for test in folds:
                    train = np.setdiff1d(np.arange(len(ids)), test)
                    if name == "majority":
                        pred = np.full(len(test), Counter(y[train]).most_common(1)[0][0])
                    else:
                        x = np.stack([f[name] for f in feats])
                        pred = _fit_predict(x, y, train, test)
                    right += int((pred == y[test]).sum())
                res[f"{setting}/{name}"] = round(right / len(ids), 4)
                pooled.setdefault((setting, name), [0, 0])
                pooled[(setting, name)][0] += right
                pooled[(setting, name)][1] += len(ids)
        out["families"][fam] = res
    out["pooled"] = {f"{s}/{n}": round(r / t, 4) for (s, n), (r, t) in pooled.items() if t}
    return out
