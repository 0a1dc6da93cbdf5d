"""Architecture registry: every zoo family round-trips through the real loaders exactly."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import timm
import torch
import transformers

from core.collection.specs import ArchTarget, resolve_arch
from core.errors import RejectedModel, WeightAtlasError
from core.models.families import FAMILIES, build_family
from core.models.io import load_model_dir
from core.models.native import NATIVE_MODELS
from core.models.registry import empty_model, family_of, logits, trainable_names
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


def test_trainable_names_separate_buffers_from_parameters():
    model = build_family("resnet", get_task("digits10").info, 8, 1, seed=0)
    names = trainable_names(model)
    sd = model.state_dict()
    buffers = set(sd) - names
    assert names == {n for n, _ in model.named_parameters()}
    assert any(n.endswith("running_mean") for n in buffers)
    assert any(n.endswith("num_batches_tracked") for n in buffers)
    assert all(sd[n].dtype == torch.float32 for n in names)
    mlp = build_family("mlp", get_task("wine").info, 16, 1, seed=0)
    assert trainable_names(mlp) == set(mlp.state_dict())


def test_tied_text_model_loads_via_load_model_dir(tmp_path):
    """A tiny BERT with tied embeddings: stored once, loaded strictly, through hf:<dir>."""
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        architectures=["BertForMaskedLM"],
    ).to_dict()
    model, library = empty_model(cfg)
    assert library == "transformers" and type(model).__name__ == "BertForMaskedLM"
    target = ArchTarget("hf:bert", "transformers", family_of(cfg), cfg)
    out = target.save(model, tmp_path / "bert")
    loaded = load_model_dir(out)
    assert loaded.model_type == "bert" and loaded.family == "bert"
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])
    ids = torch.randint(0, 50, (2, 7))
    assert logits(loaded.model, ids).shape == (2, 7, 50)
    again = resolve_arch(f"hf:{out}")
    assert again.library == "transformers" and again.task is None
    assert {n for n, _ in again.build(0).named_parameters()} <= trainable_names(again.build(0))


def _write(tmp_path, config, weights=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    if weights is not None:
        safetensors.torch.save_file(weights, tmp_path / "model.safetensors")
    return tmp_path


def test_rejections_have_reasons(tmp_path):
    good = resolve_arch("mlp").config
    cases = {
        "remote code": ({**good, "auto_map": {"AutoModel": "x.Y"}}, None),
        "unknown model_type": ({"model_type": "no-such-model"}, None),
        "unknown config": ({"hello": 1}, None),
        "unknown architecture": ({"architecture": "no_such_timm_model"}, None),
    }
    for reason, (config, weights) in cases.items():
        with pytest.raises(RejectedModel) as e:
            load_model_dir(_write(tmp_path / reason.replace(" ", "_"), config, weights))
        assert e.value.reason == reason
    # timm configs may not point timm at files
    bad_timm = {"architecture": "resnet18", "model_args": {"checkpoint_path": "/etc/passwd"}}
    with pytest.raises(RejectedModel, match="checkpoint_path"):
        empty_model(bad_timm)
    # pickled weights only: never loaded
    d = _write(tmp_path / "pickle", good)
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(RejectedModel) as e:
        load_model_dir(d)
    assert e.value.reason == "no safetensors"
    # wrong shapes / names
    model, _ = empty_model(good)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["head.weight"] = torch.zeros(2, 2)
    with pytest.raises(RejectedModel) as e:
        load_model_dir(_write(tmp_path / "shape", good, sd))
    assert e.value.reason == "weights do not match config" and "shape" in str(e.value)
    sd = dict(model.state_dict())
    del sd["head.bias"]
    with pytest.raises(RejectedModel, match="missing"):
        load_model_dir(_write(tmp_path / "missing", good, sd))
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{not json")
    with pytest.raises(RejectedModel) as e:
        load_model_dir(tmp_path / "badjson")
    assert e.value.reason == "bad config"
    with pytest.raises(RejectedModel) as e:
        load_model_dir(tmp_path / "nothing-here")
    assert e.value.reason == "no config"


@pytest.mark.parametrize(
    "config,family",
    [
        ({"architecture": "resnet50d"}, "resnet"),
        ({"architecture": "vit_tiny_patch16_224"}, "vit"),
        ({"architecture": "convnextv2_atto"}, "convnext"),
        ({"architecture": "mobilenetv3_small_100"}, "mobilenet"),
        ({"architecture": "tf_efficientnet_b0"}, "efficientnet"),
        ({"model_type": "deit"}, "vit"),
        ({"model_type": "swinv2"}, "swin"),
        ({"model_type": "mobilenet_v2"}, "mobilenet"),
        ({"model_type": "resnet"}, "resnet"),
        ({"library_name": "weightatlas", "architecture": "cnn"}, "cnn"),
    ],
)
def test_family_of(config, family):
    assert family_of(config) == family


def test_resolve_arch_specs():
    t = resolve_arch("zoo:vit")
    assert t.task == "digits10" and t.library == "transformers" and t.family == "vit"
    assert resolve_arch("vit").config == t.config
    assert resolve_arch("mlp").task == "wine"
    t = resolve_arch("timm:resnet18", task="digits10")
    m = t.build(0)
    assert logits(m, torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert t.family == "resnet" and t.library == "timm"
    with pytest.raises(WeightAtlasError):
        resolve_arch("zoo:nonexistent")
    with pytest.raises(WeightAtlasError):
        resolve_arch("gh:foo")
    with pytest.raises(WeightAtlasError):
        resolve_arch("hf:not-an-org/not-a-model", cache_dir="/nonexistent")
    with pytest.raises(WeightAtlasError, match="cannot train"):
        resolve_arch("zoo:resnet", task="wine")
    assert set(NATIVE_MODELS) == {"mlp", "cnn"}


def test_half_precision_checkpoint_stays_exact(tmp_path):
    target = resolve_arch("zoo:convnext")
    model = target.build(seed=0).to(torch.bfloat16)
    out = target.save(model, tmp_path / "bf16")
    stored = safetensors.torch.load_file(out / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    loaded = load_model_dir(out)
    for k, v in stored.items():
        got = loaded.model.state_dict()[k]
        assert got.dtype == torch.bfloat16 and torch.equal(v, got), k
    x, _ = get_task("digits10").split("test")
    assert logits(loaded.model.float(), x[:4]).shape == (4, 10)


def test_legacy_transformers_checkpoint_loads_and_partial_one_is_rejected(tmp_path):
    """Hub-style BERT file: LayerNorm.gamma/beta names and unused pre-training heads."""
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        architectures=["BertForMaskedLM"],
    )
    torch.manual_seed(0)
    src = transformers.BertForPreTraining(cfg)  # has pooler + NSP head the MLM class lacks
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v.clone()
        for k, v in src.state_dict().items()
        if k != "cls.predictions.decoder.weight"  # tied to the word embeddings
    }
    d = _write(tmp_path / "legacy", cfg.to_dict(), legacy)
    loaded = load_model_dir(d)
    assert type(loaded.model).__name__ == "BertForMaskedLM"
    got = loaded.model.state_dict()
    assert torch.equal(
        got["bert.embeddings.LayerNorm.weight"],
        src.state_dict()["bert.embeddings.LayerNorm.weight"],
    )
    assert torch.equal(
        got["cls.predictions.decoder.weight"],
        src.state_dict()["bert.embeddings.word_embeddings.weight"],
    )
    del legacy["bert.encoder.layer.0.output.dense.weight"]
    with pytest.raises(RejectedModel) as e:
        load_model_dir(_write(tmp_path / "partial", cfg.to_dict(), legacy))
    assert e.value.reason == "weights do not match config" and "missing" in str(e.value)


def test_sharded_weights_behind_cache_symlinks(tmp_path):
    """model.safetensors.index.json + shards, as symlinks into blobs/ like an HF cache snapshot."""
    target = resolve_arch("zoo:resnet")
    model = target.build(seed=3)
    sd = model.state_dict()
    keys = sorted(sd)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for i, (name, names) in enumerate(shards.items()):
        safetensors.torch.save_file({k: sd[k].contiguous() for k in names}, blobs / f"b{i}")
        (snap / name).symlink_to(f"../../blobs/b{i}")
    index = {
        "metadata": {},
        "weight_map": {k: name for name, names in shards.items() for k in names},
    }
    (snap / "model.safetensors.index.json").write_text(json.dumps(index))
    (snap / "config.json").write_text(json.dumps(target.config))
    loaded = load_model_dir(snap)
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in sd.items())
    index["weight_map"][keys[0]] = "../outside.safetensors"
    (snap / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(RejectedModel) as e:
        load_model_dir(snap)
    assert e.value.reason == "bad weights"
