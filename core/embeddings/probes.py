"""Property probes on backbone embeddings against the s(W) weight-statistics baseline; layer reports.

    weightatlas evaluate ATLAS            # -> ATLAS/results/probes.json + probes.md

Probes (003 §3, Tables 10-12): ridge regression (alpha by grouped cross-validation) predicts
test accuracy, epoch and generalization gap; logistic regression classifies family and task.
Both feature sets are probed in the same run on the same split:

- ``embedding``: the backbone's per-model embedding (mean over haloed token embeddings).
- ``s(W)``: per-layer mean, std and quintiles (min, 25 %, median, 75 %, max) of the trainable
  weights, pooled over ``DEPTH_BINS`` equal bins of relative depth (so models of different
  depths give vectors of one length), plus the same seven statistics over all weights.

The split is by training run: a zoo checkpoint's run key is ``family-task-rN`` (other models:
their id). Models whose manifest split is ``test`` are held out, all others train the probe;
if that leaves fewer than ``min_side`` models on a side, a seeded group shuffle split over run
keys is used instead. Either way no run has checkpoints on both sides (asserted). Because a
held-out split can be a handful of runs, the same probes are also scored by grouped K-fold
cross-validation over all runs (``outer_folds``), reported as mean ± std over folds.

``layer_report`` reconstructs one model through the backbone (haloed encode + decode) and
compares each layer's values: R², MSE and Wasserstein-1 divided by the layer's std.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.atlas import Atlas, atomic_write_bytes, write_json
from core.config import build_config, register_presets, to_dict
from core.embeddings.statistics import DEPTH_BINS, depth_pooled, weight_statistics
from core.embeddings.table import load_embeddings
from core.errors import WeightAtlasError
from core.tokens.store import TokenStore

# Shapes: M models, F features, N tokens, D token size.

REGRESSION_TARGETS = ("test_accuracy", "epoch", "generalization_gap")
CLASSIFICATION_TARGETS = ("family", "task")
FEATURE_SETS = ("embedding", "embedding+depth", "s(W)")


@dataclass
class ProbeConfig:
    """Probe settings: cross-validation folds, ridge alphas, fallback split."""

    cv_folds: int = 5
    alpha_min_log10: float = -4.0
    alpha_max_log10: float = 4.0
    n_alphas: int = 17
    logistic_cs: int = 9
    min_side: int = 4
    fallback_test_fraction: float = 0.25
    outer_folds: int = 5  # grouped K-fold over all runs, reported next to the held-out split
    seed: int = 0
    max_layer_values: int = 4096


PROBE_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(cv_folds=3, n_alphas=9, logistic_cs=5, outer_folds=3),
    "demo": dict(cv_folds=5),
    "paper-small": dict(cv_folds=5),
    "paper-large": dict(cv_folds=5),
}
register_presets("probe", ProbeConfig, PROBE_PRESETS)


# ---------------------------------------------------------------------------------------------


# labels and split


def run_key(row: dict[str, Any]) -> str:
    """The training run a checkpoint belongs to: ``family-task-rN`` for zoo models, else its id."""
    labels = row.get("labels") or {}
    if labels.get("run") is not None and labels.get("task") is not None:
        family = labels.get("family") or row.get("family")
        return f"{family}-{labels['task']}-r{labels['run']}"
    return str(row["id"])


def label_value(row: dict[str, Any], name: str) -> Any:
    """A target of one manifest row: from its zoo labels, then its metrics, then the row."""
    for source in (row.get("labels") or {}, row.get("metrics") or {}, row):
        value = source.get(name)
        if value is not None:
            return value
    return None


def probe_split(rows: list[dict[str, Any]], cfg: ProbeConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """Boolean train/test masks over ``rows`` with no run on both sides.

    Returns:
        ``(train, test, how)`` where ``how`` is ``"manifest"`` or ``"group-shuffle"``.
    """
    keys = np.array([run_key(r) for r in rows])
    test = np.array([r.get("split") == "test" for r in rows])
    how = "manifest"
    if test.sum() < cfg.min_side or (~test).sum() < cfg.min_side or _leaks(keys, test):
        from sklearn.model_selection import GroupShuffleSplit

        uniq = np.unique(keys)
        if len(uniq) < 2:
            raise WeightAtlasError("probes need models from at least two training runs")
        gss = GroupShuffleSplit(
            n_splits=1, test_size=cfg.fallback_test_fraction, random_state=cfg.seed
        )
        _, te = next(gss.split(np.zeros(len(keys)), groups=keys))
        test = np.zeros(len(keys), dtype=bool)
        test[te] = True
        how = "group-shuffle"
    train = ~test
    assert not _leaks(keys, test), "a training run has checkpoints on both sides of the split"
    return train, test, how


def _leaks(keys: np.ndarray, test: np.ndarray) -> bool:
    return bool(set(keys[test]) & set(keys[~test]))


# ---------------------------------------------------------------------------------------------
# probes


def _cv_splits(groups: np.ndarray, folds: int) -> list[tuple[np.ndarray, np.ndarray]] | int:
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        return 2
    return list(
        GroupKFold(n_splits=min(folds, n_groups)).split(np.zeros(len(groups)), groups=groups)
    )


def fit_regression(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    cfg: ProbeConfig,
) -> dict[str, Any]:
    """Standardize + RidgeCV (alpha chosen by grouped CV on the train side); test R² and MAE."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import mean_absolute_error, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    alphas = np.logspace(cfg.alpha_min_log10, cfg.alpha_max_log10, cfg.n_alphas)
    model = make_pipeline(
        StandardScaler(), RidgeCV(alphas=alphas, cv=_cv_splits(groups, cfg.cv_folds))
    )
    model.fit(x_train, y_train)
    pred = model.predict(x_test)
    return {
        "metric": "r2",
        "value": float(r2_score(y_test, pred)) if len(y_test) > 1 else None,
        "mae": float(mean_absolute_error(y_test, pred)),
        "alpha": float(model[-1].alpha_),
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
    }


