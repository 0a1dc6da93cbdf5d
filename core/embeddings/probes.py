"""Property probes on backbone embeddings against the s(W) weight-statistics baseline.

    weightatlas evaluate ATLAS            # -> ATLAS/results/probes.json + probes.md

It also writes the map quality (``core.embeddings.map_quality``) and the permutation ratios
of the evaluated backbone (``core.embeddings.invariance``), each to its own results file.

Probes (003 §5.1, Tables 1 and 9-12): ridge regression predicts test accuracy, epoch and
generalization gap; logistic regression classifies family and task. The papers fit probes
inside one zoo (one architecture, one data set), so the headline probes run inside each
homogeneous zoo (``zoo_key``: a zoo preset's ``zoo`` label, else family/task/size with at least
``zoo_min_runs`` runs) on four feature sets, against the mean predictor:

- ``embedding``: the backbone's per-model embedding (``EmbedConfig.pooling`` of the haloed token
  embeddings, ``core.embeddings.encode.pool_model``).
- ``embedding+depth``: its per-layer embeddings pooled over depth bins like s(W).
- ``s(W)``: per-layer mean, std and quintiles (min, 25 %, median, 75 %, max) of the trainable
  weights, pooled over ``DEPTH_BINS`` equal bins of relative depth, plus the same seven
  statistics over all weights.
- ``W``: the flattened weights (inside a zoo every model has the same layer table).

A secondary probe pools the whole collection (the first three feature sets) and also classifies
family and task, against the majority class; the task target only uses family x task pairs
with at least ``task_min_runs`` runs (a split by run cannot name a pair it never saw).

Every split is by training run (``core.collection.facts.run_of``): models whose manifest split
is ``test`` are held out (if that leaves fewer than ``min_side`` models on a side, a seeded
group shuffle split over runs), and grouped K-fold over all runs (``outer_folds``) gives mean ±
std over folds; no run is ever on both sides (asserted). Ridge alpha and logistic C are chosen by
grouped CV on the train side (squared error / log-loss, the one-standard-error rule towards
more regularization); ``no_signal`` flags a choice at the grid's regularized edge (largest
alpha, smallest C): the probe then predicts about the mean / the majority class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.atlas import Atlas
from core.collection.facts import run_of
from core.config import build_config, register_presets, to_dict
from core.embeddings.invariance import permutation_invariance, write_permutation
from core.embeddings.map_quality import map_quality, write_map_quality
from core.embeddings.statistics import DEPTH_BINS, depth_pooled, sw_features
from core.embeddings.table import embedded_config, embedded_pooling, load_embeddings
from core.errors import WeightAtlasError
from core.tokens.store import TokenStore

# Shapes: M models, F features, N tokens, D token size.

REGRESSION_TARGETS = ("test_accuracy", "epoch", "generalization_gap")
CLASSIFICATION_TARGETS = ("family", "task")
FEATURE_SETS = ("embedding", "embedding+depth", "s(W)", "embedding+s(W)")


@dataclass
class ProbeConfig:
    """Probe settings: cross-validation folds, ridge alphas, fallback split."""

    cv_folds: int = 5
    alpha_min_log10: float = -4.0
    alpha_max_log10: float = 4.0
    n_alphas: int = 17
    logistic_cs: int = 9
    c_min_log10: float = -4.0
    c_max_log10: float = 4.0
    min_side: int = 4
    fallback_test_fraction: float = 0.25
    outer_folds: int = 5  # grouped K-fold over all runs, reported next to the held-out split
    seed: int = 0
    max_layer_values: int = 4096
    zoo_min_runs: int = 10  # a family x task x size group with this many runs gets its own probes
    task_min_runs: int = 2  # the task target only for family x task pairs with this many runs
    # permuted copies per validation/test model for the permutation ratios (0: not measured)
    permutation_copies: int = 1


PROBE_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(cv_folds=3, n_alphas=9, logistic_cs=5, outer_folds=3),
    "demo": dict(cv_folds=5),
    "paper-small": dict(cv_folds=5),
    "paper-large": dict(cv_folds=5),
}
register_presets("probe", ProbeConfig, PROBE_PRESETS)


# ---------------------------------------------------------------------------------------------


# labels and split


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
    keys = np.array([run_of(r) for r in rows])
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


def _edge(index: int, n: int) -> str | None:
    """``"low"`` / ``"high"`` when a grid search picked the grid's first / last value."""
    return "low" if index == 0 else ("high" if index == n - 1 else None)


