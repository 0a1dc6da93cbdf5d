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

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.atlas import Atlas, write_json
from core.config import add_overrides_arg, build_config, parse_overrides, to_dict
from core.errors import WeightAtlasError

# Shapes: M models, F features, N tokens, D token size.

DEPTH_BINS = 4
STAT_NAMES = ("mean", "std", "q0", "q25", "q50", "q75", "q100")
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


# ---------------------------------------------------------------------------------------------
# s(W)


def layer_stats(values: np.ndarray) -> np.ndarray:
    """``(7,)`` mean, std and quintiles of one layer's values."""
    v = values.astype(np.float64, copy=False)
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return np.array([v.mean(), v.std(), *q])


def weight_statistics(
    tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
) -> np.ndarray:
    """The s(W) feature vector of one tokenized model.

    Args:
        tokens: ``(N, D)`` raw weight values.
        mask: ``(N, D)`` which entries are real values.
        positions: ``(N, 3)`` ``[n, l, k]``; ``l`` is the layer index (depth order).

    Returns:
        ``(7 * (DEPTH_BINS + 1),)``: per bin of relative depth the mean of its layers'
        statistics (an empty bin takes the whole-model statistics), then the whole-model
        statistics.
    """
    t = tokens.numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    m = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    layer = np.asarray(positions)[:, 1]
    ids = np.unique(layer)
    per_layer = []
    for lid in ids:
        rows = layer == lid
        per_layer.append(layer_stats(t[rows][m[rows]]))
    return depth_pooled(np.stack(per_layer), layer_stats(t[m]))  # (n_layers, 7), (7,)


def weight_statistics_names() -> list[str]:
    """Names of the s(W) features, aligned with :func:`weight_statistics`."""
    groups = [f"depth{b}" for b in range(DEPTH_BINS)] + ["all"]
    return [f"{g}.{s}" for g in groups for s in STAT_NAMES]


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