def fit_classifier(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    cfg: ProbeConfig,
) -> dict[str, Any]:
    """Standardize + logistic regression (C by grouped CV); test accuracy and majority baseline."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes, counts = np.unique(y_train, return_counts=True)
    majority = float(np.mean(y_test == classes[counts.argmax()]))
    base = {
        "metric": "accuracy",
        "majority": majority,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "n_classes": int(len(classes)),
    }
    if len(classes) < 2:
        return {**base, "value": None, "note": "one class on the train side"}
    splits = _cv_splits(groups, cfg.cv_folds)
    usable = isinstance(splits, list) and all(len(np.unique(y_train[tr])) >= 2 for tr, _ in splits)
    if usable:
        clf = LogisticRegressionCV(
            Cs=cfg.logistic_cs,
            cv=splits,
            max_iter=3000,
            scoring="accuracy",
            l1_ratios=(0.0,),
            use_legacy_attributes=False,
        )
    else:
        clf = LogisticRegression(C=1.0, max_iter=3000)
    model = make_pipeline(StandardScaler(), clf)
    model.fit(x_train, y_train)
    return {**base, "value": float(np.mean(model.predict(x_test) == y_test))}


def cross_validated(
    fit: Any, x: np.ndarray, y: np.ndarray, keys: np.ndarray, cfg: ProbeConfig
) -> dict[str, Any]:
    """Grouped K-fold over all labelled models (no run in two folds): fold scores' mean/std.

    The held-out split alone can be a handful of runs; this uses every run once as test data.
    """
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(keys))
    scores = []
    if n_groups >= 2:
        for tr, te in GroupKFold(n_splits=min(cfg.outer_folds, n_groups)).split(x, y, keys):
            assert not set(keys[tr]) & set(keys[te]), "a run on both sides of a fold"
            value = fit(x[tr], y[tr], keys[tr], x[te], y[te], cfg).get("value")
            if value is not None:
                scores.append(value)
    if not scores:
        return {"cv_mean": None, "cv_std": None, "cv_folds": 0}
    return {
        "cv_mean": float(np.mean(scores)),
        "cv_std": float(np.std(scores)),
        "cv_folds": len(scores),
    }


def features(atlas: Atlas, ids: list[str], emb: Any) -> dict[str, np.ndarray]:
    """``{"embedding": (M, L), "embedding+depth": (M, 5L), "s(W)": (M, 35)}`` for ``ids``.

    ``embedding`` is the model's mean token embedding; ``embedding+depth`` pools its per-layer
    embeddings over the same depth bins as s(W), so both feature sets see depth alike. ``emb``
    is the ``core.embeddings.table.Embeddings`` the ids come from.
    """

    z = np.stack([emb.vector(i) for i in ids]).astype(np.float64)
    rows_of: dict[str, list[tuple[int, int]]] = {}
    for r in emb.layers:
        rows_of.setdefault(r["id"], []).append((int(r["layer"]), int(r["row"])))
    zd = np.stack(
        [
            depth_pooled(emb.layer_z[[row for _, row in sorted(rows_of.get(i, []))]], z[k])
            for k, i in enumerate(ids)
        ]
    )
    store = TokenStore(atlas.tokens_dir)
    sw = []
    for mid in tqdm(ids, desc="s(W)", unit="model"):
        tok = store.get(mid)
        sw.append(
            weight_statistics(
                torch.as_tensor(tok.tokens),
                torch.as_tensor(tok.mask),
                torch.as_tensor(tok.positions),
            )
        )
    return {"embedding": z, "embedding+depth": zd, "s(W)": np.stack(sw)}


def evaluate(
    atlas: str | Path,
    *,
    preset: str | None = "ci",
    backbone_dir: str | Path | None = None,
    out_name: str = "probes",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Probe embeddings and s(W) for zoo labels; write ``ATLAS/results/{out_name}.json/.md``.

    Args:
        atlas: an embedded atlas.
        preset: a ``PROBE_PRESETS`` name.
        backbone_dir: probe another backbone's embeddings (e.g. an ablation backbone).
        out_name: base name of the result files.
        overrides: other ``ProbeConfig`` fields.

    Returns:
        The result dict written to ``probes.json``.
    """

    a = Atlas.open(atlas)
    cfg = build_config(ProbeConfig, PROBE_PRESETS, preset, overrides=overrides)
    emb = load_embeddings(a.root, backbone_dir)
    manifest = {r["id"]: r for r in a.manifest()}
    ids = [i for i in emb.ids if i in manifest]
    if len(ids) < 2 * cfg.min_side:
        raise WeightAtlasError(
            f"probes need at least {2 * cfg.min_side} embedded models, found {len(ids)}"
        )
    rows = [manifest[i] for i in ids]
    train, test, how = probe_split(rows, cfg)
    keys = np.array([run_key(r) for r in rows])
    feats = features(a, ids, emb)
    results: dict[str, dict[str, Any]] = {fs: {} for fs in FEATURE_SETS}
    for target in (*REGRESSION_TARGETS, *CLASSIFICATION_TARGETS):
        raw = [label_value(r, target) for r in rows]
        have = np.array([v is not None for v in raw])
        tr, te = train & have, test & have
        for fs in FEATURE_SETS:
            x = feats[fs]
            if tr.sum() < 2 or te.sum() < 1:
                results[fs][target] = {"value": None, "note": "too few labelled models"}
                continue
            if target in REGRESSION_TARGETS:
                y = np.array([float(v) if v is not None else np.nan for v in raw])
                fit = fit_regression
            else:
                y = np.array([str(v) for v in raw])
                fit = fit_classifier
            results[fs][target] = fit(x[tr], y[tr], keys[tr], x[te], y[te], cfg)
            results[fs][target].update(cross_validated(fit, x[have], y[have], keys[have], cfg))
    out = {
        "split": {
            "how": how,
            "n_train": int(train.sum()),
            "n_test": int(test.sum()),
            "train_runs": int(len(set(keys[train]))),
            "test_runs": int(len(set(keys[test]))),
            "shared_runs": sorted(set(keys[train]) & set(keys[test])),
        },
        "features": {fs: int(feats[fs].shape[1]) for fs in FEATURE_SETS},
        "results": results,
        "config": to_dict(cfg),
        "backbone": str(backbone_dir) if backbone_dir is not None else "backbone",
    }
    a.results_dir.mkdir(parents=True, exist_ok=True)
    write_json(a.results_dir / f"{out_name}.json", out)

    atomic_write_bytes(a.results_dir / f"{out_name}.md", probes_markdown(out).encode())
    return out


