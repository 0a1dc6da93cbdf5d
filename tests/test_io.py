"""core.models.io: model folders loaded through the real loaders, and the reasons for rejecting one."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
import transformers

from core.collection.specs import ArchTarget, resolve_arch
from core.errors import RejectedModel
from core.models.io import load_model_dir
from core.models.registry import empty_model, family_of, logits, trainable_names
from core.zoos.tasks import get_task


def _tiny_bert_config() -> transformers.BertConfig:
    """A one-layer BERT of width 16 with an MLM head (vocabulary 50)."""
    return transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        architectures=["BertForMaskedLM"],
    )


def test_tied_text_model_loads_via_load_model_dir(tmp_path):
    """A tiny BERT with tied embeddings: stored once, loaded strictly, through hf:<dir>."""
    cfg = _tiny_bert_config().to_dict()
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
    cfg = _tiny_bert_config()
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