def _one_se(losses: np.ndarray, order: np.ndarray) -> int:
    """Index of the most regularized setting whose mean held-out loss is within one standard
    error of the best (the one-standard-error rule).

    Args:
        losses: ``(n_settings, n_samples)`` held-out loss of every sample per setting.
        order: settings from most to least regularized.
    """
    mean = losses.mean(1)
    best = int(np.argmin(mean))
    se = losses[best].std() / np.sqrt(max(losses.shape[1], 1))
    return int(next(i for i in order if mean[i] <= mean[best] + se))


def choose_alpha(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: ProbeConfig
) -> tuple[float, int, list[float]] | None:
    """The ridge alpha of a regression probe by grouped CV on squared error (one-SE rule).

    Returns:
        ``(alpha, index in the grid, mean held-out squared error per alpha)``, or None without
        two grouped folds.
    """
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    splits = _cv_splits(groups, cfg.cv_folds)
    if not isinstance(splits, list):
        return None
    alphas = np.logspace(cfg.alpha_min_log10, cfg.alpha_max_log10, cfg.n_alphas)
    losses = np.zeros((len(alphas), len(y)))
    for tr, va in splits:
        scaler = StandardScaler().fit(x[tr])
        xtr, xva = scaler.transform(x[tr]), scaler.transform(x[va])
        for j, a in enumerate(alphas):
            pred = Ridge(alpha=a).fit(xtr, y[tr]).predict(xva)
            losses[j, va] = (pred - y[va]) ** 2
    j = _one_se(losses, np.arange(len(alphas))[::-1])
    return float(alphas[j]), j, losses.mean(1).tolist()


def fit_regression(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    cfg: ProbeConfig,
) -> dict[str, Any]:
    """Standardize + ridge (alpha by grouped CV, ``choose_alpha``); test R², MAE, baseline.

    ``baseline`` is the R² of the mean predictor (the train mean for every test model), the
    floor a probe has to beat. ``no_signal`` is set when the chosen alpha is the grid's
    largest: the ridge then shrinks every weight to nearly zero and predicts about the mean.
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    chosen = choose_alpha(x_train, y_train, groups, cfg)
    alpha, edge = (1.0, None) if chosen is None else (chosen[0], _edge(chosen[1], cfg.n_alphas))
    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
    model.fit(x_train, y_train)
    pred = model.predict(x_test)
    scorable = len(y_test) > 1 and float(np.var(y_test)) > 0
    mean_pred = np.full(len(y_test), float(np.mean(y_train)))
    return {
        "metric": "r2",
        "value": float(r2_score(y_test, pred)) if scorable else None,
        "baseline": float(r2_score(y_test, mean_pred)) if scorable else None,
        "mae": float(mean_absolute_error(y_test, pred)),
        "alpha": alpha,
        "alpha_at_edge": edge,
        "no_signal": edge == "high",
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
    }


def _proba(model: Any, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``(n, len(classes))`` probabilities; classes the model never saw get 0."""
    out = np.zeros((len(x), len(classes)))
    cols = np.searchsorted(classes, model.classes_)
    out[:, cols] = model.predict_proba(x)
    return out


def _prior(y: np.ndarray, classes: np.ndarray, n: int) -> np.ndarray:
    freq = np.array([np.mean(y == c) for c in classes])
    return np.tile(freq, (n, 1))


