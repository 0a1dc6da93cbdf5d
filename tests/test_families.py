"""core.models.families: every zoo family round-trips through the real loaders exactly."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import timm
import torch
import transformers

from core.collection.specs import resolve_arch
from core.models.families import FAMILIES, build_family
from core.models.io import load_model_dir
from core.models.registry import logits
from core.zoos.tasks import get_task


def _tasks_for(fam_name):
    fam = FAMILIES[fam_name]
    out = [fam.default_task]
    if "image" in fam.kinds:
        out.append("digits16")  # the 16x16 size too
    return out


def test_at_least_six_families_over_three_libraries():
    assert len(FAMILIES) >= 6
    assert {f.library for f in FAMILIES.values()} == {"transformers", "timm", "weightatlas"}


@pytest.mark.parametrize("fam_name", list(FAMILIES))
def test_family_roundtrip_exact_through_load_model_dir(fam_name, tmp_path):
    fam = FAMILIES[fam_name]
    for task_name in _tasks_for(fam_name):
        info = get_task(task_name).info
        target = resolve_arch(f"zoo:{fam_name}", task=task_name)
        model = target.build(seed=1)
        with torch.no_grad():  # move off the init so the check is not trivially satisfied
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        out = target.save(model, tmp_path / task_name)
        assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
        loaded = load_model_dir(out)
        assert loaded.library == fam.library
        ref, got = model.state_dict(), loaded.model.state_dict()
        assert ref.keys() == got.keys()
        for k in ref:
            assert torch.equal(ref[k], got[k]), k
        x, _ = get_task(task_name).split("test")
        assert torch.equal(logits(model.eval(), x[:8]), logits(loaded.model, x[:8]))
        assert logits(loaded.model, x[:8]).shape == (8, info.num_classes)


@pytest.mark.parametrize("fam_name", [n for n, f in FAMILIES.items() if f.library != "weightatlas"])
def test_family_loads_with_the_library_itself(fam_name, tmp_path):
    """transformers' from_pretrained / timm.create_model + safetensors read what we write."""
    target = resolve_arch(fam_name)
    model = target.build(seed=2)
    out = target.save(model, tmp_path / "m")
    if target.library == "transformers":
        auto = (
            transformers.AutoModelForSequenceClassification
            if "sequence" in FAMILIES[fam_name].kinds
            else transformers.AutoModelForImageClassification
        )
        theirs = auto.from_pretrained(out, local_files_only=True)
    else:
        cfg = json.loads((out / "config.json").read_text())
        theirs = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"])
        theirs.load_state_dict(safetensors.torch.load_file(out / "model.safetensors"), strict=True)
        # timm's own Hub-config parser accepts the export and keeps our input size
        from timm.models._hub import load_model_config_from_path

        pretrained_cfg, name, args = load_model_config_from_path(out)
        assert name == cfg["architecture"] and pretrained_cfg["input_size"][0] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, theirs.state_dict()[k]), k


@pytest.mark.parametrize("fam_name", list(FAMILIES))
def test_width_and_depth_change_the_model(fam_name):
    fam = FAMILIES[fam_name]
    info = get_task(fam.default_task).info

    def n_params(w, d):
        return sum(p.numel() for p in build_family(fam_name, info, w, d, seed=0).parameters())

    w0, w1, d0, d1 = fam.widths[0], fam.widths[-1], fam.depths[0], fam.depths[-1]
    assert n_params(w1, d0) > n_params(w0, d0)
    assert n_params(w0, d1) > n_params(w0, d0)
    # the init is seeded
    a = build_family(fam_name, info, w0, d0, seed=5).state_dict()
    b = build_family(fam_name, info, w0, d0, seed=5).state_dict()
    c = build_family(fam_name, info, w0, d0, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