def depth_pooled(layer_z: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """Per-layer vectors ``(n_layers, F)`` in depth order pooled like s(W).

    Returns:
        ``((DEPTH_BINS + 1) * F,)``: the mean over each bin of relative depth (an empty bin
        takes ``overall``), then ``overall``.
    """
    n = len(layer_z)
    depth = (np.arange(n) + 0.5) / max(n, 1)
    bins = np.minimum((depth * DEPTH_BINS).astype(int), DEPTH_BINS - 1)
    feats = [
        layer_z[bins == b].mean(0) if (bins == b).any() else overall for b in range(DEPTH_BINS)
    ]
    return np.concatenate([*feats, overall]).astype(np.float64)


def features(atlas: Atlas, ids: list[str], emb: Any) -> dict[str, np.ndarray]:
    """``{"embedding": (M, L), "embedding+depth": (M, 5L), "s(W)": (M, 35)}`` for ``ids``.

    ``embedding`` is the model's mean token embedding; ``embedding+depth`` pools its per-layer
    embeddings over the same depth bins as s(W), so both feature sets see depth alike. ``emb``
    is the ``core.embed.Embeddings`` the ids come from.
    """
    from core.store import TokenStore

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
    from core.embed import load_embeddings

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
    from core.atlas import atomic_write_bytes

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
# layer report


def layer_kind(shape: list[int] | tuple[int, ...]) -> str:
    """A coarse kind from a tensor's rank: conv (4-D), matrix (2-D), vector (1-D), tensor."""
    return {4: "conv", 2: "matrix", 1: "vector", 0: "scalar"}.get(len(shape), "tensor")


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance between the empirical value distributions of two equal-size arrays."""
    return float(np.mean(np.abs(np.sort(a.ravel()) - np.sort(b.ravel()))))


def _subsample(v: np.ndarray, n: int) -> np.ndarray:
    if v.size <= n:
        return v.ravel()
    idx = np.linspace(0, v.size - 1, n).round().astype(np.int64)
    return v.ravel()[idx]


def layer_report(
    atlas: str | Path,
    model_id: str,
    backbone_dir: str | Path | None = None,
    *,
    max_values: int = 4096,
) -> list[dict[str, Any]]:
    """Per-layer reconstruction of one tokenized model through the backbone.

    Args:
        atlas: a tokenized atlas with a trained backbone.
        model_id: a model in the token store.
        backbone_dir: another backbone directory (ablations); default the atlas' backbone.
        max_values: values returned per layer (evenly subsampled; metrics use all values).

    Returns:
        One record per layer: ``name, kind, shape, n_values, original, reconstructed`` (lists
        of at most ``max_values`` floats), ``r2, mse, w1_over_std``.
    """
    from core.embed import (
        EMBED_PRESETS,
        EmbedConfig,
        _load_backbone,
        _masked_tokens,
        haloed_apply,
        resolve_window,
    )
    from core.store import TokenStore
    from core.tokenize import detokenize

    a = Atlas.open(atlas)
    store = TokenStore(a.tokens_dir)
    if model_id not in set(store.ids):
        raise WeightAtlasError(f"{model_id!r} is not in the token store of {a.root}")
    cfg = build_config(EmbedConfig, EMBED_PRESETS, "ci")
    backbone = _load_backbone(a, backbone_dir, cfg.device)
    tokens, positions = _masked_tokens(store.get(model_id))
    window, halo = resolve_window(cfg, backbone)
    with torch.no_grad():
        z = haloed_apply(backbone.encode, tokens, positions, window, halo, cfg.batch_size)
        recon = haloed_apply(backbone.decode, z, positions, window, halo, cfg.batch_size)
    layers = store.layers(model_id)
    orig_sd = detokenize(tokens, layers)
    rec_sd = detokenize(recon.float(), layers)
    out = []
    for entry in layers:
        o = orig_sd[entry.name].double().numpy().ravel()
        r = rec_sd[entry.name].double().numpy().ravel()
        var = o.var()
        mse = float(np.mean((o - r) ** 2))
        std = float(np.sqrt(var))
        out.append(
            {
                "name": entry.name,
                "kind": layer_kind(tuple(entry.shape)),
                "shape": list(entry.shape),
                "n_values": int(o.size),
                "original": _subsample(o, max_values).tolist(),
                "reconstructed": _subsample(r, max_values).tolist(),
                "r2": float(1.0 - mse / var) if var > 0 else None,
                "mse": mse,
                "w1_over_std": wasserstein1(o, r) / std if std > 0 else None,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# encode-decode accuracy


def reconstruct_tokens(
    backbone: Any, tokens: torch.Tensor, positions: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """Haloed encode then decode of one model's tokens ``(N, D)`` (the embed stage's windows)."""
    from core.embed import EMBED_PRESETS, EmbedConfig, haloed_apply, resolve_window

    cfg = build_config(EmbedConfig, EMBED_PRESETS, "ci")
    window, halo = resolve_window(cfg, backbone)
    with torch.no_grad():
        z = haloed_apply(backbone.encode, tokens, positions, window, halo, batch_size)
        return haloed_apply(backbone.decode, z, positions, window, halo, batch_size).float()


def reconstruction_accuracy(
    atlas: str | Path,
    family: str = "cnn",
    task: str = "digits10",
    splits: tuple[str, ...] = ("val", "test"),
    backbone_dir: str | Path | None = None,
    eval_split: str = "test",
) -> list[dict[str, Any]]:
    """Accuracy of models before and after an encode-decode through the backbone.

    Each accepted model of ``family`` trained on ``task`` in one of ``splits`` (by default
    only models the backbone never trained on) is loaded from its directory, its stored tokens
    are encoded and decoded (haloed windows, as the embed stage does), and the decoded tensors
    replace its trainable weights; buffers (batch-norm running statistics) stay the original's.
    Both models are scored on ``eval_split`` of the task, and the decoded one once more after
    re-estimating its batch-norm statistics on train data (as sampling does,
    ``core.sample.condition_batchnorm``).

    Returns:
        One row per model: ``id, split, epoch, accuracy_original, accuracy_decoded,
        accuracy_decoded_bn, r2`` (R² of all decoded values).
    """
    import copy

    from core.architectures import load_model_dir, load_weights_strict
    from core.datasets import evaluate_accuracy
    from core.embed import _load_backbone, _masked_tokens
    from core.sample import condition_batchnorm, resolve_target
    from core.store import TokenStore
    from core.tokenize import detokenize

    a = Atlas.open(atlas)
    store = TokenStore(a.tokens_dir)
    backbone = _load_backbone(a, backbone_dir, "cpu")
    rows = [
        r
        for r in a.accepted()
        if r.get("split") in splits
        and (r.get("labels") or {}).get("family", r.get("family")) == family
        and (r.get("labels") or {}).get("task") == task
        and r["id"] in store
        and r.get("path")
    ]
    if not rows:
        raise WeightAtlasError(
            f"{a.root}: no accepted {family}/{task} model in splits {', '.join(splits)}"
        )
    out = []
    for r in tqdm(sorted(rows, key=lambda r: r["id"]), desc="encode-decode", unit="model"):
        path = Path(r["path"])
        model = load_model_dir(path if path.is_absolute() else a.root / path).model.float()
        tok = store.get(r["id"])
        tokens, positions = _masked_tokens(tok)
        recon = reconstruct_tokens(backbone, tokens, positions)
        decoded = copy.deepcopy(model)
        state = dict(decoded.state_dict())
        state.update(detokenize(recon, store.layers(r["id"])))
        load_weights_strict(decoded, state)
        decoded.eval()
        mask = torch.as_tensor(tok.mask, dtype=torch.bool)
        y, p = tokens[mask].double(), recon[mask].double()
        labels = r.get("labels") or {}
        row = {
            "id": r["id"],
            "split": r["split"],
            "epoch": labels.get("epoch"),
            "accuracy_original": evaluate_accuracy(model, task, eval_split),
            "accuracy_decoded": evaluate_accuracy(decoded, task, eval_split),
            "r2": float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
        }
        target = resolve_target(
            f"zoo:{family}", store.scheme, store.token_size, task,
            labels.get("width"), labels.get("depth"),
        )  # fmt: skip
        if condition_batchnorm(decoded, target, batches=8, batch_size=64, seed=0):
            row["accuracy_decoded_bn"] = evaluate_accuracy(decoded, task, eval_split)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# CLI


def add_cli(p: argparse.ArgumentParser) -> None:
    from core.cli import add_json_flag

    p.add_argument("atlas", help="an embedded atlas directory")
    p.add_argument(
        "--preset",
        default="ci",
        choices=sorted(PROBE_PRESETS),
        help="probe settings: ci is a smoke test (3-fold CV, coarse grids); demo and paper-* "
        "use 5-fold CV for numbers to report (default: ci)",
    )
    p.add_argument("--backbone", default=None, help="probe another backbone's embeddings")
    p.add_argument(
        "--layers",
        default=None,
        metavar="MODEL_ID",
        help="print the layer report of one model instead",
    )
    p.add_argument(
        "--encode-decode",
        default=None,
        metavar="FAMILY/TASK",
        help="print test accuracy of the val/test models of FAMILY/TASK (e.g. cnn/digits10) "
        "before and after an encode-decode through the backbone instead",
    )
    add_overrides_arg(p, "ProbeConfig")
    add_json_flag(p)


def run_cli(args: argparse.Namespace) -> int:
    from core.cli import emit
    from core.explore import backbone_budget

    if getattr(args, "encode_decode", None):
        family, _, task = args.encode_decode.partition("/")
        if not task:
            raise WeightAtlasError(f"--encode-decode {args.encode_decode!r}: use FAMILY/TASK")
        rows = reconstruction_accuracy(args.atlas, family, task, backbone_dir=args.backbone)
        lines = [f"{'model':48s} {'split':5s} {'orig':>6s} {'decoded':>8s} {'+bn':>6s} {'r2':>6s}"]
        for r in rows:
            bn = r.get("accuracy_decoded_bn")
            lines.append(
                f"{r['id'][-48:]:48s} {r['split']:5s} {r['accuracy_original']:6.3f} "
                f"{r['accuracy_decoded']:8.3f} {'' if bn is None else f'{bn:6.3f}':>6s} "
                f"{r['r2']:6.3f}"
            )
        emit(args, rows, "\n".join(lines))
        return 0
    if args.layers is not None:
        recs = layer_report(args.atlas, args.layers, args.backbone)
        if args.json:
            emit(args, [{k: v for k, v in r.items() if k not in ("original", "reconstructed")}
                        for r in recs], "")  # fmt: skip
            return 0
        print(f"{'layer':40s} {'kind':7s} {'shape':>18s} {'r2':>8s} {'mse':>10s} {'w1/std':>8s}")
        for r in recs:
            r2 = "n/a" if r["r2"] is None else f"{r['r2']:.3f}"
            w1 = "n/a" if r["w1_over_std"] is None else f"{r['w1_over_std']:.3f}"
            print(
                f"{r['name'][:40]:40s} {r['kind']:7s} {'x'.join(map(str, r['shape'])):>18s} {r2:>8s} {r['mse']:10.3g} {w1:>8s}"
            )
        return 0
    out = evaluate(
        args.atlas,
        preset=args.preset,
        backbone_dir=args.backbone,
        overrides=parse_overrides(args.overrides),
    )
    a = Atlas.open(args.atlas)
    notes = []
    if args.preset == "ci":
        notes.append(
            "preset ci is a smoke test (3-fold CV, coarse hyper-parameter grids): it checks "
            "that the stage runs; use --preset demo for numbers to report."
        )
    trained = backbone_budget(Path(args.backbone) if args.backbone else a.backbone_dir)
    if trained.get("preset") == "ci":
        notes.append(
            f"the backbone was trained with the ci preset ({trained.get('steps', '?')} steps), "
            "a smoke test as well: its embeddings say little about the method."
        )
    text = probes_markdown(out).rstrip("\n")
    text += f"\n\nwritten: {a.results_dir / 'probes.json'} and probes.md"
    text += "".join(f"\nnote: {n}" for n in notes)
    emit(args, out, text)
    return 0
