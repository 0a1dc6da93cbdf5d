"""Checkpoint selection on the embedding's use: k-NN figures by hand, val models only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY

import core.backbone.selection as selection
import core.backbone.train as train_mod
from core.atlas import Atlas, read_jsonl
from core.backbone.selection import knn_figures, pooled_from_sums
from core.backbone.train import train

FAST = {"steps": 6, "ckpt_every": 3, "eval_every": 3, "log_every": 1, "batch_size": 4}


def _labels(groups, families, tasks):
    return {"ids": [f"m{i}" for i in range(len(groups))], "group": groups, "family": families,
            "task": tasks}  # fmt: skip


def test_knn_figures_by_hand_leave_the_models_own_run_out():
    # two families far apart; within each, two tasks; two runs per (family, task)
    fam = ["a"] * 4 + ["b"] * 4
    task = ["x", "x", "y", "y"] * 2
    group = [f"{f}-{t}-r{i % 2}" for i, (f, t) in enumerate(zip(fam, task, strict=True))]
    v = np.array([[0, 0], [0, 0.1], [0, 1], [0, 1.1], [9, 0], [9, 0.1], [9, 1], [9, 1.1]])
    out = knn_figures(v, _labels(group, fam, task), k=1)
    assert out["knn_family_accuracy"] == 1.0 and out["knn_task_accuracy"] == 1.0
    assert out["knn"] == 1.0
    # if a model's only near same-task model is its own run, leaving the run out costs it
    group = [f"{f}-{t}" for f, t in zip(fam, task, strict=True)]  # both checkpoints one run
    out = knn_figures(v, _labels(group, fam, task), k=1)
    assert out["knn_family_accuracy"] == 1.0 and out["knn_task_accuracy"] == 0.0
    assert out["knn"] == 0.5


def test_pooled_embedding_from_layer_sums_is_the_mean_and_std_over_tokens():
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (5, 7, 4)]
    owner = torch.tensor([0, 0, 1])  # layers 0, 1 of model 0; layer 2 of model 1
    sums = torch.stack([torch.cat([torch.tensor([len(t)]), t.sum(0), (t * t).sum(0)]) for t in z])
    got = pooled_from_sums(sums.double(), owner, 2)
    m0 = torch.cat(z[:2])
    want0 = torch.cat([m0.mean(0), m0.std(0)])
    want1 = torch.cat([z[2].mean(0), z[2].std(0)])
    np.testing.assert_allclose(got, torch.stack([want0, want1]).numpy(), rtol=1e-10)


@pytest.fixture(scope="module")
def zoo_atlas(atlas_factory):
    return atlas_factory(TINY)


def test_selection_score_reads_validation_models_only(zoo_atlas, tmp_path, monkeypatch):
    a = Atlas.open(zoo_atlas)
    val = {r["id"] for r in a.accepted("val")}
    train_ids = {r["id"] for r in a.accepted("train")}
    assert val and train_ids
    read: set[str] = set()
    scored: list[list[str]] = []
    real_run, real_knn = train_mod.Evaluator.run, selection.knn_figures

    def run(self, *args, **kw):
        if self.knn_labels is None:
            return real_run(self, *args, **kw)
        window = self.store.window

        def spy(model_id, *a, **k):
            read.add(model_id)
            return window(model_id, *a, **k)

        self.store.window = spy
        try:
            return real_run(self, *args, **kw)
        finally:
            self.store.window = window

    def knn(vectors, labels, k):
        scored.append(list(labels["ids"]))
        assert len(vectors) == len(labels["ids"])
        return real_knn(vectors, labels, k)

    monkeypatch.setattr(train_mod.Evaluator, "run", run)
    monkeypatch.setattr(selection, "knn_figures", knn)
    out = tmp_path / "bb"
    summary = train(zoo_atlas, "ci", {**FAST, "select": "rec+knn"}, out=out)
    assert read == val and all(set(s) == val for s in scored) and len(scored) == 2
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "val_select_score" in r]
    assert [r["step"] for r in rows] == [3, 6]
    for r in rows:
        want = r["val_layer_r2_median_conv_linear"] + 1.0 * r["val_knn"]
        assert r["val_select_score"] == pytest.approx(want)
        assert 0.0 <= r["val_knn_family_accuracy"] <= 1.0
    assert summary["best"]["metric"] == "val_select_score"
    best = max(rows, key=lambda r: r["val_select_score"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["selected"] == {
        "metric": "val_select_score", "value": best["val_select_score"], "step": best["step"]
    }  # fmt: skip


def test_training_with_permutation_views_other_windows_and_the_window_head(zoo_atlas, tmp_path):
    over = {
        **FAST, "permute": True, "positive": "any", "noise_mode": "multiplicative",
        "head": "window", "gamma": 0.5,
    }  # fmt: skip
    summary = train(zoo_atlas, "ci", over, out=tmp_path / "bb")
    assert summary["steps"] == 6 and np.isfinite(summary["loss"]) and summary["con"] > 0


def test_selection_pools_as_the_embeddings_mean_and_std_pooling():
    """The selection's sums-based pooling is ``pool_model(..., "mean+std")`` of each model."""
    from core.embeddings.encode import pool_model

    g = torch.Generator().manual_seed(3)
    z = torch.randn(40, 4, generator=g, dtype=torch.float64)
    layer = torch.tensor([0] * 10 + [1] * 25 + [2] * 5)
    positions = torch.stack([torch.arange(40), layer, torch.zeros(40, dtype=torch.long)], 1)
    sums = torch.stack(
        [torch.cat([torch.tensor([float((layer == j).sum())]), z[layer == j].sum(0),
                    (z[layer == j] ** 2).sum(0)]) for j in range(3)]
    )  # fmt: skip
    got = pooled_from_sums(sums, torch.zeros(3, dtype=torch.long), 1)[0]
    want = pool_model(z.float(), positions, "mean+std").double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