def choose_c(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: ProbeConfig
) -> tuple[float, int, list[float]] | None:
    """The inverse regularization C of a logistic probe, by grouped CV on log-loss.

    Each C of ``logspace(c_min_log10, c_max_log10, logistic_cs)`` is scored by the mean
    held-out log-loss over grouped folds (no run in two folds; probabilities of classes a fold
    never trained on are 0 and clipped); the smallest C within one standard error of the best
    is taken (the one-standard-error rule), so that settings the data cannot tell apart fall to
    the simpler model. Log-loss, unlike accuracy, tells an intercept-only model (the class
    prior) from one that ranks the classes.

    Returns:
        ``(C, index in the grid, mean log-loss per C)``, or None without two grouped folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    splits = _cv_splits(groups, cfg.cv_folds)
    if not isinstance(splits, list):
        return None
    classes = np.unique(y)
    cs = np.logspace(cfg.c_min_log10, cfg.c_max_log10, cfg.logistic_cs)
    losses = np.zeros((len(cs), len(y)))
    idx = {c: i for i, c in enumerate(classes)}
    for tr, va in splits:
        scaler = StandardScaler().fit(x[tr])
        xtr, xva = scaler.transform(x[tr]), scaler.transform(x[va])
        cols = np.array([idx[v] for v in y[va]])
        for j, c in enumerate(cs):
            if len(np.unique(y[tr])) < 2:
                p = _prior(y[tr], classes, len(va))
            else:
                p = _proba(LogisticRegression(C=c, max_iter=3000).fit(xtr, y[tr]), xva, classes)
            p = np.clip(p, 1e-6, 1.0)
            p /= p.sum(1, keepdims=True)
            losses[j, va] = -np.log(p[np.arange(len(va)), cols])
    j = _one_se(losses, np.arange(len(cs)))
    return float(cs[j]), j, losses.mean(1).tolist()


def fit_classifier(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    cfg: ProbeConfig,
) -> dict[str, Any]:
    """Standardize + logistic regression (C by grouped CV on log-loss); test accuracy.

    ``majority`` is the test accuracy of always naming the train side's most frequent class.
    ``no_signal`` is set when the chosen C is the grid's smallest: the probe is then (nearly)
    intercept-only and predicts the majority class, whatever the features.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes, counts = np.unique(y_train, return_counts=True)
    majority = float(np.mean(y_test == classes[counts.argmax()]))
    base = {
        "metric": "accuracy",
        "majority": majority,
        "baseline": majority,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "n_classes": int(len(classes)),
    }
    if len(classes) < 2:
        return {**base, "value": None, "note": "one class on the train side"}
    chosen = choose_c(x_train, y_train, groups, cfg)
    c, edge = (1.0, None) if chosen is None else (chosen[0], _edge(chosen[1], cfg.logistic_cs))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    model.fit(x_train, y_train)
    return {
        **base,
        "value": float(np.mean(model.predict(x_test) == y_test)),
        "C": c,
        "C_at_edge": edge,
        "no_signal": edge == "low",
    }


def cross_validated(
    fit: Any, x: np.ndarray, y: np.ndarray, keys: np.ndarray, cfg: ProbeConfig
) -> dict[str, Any]:
    """Grouped K-fold over all labelled models (no run in two folds): fold scores' mean/std.

    The held-out split alone can be a handful of runs; this uses every run once as test data.
    Also the baseline's (mean predictor / majority) mean and std over the same folds, and in how
    many folds the probe had no signal.
    """
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(keys))
    scores, baselines, flags = [], [], []
    if n_groups >= 2:
        for tr, te in GroupKFold(n_splits=min(cfg.outer_folds, n_groups)).split(x, y, keys):
            assert not set(keys[tr]) & set(keys[te]), "a run on both sides of a fold"
            r = fit(x[tr], y[tr], keys[tr], x[te], y[te], cfg)
            if r.get("value") is not None:
                scores.append(r["value"])
                baselines.append(r.get("baseline"))
                flags.append(bool(r.get("no_signal")))
    if not scores:
        return {"cv_mean": None, "cv_std": None, "cv_folds": 0}
    base = [b for b in baselines if b is not None]
    return {
        "cv_mean": float(np.mean(scores)),
        "cv_std": float(np.std(scores)),
        "cv_scores": [float(v) for v in scores],
        "cv_folds": len(scores),
        "cv_baseline_mean": float(np.mean(base)) if base else None,
        "cv_baseline_std": float(np.std(base)) if base else None,
        "cv_no_signal_folds": int(sum(flags)),
    }


