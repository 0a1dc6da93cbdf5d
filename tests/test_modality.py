"""core.experiments.modality (paper 001, issue 17): images-only vs both-modality backbones.

A tiny atlas with an image family and a sequence family; the experiment holds out whole
sequence runs, trains one backbone without any sequence model and one with the others, and
measures both on the held-out sequence models (reconstruction, generation, fine-tuning).
"""

from __future__ import annotations

import math

import pytest
from conftest import AtlasSpec

from core.atlas import Atlas, read_json
from core.experiments.modality import ARMS, modality_of, run_modality


@pytest.fixture(scope="module")
def two_modality_atlas(atlas_factory):
    return atlas_factory(AtlasSpec(("cnn", "gpt2"), ("digits10:2", "seq-brackets:3")))


def _run(model_id: str) -> str:
    return model_id.rsplit("-e", 1)[0]  # weightatlas-zoo/gpt2-seq-brackets-r1-e2 -> ...-r1


def test_modality_experiment_holds_out_whole_runs_and_measures_both_arms(two_modality_atlas):
    a = Atlas(two_modality_atlas)
    res = run_modality(
        a.root,
        "ci",
        overrides={"steps": 10, "sample_n": 2, "sample_keep": 1, "prompts": 1, "control_runs": 1},
    )
    rows = {r["id"]: r for r in a.accepted()}
    held = set(res["heldout_sequence"])
    seq = {i for i, r in rows.items() if modality_of(r) == "sequence"}
    assert held and held < seq  # some, not all, sequence models are held out
    held_runs = {_run(i) for i in held}
    assert {i for i in seq if _run(i) in held_runs} == held  # whole runs: every checkpoint
    assert set(res["prompts"]) <= held  # prompts come from the held-out models
    for name in ARMS:
        sib = Atlas(a.root / "ablations" / f"modality-{name}")
        train = {r["id"] for r in sib.manifest() if r["split"] == "train"}
        assert not train & (held | set(res["heldout_control"]))
        train_seq = train & seq
        assert train_seq == (set() if name == "images-only" else seq - held)
        arm = res["arms"][name]
        assert arm["sequence_models"] == len(train_seq)
        rec = arm["heldout_sequence"]
        assert rec["models"] == len(held) and math.isfinite(rec["r2_weights"])
        gen = arm["generation"]
        assert len(gen["test_accuracies"]) == 1 and gen["chance_accuracy"] == pytest.approx(
            0.5, abs=0.01
        )
        assert (
            len(gen["finetuned_test_accuracies"])
            == len(gen["random_finetuned_test_accuracies"])
            == 1
        )
    # both arms were trained with the same budget and seed
    cfgs = [read_json(res["arms"][n]["backbone"] + "/config.json") for n in ARMS]
    assert cfgs[0]["train"] == cfgs[1]["train"]
    saved = read_json(a.results_dir / "experiment_modality.json")
    assert saved["heldout_sequence"] == res["heldout_sequence"]
    md = (a.results_dir / "experiment_modality.md").read_text()
    assert "images-only" in md and "| both |" in md and "chance" in md
