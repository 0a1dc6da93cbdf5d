"""core.collection.facts: run keys and the deterministic train/val/test split."""

from __future__ import annotations

from core.collection.config import SPLITS
from core.collection.facts import run_key, split_of


def test_split_is_deterministic_and_keeps_runs_together():
    labels = [{"family": "vit", "task": "digits10", "run": 3, "epoch": e} for e in (1, 3, 8)]
    keys = {run_key("weightatlas-zoo/x", lab) for lab in labels}
    assert keys == {"vit-digits10-r3"}
    splits = [split_of(f"org/model-{i}") for i in range(2000)]
    assert splits == [split_of(f"org/model-{i}") for i in range(2000)]
    share = {s: splits.count(s) / len(splits) for s in SPLITS}
    assert (
        abs(share["train"] - 0.7) < 0.04
        and abs(share["val"] - 0.15) < 0.03
        and abs(share["test"] - 0.15) < 0.03
    )