def features(atlas: Atlas, ids: list[str], emb: Any) -> dict[str, np.ndarray]:
    """``{"embedding": (M, P), "embedding+depth": (M, 5L), "s(W)": (M, 35),
    "embedding+s(W)": (M, P + 35)}`` for ``ids``.

    ``embedding`` is the model embedding (its pooled token embeddings, ``EmbedConfig.pooling``);
    ``embedding+depth`` pools its per-layer mean embeddings over the same depth bins as s(W)
    (and over all layers), so both feature sets see depth alike. ``emb`` is the
    ``core.embeddings.table.Embeddings`` the ids come from.
    """

    z = np.stack([emb.vector(i) for i in ids]).astype(np.float64)
    rows_of: dict[str, list[tuple[int, int]]] = {}
    for r in emb.layers:
        rows_of.setdefault(r["id"], []).append((int(r["layer"]), int(r["row"])))
    zd = np.stack(
        [
            depth_pooled(layers, layers.mean(0))
            for layers in (emb.layer_z[[row for _, row in sorted(rows_of.get(i, []))]] for i in ids)
        ]
    )
    sw = sw_features(atlas, ids, emb)
    if sw is None:
        raise WeightAtlasError(f"{atlas.root}: s(W) needs every embedded model's tokens")
    return {
        "embedding": z,
        "embedding+depth": zd,
        "s(W)": sw,
        "embedding+s(W)": np.hstack([z, sw]),  # does the embedding add to s(W)? (issue 25)
    }


def zoo_key(row: dict[str, Any]) -> str | None:
    """The homogeneous zoo a model belongs to: its ``zoo`` label (zoo presets' ``zoos``), else
    ``family/task/wWdD`` (one architecture, one data set), else None."""
    labels = row.get("labels") or {}
    if labels.get("zoo"):
        return str(labels["zoo"])
    family = labels.get("family") or row.get("family")
    task, width, depth = labels.get("task"), labels.get("width"), labels.get("depth")
    if family and task and width is not None and depth is not None:
        return f"{family}/{task}/w{width}d{depth}"
    return None


