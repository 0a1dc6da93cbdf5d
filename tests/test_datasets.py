"""Tasks: fixed seeded splits, derived tasks, and the train/eval loop on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import WeightAtlasError
from core.zoos.tasks import (
    PROBE_SHAPES_PER_CLASS,
    SHAPES,
    TASKS,
    evaluate,
    evaluate_accuracy,
    get_task,
    stratified_split,
    train_epochs,
)

DRAWN_SPLITS = {"shapes16-probe": PROBE_SHAPES_PER_CLASS}  # per class and split


@pytest.mark.parametrize("name", TASKS)
def test_task_splits_shapes_and_classes(name):
    task = get_task(name)
    info = task.info
    sizes = {}
    for split in ("train", "val", "test"):
        X, y = task.split(split)
        assert X.dtype == info.input_dtype and y.dtype == torch.int64
        assert X.shape[1:] == info.input_shape
        assert len(X) == len(y)
        # stratified: every class is present in every split
        assert set(y.tolist()) == set(range(info.num_classes))
        sizes[split] = len(y)
    total = sum(sizes.values())
    if name in DRAWN_SPLITS:  # each split drawn apart (tests/test_tasks.py checks the sizes)
        assert sizes == {s: k * info.num_classes for s, k in DRAWN_SPLITS[name].items()}
    else:
        assert abs(sizes["train"] / total - 0.6) < 0.02
        assert abs(sizes["test"] / total - 0.2) < 0.02
    if info.kind == "image":
        assert info.in_chans == 1 and info.n_features == info.img_size**2
        X, _ = task.split("train")
        assert float(X.min()) >= 0.0 and float(X.max()) <= 1.0
    elif info.kind == "sequence":  # token ids; rules checked in tests/test_sequence.py
        X, _ = task.split("train")
        assert X.dtype == torch.int64 and info.n_features == info.seq_len
        assert 0 <= int(X.min()) and int(X.max()) < info.vocab_size
    else:
        X, _ = task.split("train")
        assert torch.allclose(X.mean(0), torch.zeros(info.n_features), atol=1e-4)
        assert torch.allclose(X.std(0, unbiased=False), torch.ones(info.n_features), atol=1e-3)


def test_splits_are_disjoint_and_seeded():
    y = np.repeat(np.arange(5), 40)
    a = stratified_split(y, "x")
    b = stratified_split(y, "x")
    c = stratified_split(y, "y")
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["train"], c["train"])
    idx = np.concatenate(list(a.values()))
    assert len(idx) == len(y) == len(set(idx.tolist()))


def test_derived_digit_tasks_transform_the_same_examples():
    X, y = get_task("digits10").split("test")
    Xr, yr = get_task("digits-rot90").split("test")
    Xi, yi = get_task("digits-invert").split("test")
    assert torch.equal(yr, y) and torch.equal(yi, y)
    assert torch.equal(Xr, torch.rot90(X, 1, dims=(2, 3)))
    assert torch.allclose(Xi, 1.0 - X)
    X16, y16 = get_task("digits16").split("test")
    assert X16.shape[1:] == (1, 16, 16) and torch.equal(y16, y)
    # class subsets: digits-0to4 holds exactly the 0-4 test digits, digits-5to9 the rest relabelled
    X04, y04 = get_task("digits-0to4").split("test")
    assert torch.equal(X04, X[y < 5]) and torch.equal(y04, y[y < 5])
    X59, y59 = get_task("digits-5to9").split("test")
    assert torch.equal(X59, X[y >= 5]) and torch.equal(y59, y[y >= 5] - 5)
    _, yp = get_task("digits-parity").split("test")
    assert torch.equal(yp, y % 2)
    assert get_task("shapes16").info.num_classes == len(SHAPES)


def test_unknown_task_and_split_raise():
    with pytest.raises(WeightAtlasError, match="unknown task"):
        get_task("mnist")
    with pytest.raises(WeightAtlasError, match="unknown split"):
        get_task("wine").split("dev")


class _Logistic(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_train_epochs_learns_deterministically_and_calls_back():
    task = get_task("digits10")
    epochs_seen = []

    def run():
        torch.manual_seed(0)
        model = _Logistic(64, 10)
        before = evaluate(model, task, "test")
        losses = train_epochs(
            model,
            task,
            epochs=6,
            lr=1e-2,
            weight_decay=1e-4,
            seed=3,
            on_epoch=lambda e, m: epochs_seen.append(e),
        )
        return model, before, losses

    m1, before, losses = run()
    m2, _, _ = run()
    assert epochs_seen == [1, 2, 3, 4, 5, 6] * 2
    assert all(
        torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values())
    )
    assert losses[-1] < losses[0]
    after = evaluate(m1, task, "test")
    assert before.accuracy < 0.3 and after.accuracy > 0.9
    assert after.loss < before.loss
    assert evaluate_accuracy(m1, task, "train") >= after.accuracy - 0.05
    # a different seed shuffles differently
    torch.manual_seed(0)
    m3 = _Logistic(64, 10)
    train_epochs(m3, task, epochs=1, lr=1e-2, seed=4)
    torch.manual_seed(0)
    m4 = _Logistic(64, 10)
    train_epochs(m4, task, epochs=1, lr=1e-2, seed=3)
    assert not torch.equal(m3.fc.weight, m4.fc.weight)


def test_evaluate_constant_model_gives_class_frequency():
    task = get_task("breast-cancer")

    class Const(nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 2)
            out[:, 1] = 1.0
            return out

    _, y = task.split("test")
    assert evaluate_accuracy(Const(), task, "test") == pytest.approx(float((y == 1).float().mean()))


def test_heldout_gratings_are_in_no_zoo_preset_and_learnable():
    from core.config import build_config
    from core.models.families import build_family
    from core.zoos.zoo import ZOO_PRESETS, ZooConfig, plan

    for name in ZOO_PRESETS:
        assert "gratings16" not in {
            r.task for r in plan(build_config(ZooConfig, ZOO_PRESETS, name))
        }
    task = get_task("gratings16")
    assert task.info.num_classes == 6 and task.info.img_size == 16
    model = build_family("cnn", task.info, 8, 2, seed=0)
    before = evaluate(model, task, "test").accuracy
    train_epochs(model, task, epochs=4, lr=3e-3, seed=0)
    after = evaluate(model, task, "test").accuracy
    assert before < 0.3 and after > 0.6  # orientation is learnable from the pixels


def test_digits_read_without_sklearn_match_load_digits():
    """The digits tasks read scikit-learn's shipped CSV directly (no sklearn import); they
    hold exactly what ``sklearn.datasets.load_digits`` returns, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    from core.zoos.tasks import _digits

    X, y, _ = _digits()
    d = load_digits()
    assert X.dtype == np.float32 and X.shape == (1797, 1, 8, 8)
    assert np.array_equal(X[:, 0] * 16.0, d.images.astype(np.float32))
    assert np.array_equal(y, d.target)