def probes_markdown(out: dict[str, Any]) -> str:
    """The R² / accuracy table of a probe result."""
    s = out["split"]
    lines = [
        f"Split by training run ({s['how']}): {s['n_train']} models / {s['train_runs']} runs train, "
        f"{s['n_test']} models / {s['test_runs']} runs test, {len(s['shared_runs'])} runs on both sides.",
        "",
        "| target | metric | " + " | ".join(FEATURE_SETS) + " | majority |",
        "|---" * (len(FEATURE_SETS) + 3) + "|",
    ]
    for target in (*REGRESSION_TARGETS, *CLASSIFICATION_TARGETS):
        cells = []
        metric = "R²" if target in REGRESSION_TARGETS else "accuracy"
        for fs in FEATURE_SETS:
            v = out["results"][fs].get(target, {}).get("value")
            cells.append("n/a" if v is None else f"{v:.3f}")
        maj = out["results"]["embedding"].get(target, {}).get("majority")
        lines.append(
            f"| {target} | {metric} | {' | '.join(cells)} | {'' if maj is None else f'{maj:.3f}'} |"
        )
    folds = max(
        (v.get("cv_folds") or 0 for fs in out["results"].values() for v in fs.values()), default=0
    )
    lines += [
        "",
        f"Grouped {folds}-fold cross-validation over all runs (mean ± std over folds; every run "
        "is test data once, no run in two folds):",
        "",
        "| target | metric | " + " | ".join(FEATURE_SETS) + " |",
        "|---" * (len(FEATURE_SETS) + 2) + "|",
    ]
    for target in (*REGRESSION_TARGETS, *CLASSIFICATION_TARGETS):
        metric = "R²" if target in REGRESSION_TARGETS else "accuracy"
        cells = []
        for fs in FEATURE_SETS:
            r = out["results"][fs].get(target, {})
            m, sd = r.get("cv_mean"), r.get("cv_std")
            cells.append("n/a" if m is None else f"{m:.3f} ± {sd:.3f}")
        lines.append(f"| {target} | {metric} | {' | '.join(cells)} |")
    dims = out["features"]
    lines.append("")
    lines.append(
        f"Features: embedding {dims['embedding']} dims (mean token embedding); embedding+depth "
        f"{dims.get('embedding+depth', 'n/a')} dims (per-layer embeddings pooled over "
        f"{DEPTH_BINS} depth bins + the mean); s(W) {dims['s(W)']} dims (mean, std, quintiles "
        f"per layer pooled over {DEPTH_BINS} depth bins + whole model)."
    )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