def homogeneous_zoos(rows: list[dict[str, Any]], min_runs: int) -> dict[str, list[int]]:
    """Row indices of each zoo (``zoo_key``) with at least ``min_runs`` training runs."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        key = zoo_key(r)
        if key is not None:
            groups.setdefault(key, []).append(i)
    return {
        k: idx
        for k, idx in sorted(groups.items())
        if len({run_of(rows[i]) for i in idx}) >= min_runs
    }


def task_pairs(rows: list[dict[str, Any]], min_runs: int) -> np.ndarray:
    """Which rows belong to a family x task pair with at least ``min_runs`` training runs.

    A split by run cannot ask a probe to name the task of a pair it never saw: pairs with a
    single run are left out of the task target.
    """
    runs: dict[tuple[Any, Any], set[str]] = {}
    pair = []
    for r in rows:
        labels = r.get("labels") or {}
        key = (labels.get("family") or r.get("family"), labels.get("task"))
        pair.append(key)
        runs.setdefault(key, set()).add(run_of(r))
    return np.array([k[1] is not None and len(runs[k]) >= min_runs for k in pair], dtype=bool)


def target_noise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How much of a zoo's targets is measurement noise: the binomial standard error of a
    model's test accuracy on its task's test split, beside the spread of test accuracy and
    generalization gap over the zoo's models.

    The gap is train minus test accuracy; its noise is the test accuracy's (the train accuracy
    is exact for the train set). ``gap_reliability`` = ``1 - se² / var(gap)`` (floored at 0)
    is the R² a perfect predictor of the true gap could reach on these noisy labels.
    ``test_accuracy_se`` is the median over models; None where the task is not one of
    ``core.zoos.tasks.TASKS`` (its test size is unknown).
    """
    from core.zoos.tasks import TASKS, accuracy_standard_error, get_task

    acc = np.array([float(v) for r in rows if (v := label_value(r, "test_accuracy")) is not None])
    gap = np.array(
        [float(v) for r in rows if (v := label_value(r, "generalization_gap")) is not None]
    )
    tasks = {label_value(r, "task") for r in rows}
    task = tasks.pop() if len(tasks) == 1 else None
    n_test = len(get_task(task).split("test")[1]) if task in TASKS else None
    se = (
        float(np.median([accuracy_standard_error(a, n_test) for a in acc]))
        if n_test and len(acc)
        else None
    )
    gap_std = float(np.std(gap)) if len(gap) > 1 else None
    reliability = max(0.0, 1.0 - se**2 / gap_std**2) if se is not None and gap_std else None
    return {
        "task": task,
        "n_test_examples": n_test,
        "test_accuracy_se": se,
        "test_accuracy_std": float(np.std(acc)) if len(acc) > 1 else None,
        "generalization_gap_std": gap_std,
        "gap_reliability": reliability,
        "n_models": len(rows),
    }


def backbone_step(backbone_dir: Path) -> int | None:
    """The training step of the weights a backbone keeps (``config.json`` ``step``; 0: the
    initial code, never improved on by training), or None when it does not say."""
    path = Path(backbone_dir) / "config.json"
    if not path.is_file():
        return None
    from core.atlas import read_json

    step = read_json(path).get("step")
    return int(step) if isinstance(step, int | float) and not isinstance(step, bool) else None


def weight_vectors(atlas: Atlas, ids: list[str]) -> np.ndarray | None:
    """``(M, P)`` the flattened real weight values (003's ``W``) when all models share one layer
    table, else None."""
    store = TokenStore(atlas.tokens_dir)
    layouts = {tuple((e.name, tuple(e.shape)) for e in store.layers(i)) for i in ids}
    if len(layouts) != 1:
        return None
    out = []
    for mid in ids:
        tok = store.get(mid)
        out.append(tok.tokens[tok.mask].double().numpy())
    return np.stack(out)


