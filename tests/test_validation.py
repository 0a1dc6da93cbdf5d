"""Validation during training (core.backbone.validation): the fast path (windows and position
codes read once and kept, per-kind R^2 sums from per-layer sums) gives the reference path's
figures, on a real tokenized atlas of small MLPs and CNNs."""

from __future__ import annotations

import math

import pytest
import torch
from test_train import make_atlas

from core.backbone.config import build_configs
from core.backbone.device import setup_dist
from core.backbone.model import Backbone
from core.backbone.train import _kinds
from core.backbone.validation import Evaluator
from core.tokens.store import TokenStore


def _close(a, b, path="") -> None:
    """Nested results equal: floats to 1e-9 (float64 sums added in another order)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-9), (
            path,
            a,
            b,
        )
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fast_evaluator_matches_the_reference_path(tmp_path, dtype):
    atlas = make_atlas(tmp_path / "atlas", n_train=4, n_val=6)
    store = TokenStore(atlas.tokens_dir)
    ids = store.ids
    bcfg, tcfg = build_configs("ci", {"dtype": dtype, "token_size": 16, "window": 8})
    torch.manual_seed(0)
    model = Backbone(bcfg).eval()
    d = setup_dist("cpu")
    labels = {
        "ids": list(ids),
        "group": [f"run-{i // 2}" for i in range(len(ids))],
        "family": ["mlp" if i % 2 else "cnn" for i in range(len(ids))],
        "task": [f"t{i % 3}" for i in range(len(ids))],
    }

    def evaluator(fast: bool, cache_bytes: int = 1 << 30) -> Evaluator:
        ev = Evaluator(store, ids, bcfg.window, _kinds(store, ids))
        ev.fast, ev.cache_bytes, ev.knn_labels = fast, cache_bytes, labels
        return ev

    ref = evaluator(False).run(model, d, 3, tcfg, with_layers=True)
    assert ref["select_score"] is not None and len(ref["r2_by_kind"]) >= 3
    fast = evaluator(True)
    first = fast.run(model, d, 3, tcfg, with_layers=True)
    assert fast._windows, "the windows were not kept"
    _close(first, ref)
    # the kept windows serve the next run (other weights: the scores follow the model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref2 = evaluator(False).run(model, d, 3, tcfg, with_layers=True)
    again = fast.run(model, d, 3, tcfg, with_layers=True)
    assert again["r2"] != first["r2"]
    _close(again, ref2)
    # too large to keep: read on each run, same figures
    uncached = evaluator(True, cache_bytes=0)
    _close(uncached.run(model, d, 3, tcfg, with_layers=True), ref2)
    assert not uncached._windows


def test_bench_validation_times_both_paths_on_an_atlas(tmp_path):
    """``weightatlas bench train --atlas`` part: both paths score the same, timings are positive."""
    from core.bench.train import bench_validation

    atlas = make_atlas(tmp_path / "atlas", n_train=2, n_val=4)
    bcfg, tcfg = build_configs("ci", {"token_size": 16, "window": 8, "batch_size": 3})
    res = bench_validation(str(atlas.root), bcfg, tcfg, torch.device("cpu"), repeat=1)
    assert res["val_models"] == 4 and res["windows"] >= 4
    assert res["reference_seconds"] > 0 and res["fast_seconds"] > 0
    assert res["r2"]["fast"] == pytest.approx(res["r2"]["reference"], rel=1e-9)
    assert res["select_score"]["fast"] == pytest.approx(res["select_score"]["reference"], rel=1e-9)
