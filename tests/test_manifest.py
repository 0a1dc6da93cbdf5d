"""core.manifest: one reader of a model's accuracy for the map, the report and the prompt choice."""

from __future__ import annotations

import math

import pytest
from conftest import AtlasSpec

from core.atlas import Atlas, append_jsonl
from core.catalog import model_meta
from core.experiments.report import model_accuracy
from core.generation.prompts import atlas_prompts, metric_of, resolve_target
from core.manifest import ModelRow, latest_rows
from core.tokens.store import TokenStore


def test_accuracy_reads_labels_before_metrics_and_skips_non_numbers():
    row = ModelRow(
        id="m",
        labels={"test_accuracy": 0.7, "task": "digits10"},
        metrics={"accuracy": 0.9, "test_accuracy": 0.8},
    )
    assert row.accuracy == 0.7
    assert ModelRow(id="m", labels={"test_accuracy": True}, metrics={"top1": 0.5}).accuracy == 0.5
    assert ModelRow(id="m", metrics={"eval_accuracy": float("nan")}).accuracy is None
    assert ModelRow(id="m", labels=None, metrics="bad").accuracy is None
    # selection (prompt ranking) prefers validation accuracy, else falls back to test accuracy
    assert (
        ModelRow(id="m", labels={"val_accuracy": 0.6, "test_accuracy": 0.7}).selection_accuracy
        == 0.6
    )
    assert row.selection_accuracy == 0.7
    assert row.task == "digits10" and row.id == "m"


def test_latest_rows_keeps_the_last_row_per_id_in_first_seen_order():
    rows = latest_rows([{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "a", "v": 3}])
    assert [(r.id, r["v"]) for r in rows] == [("a", 3), ("b", 2)]
    assert all(isinstance(r, ModelRow) for r in rows)


@pytest.fixture(scope="module")
def atlas(atlas_factory):
    """Two cnn runs on digits10 (collected and tokenized), whose manifest rows are rewritten so
    that the label block and the card metrics disagree, in opposite orders."""
    root = atlas_factory(AtlasSpec(("cnn",), ("digits10:2",)))
    a = Atlas(root)
    rows = a.accepted()
    rewritten = []
    for i, row in enumerate(sorted(rows, key=lambda r: r.id)):
        labels = {k: v for k, v in row.labels.items() if k != "val_accuracy"}
        labels["test_accuracy"] = 0.5 + 0.1 * i  # increasing by id
        rewritten.append({**row, "labels": labels, "metrics": {"accuracy": 0.95 - 0.1 * i}})
    append_jsonl(a.manifest_path, rewritten)
    return root


def test_map_report_and_prompt_choice_read_the_same_accuracy(atlas):
    a = Atlas.open(atlas)
    rows = a.accepted()
    assert len(rows) >= 2 and all(r.labels and r.metrics for r in rows)
    for row in rows:
        assert row.labels["test_accuracy"] != row.metrics["accuracy"]
        assert model_meta(row)["accuracy"] == model_accuracy(row) == row.accuracy
        assert metric_of(row) == row.accuracy == row.labels["test_accuracy"]

    store = TokenStore(a.tokens_dir)
    labels = rows[0].labels
    target = resolve_target(
        "zoo:cnn",
        store.scheme,
        store.token_size,
        "digits10",
        labels.get("width"),
        labels.get("depth"),
    )
    chosen = atlas_prompts(a, target, limit=len(rows))
    by_accuracy = [r.id for r in sorted(rows, key=lambda r: (-r.accuracy, r.id))]
    assert chosen == by_accuracy  # ranked by the labels' accuracy, not the metrics' (reversed)
    assert not math.isnan(model_meta(rows[0])["accuracy"])
