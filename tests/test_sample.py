"""core.generation.sample: the sample stage (prompts, estimates, targets); its CLI: test_generation.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.atlas import Atlas, GeneratedCard
from core.cli import main
from core.generation.estimate import estimate_sample
from core.generation.prompts import resolve_target
from core.generation.sample import sample
from core.models.io import load_model_dir, read_config
from core.models.registry import logits
from core.zoos.tasks import get_task

# --------------------------------------------------------------------------------- draws
# the KDE and Gaussian draws: tests/test_draws.py


# ------------------------------------------------------------------- layouts and loading
# generated state dicts loaded into their target, BN conditioning: tests/test_build.py


# ---------------------------------------------------------------------------- the stage


def test_sample_stage_with_atlas_prompts(cnn_atlas):
    from core.models.io import load_model_dir

    seen = []
    over = {"n": 3, "keep": 2, "seed": 1}
    paths = sample(cnn_atlas, "zoo:cnn", "ci", over, progress=lambda f, m: seen.append(f))
    assert len(paths) == 2 and all(p.parent == Atlas(cnn_atlas).generated_dir for p in paths)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    blocks = [GeneratedCard(p).block() for p in paths]
    for p, b in zip(paths, blocks):
        lm = load_model_dir(p)
        assert lm.family == "cnn"
        assert b["prompt_source"] == "atlas" and b["seed"] == 1 and b["backbone"]
        assert b["mode"] == "independent"  # auto with atlas prompts
        assert all(pid.startswith("weightatlas-zoo/cnn-digits10-") for pid in b["prompts"])
        assert 0.0 <= b["val_accuracy"] <= 1.0 and len(b["draw_val_accuracies"]) == 3
    # kept best first, and they are the best of the draws
    assert blocks[0]["val_accuracy"] >= blocks[1]["val_accuracy"]
    assert blocks[0]["val_accuracy"] == max(blocks[0]["draw_val_accuracies"])
    # prompts ranked by validation accuracy
    manifest = {r["id"]: r for r in Atlas(cnn_atlas).manifest()}
    vals = [manifest[p]["labels"]["val_accuracy"] for p in blocks[0]["prompts"]]
    assert vals == sorted(vals, reverse=True)


def test_bootstrap_gaussian_joint_rounds(cnn_atlas, tmp_path):
    over = dict(n=3, keep=1, mode="joint", prior="gaussian", bootstrap_rounds=1, seed=4)
    paths = sample(cnn_atlas, "zoo:cnn", "ci", over, out_dir=tmp_path)
    (p,) = paths
    block = GeneratedCard(p).block()
    assert (
        block["mode"] == "joint" and block["prior"] == "gaussian" and block["bootstrap_rounds"] == 1
    )
    draws = block["draw_val_accuracies"]
    assert len(draws) == 6  # two rounds of three draws
    assert block["val_accuracy"] == max(draws)  # best over all rounds is kept
    with pytest.raises(Exception, match="keep"):
        sample(cnn_atlas, "zoo:cnn", "ci", {"n": 2, "keep": 3}, out_dir=tmp_path)


# --------------------------------------------------------------------- estimate (issue 17)


def test_estimate_counts_the_backbone_passes_sample_makes(cnn_atlas, tmp_path, monkeypatch):
    """The estimate's encode/decode passes are the ones ``sample`` then runs, for atlas and
    fresh prompts; its text says whether the atlas holds the architecture."""
    import core.embeddings.encode
    import core.generation.build

    calls = {"encode": 0, "decode": 0}
    real = core.embeddings.encode.haloed_apply

    def counting(fn, x, *args, **kwargs):
        calls[fn.__name__] += 1 if x.dim() == 2 else x.shape[0]  # sequences through fn
        return real(fn, x, *args, **kwargs)

    monkeypatch.setattr(core.embeddings.encode, "haloed_apply", counting)
    monkeypatch.setattr(core.generation.build, "haloed_apply", counting)
    for arch, task, source in (("zoo:cnn", None, "atlas"), ("zoo:cnn", "digits-invert", "fresh")):
        over = {"n_prompts": 1, "prompt_epochs": 1, "n": 3, "keep": 2}
        est = estimate_sample(cnn_atlas, arch, task, preset="ci", overrides=over)
        assert est["prompt_source"] == source
        assert est["architecture_in_atlas"] is (source == "atlas")
        assert ("does not hold" in est["text"]) is (source == "fresh")
        assert est["seconds"]["total"] > 0 and est["n_tokens"] > 0
        calls.update(encode=0, decode=0)
        sample(cnn_atlas, arch, "ci", {**over, "task": task}, out_dir=tmp_path / source)
        p = est["passes"]  # this atlas has no embeddings: nothing is placed
        assert calls == {"encode": p["encode"] + p["place"], "decode": p["decode"]}, (calls, p)


def test_generated_timm_model_records_the_input_size_it_was_conditioned_at(cnn_atlas, tmp_path):
    """A generated mobilenetv3 is conditioned on 8x8 digits and its config says so (issue 17:
    fed 224 px images, such a model gives logits with std ~1e14); at that size it runs."""
    (path,) = sample(
        cnn_atlas, "timm:mobilenetv3_small_075", "ci",
        {"task": "digits10", "n": 1, "keep": 1, "n_prompts": 1, "prompt_epochs": 0},
        out_dir=tmp_path,
    )  # fmt: skip
    cfg = read_config(path)
    assert cfg["pretrained_cfg"]["input_size"] == [1, 8, 8]
    assert "at input size 1x8x8" in GeneratedCard(path).text()
    model = load_model_dir(path).model.eval()
    X, _ = get_task("digits10").split("test")
    with torch.no_grad():
        out = logits(model, X[:64].reshape(-1, *cfg["pretrained_cfg"]["input_size"]))
    assert out.shape == (64, 10) and torch.isfinite(out).all()


def test_a_run_computes_the_target_position_code_once(cnn_atlas, tmp_path, monkeypatch):
    """Every encode and decode pass of one ``sample`` shares the target's position code."""
    import core.generation.prompts

    calls = []
    real = core.generation.prompts.position_code

    def counting(backbone, positions, *args, **kwargs):
        calls.append(len(positions))
        return real(backbone, positions, *args, **kwargs)

    monkeypatch.setattr(core.generation.prompts, "position_code", counting)
    over = {"n_prompts": 1, "prompt_epochs": 1, "n": 3, "keep": 1, "task": "digits-invert"}
    sample(cnn_atlas, "zoo:cnn", "ci", over, out_dir=tmp_path)
    assert len(calls) == 1