def run_probes(
    feats: dict[str, np.ndarray],
    rows: list[dict[str, Any]],
    targets: tuple[str, ...],
    cfg: ProbeConfig,
    only: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Probe every feature set for every target: held-out split by run, and grouped K-fold.

    Args:
        feats: ``{name: (M, F)}`` feature sets aligned with ``rows``.
        rows: manifest rows (labels, split).
        targets: names from ``REGRESSION_TARGETS`` / ``CLASSIFICATION_TARGETS``.
        only: per target, a boolean mask of the rows it may use (e.g. the task target).

    Returns:
        ``(split, results)``: the split summary and ``{feature set: {target: result}}``.
    """
    train, test, how = probe_split(rows, cfg)
    keys = np.array([run_of(r) for r in rows])
    results: dict[str, dict[str, Any]] = {fs: {} for fs in feats}
    for target in targets:
        raw = [label_value(r, target) for r in rows]
        have = np.array([v is not None for v in raw])
        if only and target in only:
            have &= only[target]
        tr, te = train & have, test & have
        regression = target in REGRESSION_TARGETS
        y = (
            np.array([float(v) if v is not None else np.nan for v in raw])
            if regression
            else np.array([str(v) for v in raw])
        )
        fit = fit_regression if regression else fit_classifier
        for fs, x in feats.items():
            if tr.sum() < 2 or te.sum() < 1:
                results[fs][target] = {"value": None, "note": "too few labelled models"}
                continue
            results[fs][target] = fit(x[tr], y[tr], keys[tr], x[te], y[te], cfg)
            results[fs][target].update(cross_validated(fit, x[have], y[have], keys[have], cfg))
            results[fs][target]["n_models"] = int(have.sum())
            results[fs][target]["n_runs"] = int(len(set(keys[have])))
    split = {
        "how": how,
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "train_runs": int(len(set(keys[train]))),
        "test_runs": int(len(set(keys[test]))),
        "shared_runs": sorted(set(keys[train]) & set(keys[test])),
    }
    return split, results


def _zoo_probe(
    a: Atlas,
    ids: list[str],
    rows: list[dict[str, Any]],
    feats: dict[str, np.ndarray],
    idx: list[int],
    cfg: ProbeConfig,
) -> dict[str, Any]:
    """The regression probes inside one homogeneous zoo (rows ``idx``), with the flattened
    weights W as a feature set where the zoo's models have them."""
    sub = [rows[i] for i in idx]
    zfeats = {fs: x[idx] for fs, x in feats.items()}
    w = weight_vectors(a, [ids[i] for i in idx])
    if w is not None:
        zfeats["W"] = w
    zsplit, zres = run_probes(zfeats, sub, REGRESSION_TARGETS, cfg)
    labels = sub[0].get("labels") or {}
    return {
        "family": labels.get("family") or sub[0].get("family"),
        "task": labels.get("task"),
        "width": labels.get("width"),
        "depth": labels.get("depth"),
        "n_models": len(idx),
        "n_runs": len({run_of(r) for r in sub}),
        "split": zsplit,
        "features": {fs: int(x.shape[1]) for fs, x in zfeats.items()},
        "results": zres,
        "noise": target_noise(sub),
    }


def evaluate(
    atlas: str | Path,
    *,
    preset: str | None = "ci",
    backbone_dir: str | Path | None = None,
    out_name: str = "probes",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Probe embeddings and s(W) for zoo labels; write ``ATLAS/results/{out_name}.json/.md``,
    the map quality (``core.embeddings.map_quality``) to ``results/map_quality.json/.md`` and
    the permutation ratios (``core.embeddings.invariance``) to ``results/permutation.json/.md``.

    The headline probes run inside each homogeneous zoo (one family, one task, one size, at
    least ``zoo_min_runs`` runs; 003 Tables 1 and 9): test accuracy, epoch and generalization
    gap from the embedding, the embedding with depth, s(W) and the flattened weights W, against
    the mean predictor. A secondary probe pools the whole collection and also classifies
    family and task (task only for family x task pairs with ``task_min_runs`` runs).

    Args:
        atlas: an embedded atlas.
        preset: a ``PROBE_PRESETS`` name.
        backbone_dir: probe another backbone's embeddings (e.g. an ablation backbone).
        out_name: base name of the result files.
        overrides: other ``ProbeConfig`` fields.

    Returns:
        The result dict written to ``probes.json`` (``map_quality``: the map-quality result;
        ``permutation``: the permutation ratios, ``permutation_invariance``'s result).
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
    feats = features(a, ids, emb)
    only = {"task": task_pairs(rows, cfg.task_min_runs)}
    split, results = run_probes(
        feats, rows, (*REGRESSION_TARGETS, *CLASSIFICATION_TARGETS), cfg, only
    )
    zoos: dict[str, Any] = {}
    for key, idx in tqdm(
        homogeneous_zoos(rows, cfg.zoo_min_runs).items(), desc="zoo probes", unit="zoo"
    ):
        zoos[key] = _zoo_probe(a, ids, rows, feats, idx, cfg)
    out = {
        "split": split,
        "features": {fs: int(feats[fs].shape[1]) for fs in FEATURE_SETS},
        "results": results,
        "task_pairs": {
            "models": int(only["task"].sum()),
            "min_runs": cfg.task_min_runs,
        },
        "zoos": zoos,
        "config": to_dict(cfg),
        "backbone": str(backbone_dir) if backbone_dir is not None else "backbone",
        "pooling": embedded_pooling(a, backbone_dir) or "mean",
        # the kept step says whether the embedding comes from a trained backbone (0: untrained)
        "backbone_step": backbone_step(
            Path(backbone_dir) if backbone_dir is not None else a.backbone_dir
        ),
    }
    mq = map_quality(a.root, backbone_dir)
    out["map_quality"] = mq
    write_map_quality(a.root, mq, result_name(out_name, "map_quality"))
    out["permutation"] = permutation(a, backbone_dir, cfg)
    write_permutation(a.root, out["permutation"], result_name(out_name, "permutation"))
    a.write_result(out_name, out, probes_markdown(out))
    return out


def permutation(a: Atlas, backbone_dir: str | Path | None, cfg: ProbeConfig) -> dict[str, Any]:
    """The permutation ratios of the evaluated backbone
    (``core.embeddings.invariance.permutation_invariance``): in the form the atlas' embeddings
    were written (window, halo, pooling, canonical form) and on raw tokens (what it learned).
    ``{"skipped": reason}`` when ``permutation_copies`` is 0 or the atlas has too few
    validation and test models."""
    if cfg.permutation_copies <= 0:
        return {"skipped": "permutation_copies is 0"}
    try:
        return permutation_invariance(
            a.root,
            backbone_dir,
            embedded_config(a, backbone_dir),
            copies=cfg.permutation_copies,
            seed=cfg.seed,
        )
    except WeightAtlasError as e:
        return {"skipped": str(e)}


def result_name(out_name: str, part: str) -> str:
    """The name of the ``part`` result (``map_quality``, ``permutation``) written beside
    ``{out_name}.json``: ``part`` for the atlas' probes, ``{out_name}_{part}`` for another
    backbone's."""
    return part if out_name == "probes" else f"{out_name}_{part}"


def _noise_text(noise: dict[str, Any] | None) -> str:
    """`` Test accuracy's standard error ...`` for a zoo's line ('' when unknown)."""
    if not noise or noise.get("test_accuracy_se") is None:
        return ""
    gap = noise.get("generalization_gap_std")
    rel = noise.get("gap_reliability")
    return (
        f" A test accuracy's standard error: {noise['test_accuracy_se']:.4f} (median over "
        f"models, {noise['n_test_examples']} test examples); the generalization gap's std over "
        f"models: {'n/a' if gap is None else f'{gap:.4f}'} (at most "
        f"{'n/a' if rel is None else f'{rel:.2f}'} of its variance is not test-set noise)."
    )


def _cell(r: dict[str, Any], cv: bool) -> str:
    """One probe cell: ``value`` or ``mean ± std``, with ``(no signal)`` when the grid's edge
    was chosen (in the held-out fit, or in k of the folds)."""
    if cv:
        m, sd = r.get("cv_mean"), r.get("cv_std")
        if m is None:
            return "n/a"
        k, n = r.get("cv_no_signal_folds", 0), r.get("cv_folds", 0)
        flag = f" (no signal {k}/{n})" if k else ""
        return f"{m:.3f} ± {sd:.3f}{flag}"
    v = r.get("value")
    if v is None:
        return "n/a"
    return f"{v:.3f}{' (no signal)' if r.get('no_signal') else ''}"


def _baseline_cell(r: dict[str, Any], cv: bool) -> str:
    if cv:
        m, sd = r.get("cv_baseline_mean"), r.get("cv_baseline_std")
        return "n/a" if m is None else f"{m:.3f} ± {sd:.3f}"
    v = r.get("baseline")
    return "n/a" if v is None else f"{v:.3f}"


def _probe_table(
    results: dict[str, dict[str, Any]], targets: tuple[str, ...], cv: bool, lead: str = ""
) -> list[str]:
    sets = list(results)
    head = (f"| {lead} " if lead else "") + "| target | metric | " + " | ".join(sets)
    lines = [head + " | baseline |", "|---" * (len(sets) + 3 + bool(lead)) + "|"]
    for target in targets:
        metric = "R²" if target in REGRESSION_TARGETS else "accuracy"
        cells = [_cell(results[fs].get(target, {}), cv) for fs in sets]
        base = _baseline_cell(results[sets[0]].get(target, {}), cv)
        pre = f"| {lead} " if lead else ""
        lines.append(f"{pre}| {target} | {metric} | {' | '.join(cells)} | {base} |")
    return lines


def probes_markdown(out: dict[str, Any]) -> str:
    """The probe tables: per homogeneous zoo (headline), then pooled over the collection."""
    folds = out["config"]["outer_folds"]
    lines: list[str] = []
    zoos = out.get("zoos") or {}
    if zoos:
        lines += [
            "**Within one zoo** (one family, one task, one size; 003 Tables 1 and 9). Linear "
            f"probes, grouped {folds}-fold cross-validation by training run (mean ± std over "
            "folds, every run is test data once, no run in two folds). Baseline: the mean "
            "predictor (the training folds' mean for every test model). `no signal k/n`: in k "
            "of n folds the ridge chose the largest alpha of its grid (it predicts about the "
            "mean). W: the flattened weights.",
            "",
        ]
        for key, z in zoos.items():
            s = z["split"]
            lines += [
                f"*{key}*: {z['n_models']} models, {z['n_runs']} runs (width {z['width']}, depth "
                f"{z['depth']}); held-out split ({s['how']}): {s['n_test']} models / "
                f"{s['test_runs']} runs.{_noise_text(z.get('noise'))}",
                "",
                *_probe_table(z["results"], REGRESSION_TARGETS, cv=True),
                "",
                "Held-out runs only (one split by run):",
                "",
                *_probe_table(z["results"], REGRESSION_TARGETS, cv=False),
                "",
            ]
    s = out["split"]
    tp = out.get("task_pairs") or {}
    lines += [
        "**Pooled over the whole collection** (secondary: families and tasks mixed, which the "
        "papers never pool). Split by training run "
        f"({s['how']}): {s['n_train']} models / {s['train_runs']} runs train, {s['n_test']} models "
        f"/ {s['test_runs']} runs test, {len(s['shared_runs'])} runs on both sides. Baseline: "
        "mean predictor (R²) or majority class (accuracy). Task: only the "
        f"{tp.get('models', 'n/a')} models of family x task pairs with at least "
        f"{tp.get('min_runs', 2)} runs. Classifier C chosen by grouped CV on log-loss; `no "
        "signal`: the smallest C of the grid was chosen (an intercept-only model).",
        "",
        *_probe_table(out["results"], (*REGRESSION_TARGETS, *CLASSIFICATION_TARGETS), cv=False),
        "",
        f"Grouped {folds}-fold cross-validation over all runs (mean ± std over folds):",
        "",
        *_probe_table(out["results"], (*REGRESSION_TARGETS, *CLASSIFICATION_TARGETS), cv=True),
    ]
    dims = out["features"]
    lines.append("")
    lines.append(
        f"Features: embedding {dims['embedding']} dims ({out.get('pooling', 'mean')} pooling of "
        "the token embeddings); embedding+depth "
        f"{dims.get('embedding+depth', 'n/a')} dims (per-layer mean embeddings pooled over "
        f"{DEPTH_BINS} depth bins + all layers); s(W) {dims['s(W)']} dims (mean, std, quintiles "
        f"per layer pooled over {DEPTH_BINS} depth bins + whole model); embedding+s(W) "
        f"{dims.get('embedding+s(W)', 'n/a')} dims (both side by side: does the embedding add "
        "to s(W)?)."
    )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
