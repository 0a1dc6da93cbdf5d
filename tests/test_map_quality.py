"""Map quality: leave-one-run-out k-NN family, task and test-accuracy figures; the atlas' table."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, ci_backbone

from core.atlas import Atlas, read_json
from core.embeddings.map_quality import (
    SPACES,
    cached_map_quality,
    embeddings_stamp,
    knn_figures,
    map_quality,
    map_quality_markdown,
    map_quality_rows,
    map_quality_table,
    reference_figures,
    write_map_quality,
)


def _line(x: list[float]) -> np.ndarray:
    """Distances between points on a line."""
    p = np.asarray(x, dtype=np.float64)
    return np.abs(p[:, None] - p[None, :])


def test_a_models_own_run_never_vouches_for_it():
    # run a: two f1 checkpoints at 0; runs b, c: f2 near 1; runs d, e: f1 far away (10)
    x = [0.0, 0.0, 1.0, 1.1, 10.0, 10.1]
    groups = ["a", "a", "b", "c", "d", "e"]
    family = ["f1", "f1", "f2", "f2", "f1", "f1"]
    task = ["t"] * 6
    acc = [None] * 6
    got = knn_figures(_line(x), groups, family, task, acc, k=1)
    # a's checkpoints see b (f2), not each other: wrong; b<->c right; d<->e right
    assert got["family_accuracy"] == pytest.approx(4 / 6)
    assert got["n_family"] == 6
    # the same points as six separate runs: a's siblings count, all right
    free = knn_figures(_line(x), list("abcdef"), family, task, acc, k=1)
    assert free["family_accuracy"] == 1.0
    # majority vote over k = 3 with the nearest breaking ties
    got = knn_figures(_line(x), groups, family, task, acc, k=3)
    # a: b, c, d -> f2 (2 of 3): wrong; b: c, a, a -> f1 wrong; c: b, a, a -> f1 wrong;
    # d: e, c, b -> f2 wrong; e: d, c, b -> f2 wrong
    assert got["family_accuracy"] == 0.0


def test_task_within_family_and_accuracy_r2():
    rng = np.random.default_rng(0)
    n_runs = 40
    acc = rng.uniform(0.2, 1.0, n_runs)
    family = ["f1" if i % 2 else "f2" for i in range(n_runs)]
    task = ["x" if i % 4 < 2 else "y" for i in range(n_runs)]
    groups = [f"r{i}" for i in range(n_runs)]
    # features = the test accuracy itself: neighbours predict it well
    good = knn_figures(_line(list(acc)), groups, family, task, list(acc), k=5)
    assert good["test_accuracy_r2"] > 0.9
    assert good["n_accuracy"] == n_runs
    # features unrelated to it: no better than the mean predictor (up to noise)
    noise = knn_figures(_line(list(rng.normal(size=n_runs))), groups, family, task, list(acc))
    assert noise["test_accuracy_r2"] < 0.3
    # task neighbours come from the model's own family only: place each task far apart within
    # f1 and mix f2's tasks: f1 task accuracy 1, f2 about chance
    pos = [(0.0 if t == "x" else 100.0) + i * 1e-3 if f == "f1" else rng.normal() * 1e-3
           for i, (f, t) in enumerate(zip(family, task, strict=True))]  # fmt: skip
    res = knn_figures(_line(pos), groups, family, task, list(acc), k=3)
    f1 = [i for i in range(n_runs) if family[i] == "f1"]
    only_f1 = knn_figures(
        _line([pos[i] for i in f1]),
        [groups[i] for i in f1],
        [family[i] for i in f1],
        [task[i] for i in f1],
        [acc[i] for i in f1],
        k=3,
    )
    assert only_f1["task_accuracy"] == 1.0
    assert res["n_task"] == n_runs and res["task_accuracy"] < 0.9
    # a family with a single task takes no part in the task figure
    one = knn_figures(_line(pos), groups, family, ["x" if f == "f2" else t for f, t in
                                                  zip(family, task, strict=True)], list(acc))  # fmt: skip
    assert one["n_task"] == len(f1)


def test_reference_predictors_leave_the_run_out():
    groups = ["a", "a", "b", "c", "d", "e"]
    family = ["f1", "f1", "f2", "f2", "f2", "f2"]
    task = ["x", "x", "x", "y", "y", "y"]
    acc = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    ref = reference_figures(groups, family, task, acc)
    # a's checkpoints: every other run is f2 -> wrong; b..e: the rest is f2 3 : f1 2 -> right
    assert ref["family_accuracy"] == pytest.approx(4 / 6)
    # task: f2 only (f1 has one task); b (x) sees y y y -> wrong; c, d, e see x y y -> right
    assert ref["task_accuracy"] == pytest.approx(3 / 4) and ref["n_task"] == 4
    # ceiling: b is f2's only x run, so no vote can name x for it; c, d, e have other y runs
    assert ref["task_ceiling"] == pytest.approx(3 / 4)
    # the other runs' mean: a -> 0, b..e -> 0.4; below the in-sample mean's R² of 0
    assert ref["test_accuracy_r2"] < 0


@pytest.fixture(scope="module")
def embedded(atlas_factory) -> Path:
    from core.embeddings.embed import embed

    atlas = atlas_factory(TINY, ci_backbone())
    embed(atlas)
    return atlas


def test_map_quality_of_an_embedded_atlas(embedded, tmp_path):
    from core.embeddings.statistics import sw_features
    from core.embeddings.table import load_embeddings

    out = map_quality(embedded)
    assert set(out["spaces"]) == set(SPACES)
    assert out["n_models"] == len(Atlas(embedded).accepted()) and out["k"] == 5
    for space in SPACES:
        s = out["spaces"][space]
        assert s is not None, space
        assert 0.0 <= s["family_accuracy"] <= 1.0 and s["n_family"] == out["n_models"]
        assert s["test_accuracy_r2"] is not None and s["test_accuracy_r2"] <= 1.0
    assert out["spaces"]["umap"]["dims"] == 2 and out["spaces"]["s(W)"]["dims"] == 35
    # the s(W) embed stored is the one computed from the tokens
    emb = load_embeddings(embedded)
    np.testing.assert_allclose(
        sw_features(Atlas(embedded), emb.ids, emb), sw_features(Atlas(embedded), emb.ids), rtol=1e-5
    )
    text = map_quality_markdown(out)
    assert "2-D UMAP" in text and "s(W)" in text and "majority family" in text
    # cached: the written result while the embeddings are the same, recomputed otherwise
    write_map_quality(embedded, {**out, "marker": 1})
    assert read_json(Atlas(embedded).results_dir / "map_quality.json")["marker"] == 1
    assert cached_map_quality(embedded).get("marker") == 1
    copy = tmp_path / "copy"
    shutil.copytree(embedded, copy)
    maps = Atlas(copy).embeddings_dir / "maps.json"
    data = read_json(maps)
    first = data["ids"][0]
    data["umap"][first] = [1e6, 1e6]
    maps.write_text(__import__("json").dumps(data))
    assert embeddings_stamp(Atlas(copy)) != out["stamp"]
    fresh = cached_map_quality(copy)
    assert "marker" not in fresh and fresh["stamp"] == embeddings_stamp(Atlas(copy))


def test_blocks_of_rows_give_the_whole_matrix_figures(monkeypatch):
    import core.embeddings.map_quality as mq

    rng = np.random.default_rng(1)
    n = 23
    x = rng.normal(size=(n, 3))
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    groups = [f"r{i // 2}" for i in range(n)]
    family = [("a", "b", "c")[i % 3] for i in range(n)]
    task = [("x", "y")[(i // 3) % 2] for i in range(n)]
    acc = list(rng.uniform(size=n))
    whole = knn_figures(d, groups, family, task, acc, k=3)
    monkeypatch.setattr(mq, "BLOCK_ROWS", 5)
    assert knn_figures(lambda lo, hi: d[lo:hi], groups, family, task, acc, k=3) == whole


def _figures(f: float | None, t: float | None, r: float | None) -> dict[str, float | None]:
    return {"family_accuracy": f, "task_accuracy": t, "test_accuracy_r2": r}


MQ_RESULT = {
    "k": 5,
    "n_models": 12,
    "n_runs": 6,
    "metric": "cosine",
    "pooling": "mean",
    "spaces": {
        "embedding": _figures(0.75, 0.5, 0.25),
        "umap": _figures(2 / 3, None, -0.125),
        "pca": _figures(1, 0.0, 0.5),
        "s(W)": None,
    },
    "reference": _figures(0.5, None, -0.0625),
}


def test_one_table_renders_results_md_and_the_app():
    """``map_quality_table`` is the table of ``results/map_quality.md`` (defaults) and of the
    Atlas page (its header, blank cells, right-aligned numbers, escaping); a missing figure is
    "n/a" in the one and empty in the other (the reference column says "n/a" in both)."""
    md = (
        "| figure | embedding | 2-D UMAP | 2-D PCA | s(W) | reference |\n"
        "|---|---|---|---|---|---|\n"
        "| family of the neighbours = the model's family (accuracy) "
        "| 0.750 | 0.667 | 1.000 | n/a | majority family 0.500 |\n"
        "| task of the neighbours, within a family (accuracy) "
        "| 0.500 | n/a | 0.000 | n/a | majority task of the family n/a |\n"
        "| test accuracy from the neighbours (kNN R²) "
        "| 0.250 | -0.125 | 0.500 | n/a | mean predictor -0.062 |"
    )
    assert map_quality_table(MQ_RESULT) == md
    assert map_quality_markdown(MQ_RESULT).endswith("no other run has).\n\n" + md + "\n")
    from explorer.views.atlas import map_quality_table as page_table

    assert page_table(MQ_RESULT) == (
        "| figure | embedding | 2-D UMAP | 2-D PCA | s(W) | without the weights |\n"
        "|:---|---:|---:|---:|---:|:---|\n"
        "| family of the neighbours = the model's family \\(accuracy\\) "
        "| 0.750 | 0.667 | 1.000 |  | majority family 0\\.500 |\n"
        "| task of the neighbours, within a family \\(accuracy\\) "
        "| 0.500 |  | 0.000 |  | majority task of the family n/a |\n"
        "| test accuracy from the neighbours \\(kNN R²\\) "
        "| 0.250 | -0.125 | 0.500 |  | mean predictor \\-0\\.062 |"
    )


def test_the_task_ceiling_sits_in_the_reference_cell():
    """A stored result with ``task_ceiling`` shows it beside the majority task; results
    written before it show the majority alone (the test above)."""
    result = {**MQ_RESULT, "reference": {**MQ_RESULT["reference"], "task_accuracy": 0.25,
                                         "task_ceiling": 0.875}}  # fmt: skip
    row = next(r for r in map_quality_rows(result) if r[0].startswith("task"))
    assert row[-1] == "majority task of the family 0.250; ceiling 0.875"


def test_a_perfect_task_code_reaches_the_task_ceiling():
    """Distances that put every same-task model first: the k-NN task figure equals the
    ceiling, and a run whose family and task no other run has is the part it misses."""
    rng = np.random.default_rng(0)
    groups = [f"r{i // 4}" for i in range(40)]  # 10 runs of 4 checkpoints
    family = ["f"] * 40
    task = ["x"] * 16 + ["y"] * 12 + ["z"] * 8 + ["w"] * 4  # w: one run
    t = np.array(task)
    d = rng.random((40, 40)) + 10 * (t[:, None] != t[None, :])
    got = knn_figures(d, groups, family, task, [None] * 40, k=5)
    ref = reference_figures(groups, family, task, [None] * 40)
    assert ref["task_ceiling"] == pytest.approx(36 / 40)
    assert got["task_accuracy"] == pytest.approx(ref["task_ceiling"])


def test_same_task_r2_orders_one_zoo_apart_from_grouping_tasks():
    """Two tasks of one family with different mean accuracies: distances that group the tasks
    but order nothing within them get the global kNN R² from the task means and none within a
    task; distances that follow the accuracy within each task get both."""
    groups = [f"r{i}" for i in range(40)]  # one checkpoint per run
    family = ["f"] * 40
    task = ["x"] * 20 + ["y"] * 20
    acc = [*np.linspace(0.1, 0.2, 20), *np.linspace(0.8, 0.9, 20)]
    t = np.array(task)
    apart = 10.0 * (t[:, None] != t[None, :])
    rng = np.random.default_rng(0)
    shuffled = apart + rng.random((40, 40))  # tasks apart, random within a task
    ordered = apart + _line(acc)  # tasks apart, by accuracy within a task
    loose = knn_figures(shuffled, groups, family, task, acc, k=1)
    tight = knn_figures(ordered, groups, family, task, acc, k=1)
    assert loose["test_accuracy_r2"] > 0.9  # the task means alone explain most of it
    assert tight["test_accuracy_r2_same_task"] > 0.9 > 0.5 > loose["test_accuracy_r2_same_task"]
    assert tight["n_same_task"] == 40
    ref = reference_figures(groups, family, task, acc)
    # the other runs' task mean knows nothing within a task: R² within the task below 0
    assert ref["test_accuracy_r2_same_task"] < 0
    rows = map_quality_rows({"spaces": {"embedding": tight}, "reference": ref})
    assert [r[0] for r in rows][-1].startswith("test accuracy from neighbours of the same family")