def test_own_transformers_models_get_the_tasks_they_take_with_adapted_inputs(tmp_path):
    """Issue 27: a ViT classifier built for 3-channel 32 px images runs on the 1-channel 8x8
    digits (grey copied to RGB, resized), not on a sequence task; a model without a head takes
    no task and is generated unscored (``task="none"``), even where its card names one; an HF
    cache folder is named by its repo id."""
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    from core.collection.specs import spec_label
    from core.generation.prompts import (
        NO_TASK,
        TargetError,
        input_adaptation,
        runnable,
        task_fits,
    )

    cfg = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg.update(image_size=32, patch_size=8, num_channels=3)
    snap = tmp_path / "models--me--vit" / "snapshots" / ("a" * 40)
    ViTForImageClassification(ViTConfig(**cfg, num_labels=10)).save_pretrained(snap)
    ViTModel(ViTConfig(**cfg)).save_pretrained(tmp_path / "features")
    (tmp_path / "features" / "README.md").write_text("---\nweightatlas:\n  task: digits10\n---\n")
    assert spec_label(f"hf:{snap}") == "hf:me/vit"

    fits = task_fits(f"hf:{snap}", "dense", 64, ["digits10", "digits16", "seq-brackets", "wine"])
    assert fits["digits10"] is None and fits["digits16"] is None
    assert fits["seq-brackets"] and fits["wine"] and "--task" not in fits["wine"]
    target = resolve_target(f"hf:{snap}", "dense", 64, task="digits10")
    model = target.arch.build(0)
    assert input_adaptation(model, target) == "grey copied to RGB, 8x8 resized to 32x32 px"
    x, _ = get_task("digits10").split("test")
    assert logits(runnable(model, target), x[:3]).shape == (3, 10)

    heads = task_fits(f"hf:{tmp_path / 'features'}", "dense", 64, ["digits10"])
    assert "no classification head (ViTModel" in str(heads["digits10"])
    unscored = resolve_target(f"hf:{tmp_path / 'features'}", "dense", 64, task=NO_TASK)
    assert unscored.task is None and "no task chosen" in str(unscored.note)
    with pytest.raises(TargetError, match="built for a task"):
        resolve_target("zoo:mlp", "dense", 64, task=NO_TASK)


DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"


@pytest.mark.skipif(not (DEMO / "tokens" / "index.json").exists(), reason="no demo atlas")
def test_estimate_of_the_default_generation_is_within_2x_of_its_time(tmp_path, capfd):
    """Issue 27: the default generation (the demo's most common family, zoo:mlp on wine) was
    estimated at "< 1 s" and took 14 s: the timing probes themselves, the first AdamW (torch's
    compiler stack) and the data were not counted. Now the estimate printed before the run is
    within 2x of the run's measured time."""
    import re

    assert main(["sample", str(DEMO), "--arch", "zoo:mlp", "--out", str(tmp_path / "g")]) == 0
    err = capfd.readouterr().err.replace("\r", "\n")
    line = next(x for x in err.splitlines() if x.startswith("time: "))
    took = float(re.match(r"time: ([\d.]+) s", line).group(1))
    expected = float(re.search(r"estimated (\d+) s before the run", line).group(1))
    assert expected / 2 <= took <= 2 * max(expected, 1.0), line


@pytest.mark.skipif(not (DEMO / "tokens" / "index.json").exists(), reason="no demo atlas")
def test_a_run_reports_the_estimate_its_caller_showed(tmp_path, capfd):
    """Issue 27: one estimate on the Generate page and in its job (it was 44 s on the page and
    392 s in the running job): the job gets the page's estimate (--estimate-file) and reports
    and records it instead of timing the machine again."""
    est = estimate_sample(DEMO, "zoo:mlp", startup_seconds={"import": 7.0, "process": 1.0})
    assert est["seconds"]["startup"] == 8.0 and "start-up" in est["text"]
    path = tmp_path / "est.json"
    path.write_text(json.dumps({k: v for k, v in est.items() if k != "rates"}))
    out = tmp_path / "g"
    args = ["sample", str(DEMO), "--arch", "zoo:mlp", "--out", str(out), "--estimate-file"]
    assert main([*args, str(path)]) == 0
    err = capfd.readouterr().err.replace("\r", "\n")
    assert f"estimate: {est['text']}" in err
    assert f"estimated {est['seconds']['total']:.0f} s before the run" in err
    card = GeneratedCard(next(p for p in out.iterdir() if p.is_dir())).text()
    assert f"total: {est['seconds']['total']}" in card
    path.write_text("{}")
    assert main([*args, str(path)]) == 2
    assert "is not an estimate" in capfd.readouterr().err


def test_task_fits_probes_each_task_on_a_fresh_copy(tmp_path):
    """A transformers Swin shrinks its window for a smaller input and keeps it: probed on
    digits10 (8 px) first, the same instance then failed its own digits16; every task (and
    every probed side) now gets its own copy."""
    from core.generation.prompts import task_fits
    from core.models.families import FAMILIES
    from core.models.io import save_model_dir
    from core.models.registry import empty_model

    cfg = FAMILIES["swin"].config(get_task("digits16").info, 8, 1)
    model, _ = empty_model(cfg)
    save_model_dir(model, tmp_path / "swin", "transformers", card=None, config=cfg)
    fits = task_fits(f"hf:{tmp_path / 'swin'}", "dense", 64, ["digits10", "digits16"])
    assert fits["digits16"] is None, fits["digits16"]
