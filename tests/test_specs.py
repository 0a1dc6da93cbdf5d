"""core.collection.specs: the one parser of model specs, and the callers that go through it."""

from __future__ import annotations

import pytest
import torch

from core.collection.specs import ModelSpec, parse_model_spec, resolve_arch
from core.embeddings.table import _model_path
from core.errors import WeightAtlasError
from core.generation.prompts import default_task
from core.models.native import NATIVE_MODELS
from core.models.registry import logits


def test_prefixed_specs_are_taken_as_written():
    assert parse_model_spec("zoo:cnn") == ModelSpec("zoo", "cnn")
    assert parse_model_spec("timm:resnet18") == ModelSpec("timm", "resnet18")
    assert parse_model_spec("hf:org/name") == ModelSpec("hf", "org/name")
    assert str(parse_model_spec(" hf:./x ")) == "hf:./x"


def test_bare_specs_are_a_folder_then_a_family_then_a_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    assert parse_model_spec("my-model") == ModelSpec("hf", "my-model")
    assert parse_model_spec("mlp") == ModelSpec("zoo", "mlp")
    assert parse_model_spec("org/name") == ModelSpec("hf", "org/name")
    assert parse_model_spec("gpt2") == ModelSpec("zoo", "gpt2")  # an architecture: the family
    assert parse_model_spec("gpt2", want="weights") == ModelSpec("hf", "gpt2")  # the Hub's
    assert parse_model_spec("cnn", want="weights") == ModelSpec("hf", "cnn")


@pytest.mark.parametrize("bad", ["", "  ", "gh:foo", "zoo:", "hf: "])
def test_bad_specs_are_refused_in_one_line(bad):
    with pytest.raises(WeightAtlasError) as e:
        parse_model_spec(bad)
    assert "\n" not in str(e.value)


def test_a_bare_name_that_is_a_folder_and_a_family_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cnn").mkdir()
    for call in (parse_model_spec, resolve_arch):
        with pytest.raises(WeightAtlasError, match="both a folder here and a zoo family") as e:
            call("cnn")
        assert "hf:./cnn" in str(e.value) and "zoo:cnn" in str(e.value)
    assert parse_model_spec("zoo:cnn").kind == "zoo"  # the prefix settles it
    assert resolve_arch("zoo:cnn").family == "cnn"


def test_callers_read_specs_through_the_parser(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_task("mlp") == default_task("zoo:mlp") == "wine"
    assert default_task("timm:resnet18") == "digits10"
    # embed --model takes weights: an architecture spec is refused in one line
    with pytest.raises(WeightAtlasError, match="not a model with weights"):
        _model_path("zoo:cnn", tmp_path)
    (tmp_path / "folder").mkdir()
    assert _model_path("folder", tmp_path).resolve() == (tmp_path / "folder").resolve()
    assert _model_path("hf:folder", tmp_path).resolve() == (tmp_path / "folder").resolve()


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
