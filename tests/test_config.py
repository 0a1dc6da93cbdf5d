"""Typed configs: presets, file and override merging, loud failures on unknown keys."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

from core.atlas import Atlas, BackboneFiles, append_jsonl, read_json
from core.backbone.config import (
    TrainRunConfig,
    build_train_config,
    validate_train_config,
)
from core.backbone.train import train
from core.bench import write_store
from core.cli import build_parser, config_overrides
from core.config import (
    COMPONENTS,
    ConfigError,
    build,
    build_config,
    file_and_overrides,
    flatten,
    parse_overrides,
    presets_of,
    to_dict,
)
from core.config import (
    PRESETS as REGISTRY,
)
from core.experiments.pipeline import check_config, pipeline


@dataclass
class Toy:
    width: int = 8
    lr: float = 1e-3
    norm: Literal["masked", "token", "none"] = "masked"
    tasks: tuple[str, ...] = ("digits10",)
    halo: int | None = None
    amp: bool = False


PRESETS = {"small": {"width": 4}, "big": {"width": 64, "lr": 3e-4}}


def test_defaults_preset_file_overrides_in_order(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"width": 16, "norm": "token"}))
    cfg = build_config(Toy, PRESETS, "big", file=f, overrides={"lr": "0.5", "amp": "true"})
    assert cfg == Toy(width=16, lr=0.5, norm="token", amp=True)


def test_cli_strings_are_coerced_to_field_types():
    cfg = build_config(
        Toy, PRESETS, None, overrides=parse_overrides(["tasks=a,b", "halo=none", "width=1e2"])
    )
    assert cfg.tasks == ("a", "b") and cfg.halo is None and cfg.width == 100
    assert to_dict(cfg)["tasks"] == ["a", "b"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"widht": 3}, "unknown Toy key"),
        ({"norm": "batch"}, "not one of"),
        ({"width": "wide"}, "expected an integer"),
        ({"amp": "maybe"}, "expected true/false"),
    ],
)
def test_bad_keys_and_values_fail_loudly(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(Toy, PRESETS, "small", overrides=overrides)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="small, big"):
        build_config(Toy, PRESETS, "huge")


def test_override_syntax_is_checked():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["width"])


# --------------------------------------------------------------------------- the preset registry

ALL_PRESETS = [(c, p) for c in COMPONENTS for p in presets_of(c)[1]]


@pytest.mark.parametrize(
    ("component", "preset"), ALL_PRESETS, ids=[f"{c}:{p}" for c, p in ALL_PRESETS]
)
def test_every_preset_of_every_table_builds(component, preset):
    cls, table = presets_of(component)
    cfg = build(component, preset)
    assert isinstance(cfg, cls)
    got_all = flatten(to_dict(cfg))  # nested configs (the train tree) as dotted keys
    for key, value in flatten(table[preset]).items():  # each preset field arrives, coerced
        got = got_all[key]
        assert got == value or (isinstance(got, list) and got == list(value)), key


def test_every_table_is_registered_and_has_the_shared_names():
    assert set(REGISTRY) == set(COMPONENTS)
    for component in COMPONENTS:
        names = set(presets_of(component)[1])
        assert {"ci", "demo"} <= names, (component, sorted(names))


def test_every_pipeline_preset_names_existing_sub_presets():
    for name in presets_of("pipeline")[1]:
        check_config(build("pipeline", name))


def test_pipeline_rejects_a_missing_sub_preset_before_any_stage(tmp_path):
    with pytest.raises(ConfigError, match="backbone_preset: unknown TrainRunConfig preset 'nope'"):
        pipeline("ci", tmp_path / "run", overrides={"backbone_preset": "nope"})
    with pytest.raises(ConfigError, match="heldout_task: unknown task 'no-such-task'"):
        pipeline("ci", tmp_path / "run", overrides={"heldout_task": "no-such-task"})
    assert not (tmp_path / "run" / "notebooks").exists()


def test_config_file_then_set_on_the_command_line(tmp_path):
    f = tmp_path / "zoo.yaml"
    f.write_text("epochs: 3\nseed: 5\n")
    args = build_parser().parse_args(
        ["zoo", "--out", "x", "--preset", "ci", "--config", str(f), "--set", "epochs=7"]
    )
    cfg = build("zoo", args.preset, overrides=config_overrides(args))
    assert (cfg.epochs, cfg.seed) == (7, 5)


# --------------------------------------------------------------------------- the config tree


@dataclass
class Inner:
    depth: int = 2
    rate: float = 0.1


@dataclass
class Tree:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    other: Toy = field(default_factory=Toy)


def test_dotted_override_reaches_the_nested_field():
    cfg = build_config(Tree, {}, None, overrides=parse_overrides(["inner.depth=5", "name=y"]))
    assert (cfg.inner.depth, cfg.inner.rate, cfg.name, cfg.other) == (5, 0.1, "y", Toy())
    run = build_train_config("ci", parse_overrides(["backbone.latent_dim=8", "train.lr=3e-4"]))
    assert (run.backbone.latent_dim, run.train.lr) == (8, 3e-4)
    assert run.backbone.d_model == 64 and run.train.steps == 300  # the rest is the ci preset


def test_a_flat_key_naming_one_part_is_an_alias_of_its_dotted_path():
    assert build_config(Tree, {}, None, overrides={"depth": "7"}).inner.depth == 7
    assert build_train_config("ci", {"steps": "20"}) == build_train_config(
        "ci", {"train.steps": "20"}
    )


def test_a_mistyped_nested_key_fails_in_one_line_listing_the_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_train_config("ci", parse_overrides(["backbone.latent_dimm=8"]))
    msg = str(e.value)
    assert "\n" not in msg and "backbone.latent_dimm" in msg
    assert "valid keys: backbone.token_size, backbone.window" in msg and "backbone.head" in msg
    with pytest.raises(ConfigError, match="unknown TrainRunConfig key trian.lr.*train.lr"):
        build_train_config("ci", {"trian.lr": 1})
    with pytest.raises(ConfigError, match="unknown Inner key inner.deep.*inner.depth, inner.rate"):
        build_config(Tree, {}, None, overrides={"inner": {"deep": 1}})


@dataclass
class Narrow:
    width: int = 1


@dataclass
class Both:
    inner: Narrow = field(default_factory=Narrow)
    other: Toy = field(default_factory=Toy)


def test_a_flat_key_of_two_parts_is_refused_as_ambiguous():
    with pytest.raises(
        ConfigError, match="width in overrides is ambiguous: write inner.width or other.width"
    ):
        build_config(Both, {}, None, overrides={"width": 3})


def test_nested_file_then_dotted_set_precedence(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("backbone:\n  latent_dim: 32\n  d_model: 128\ntrain.lr: 0.01\nsteps: 40\n")
    args = build_parser().parse_args(
        ["train", "ATLAS", "--preset", "ci", "--config", str(f), "--set", "backbone.latent_dim=8"]
    )
    cfg = build_train_config(args.preset, config_overrides(args))
    # preset ci <- file (nested, dotted and alias keys) <- --set
    assert (cfg.backbone.latent_dim, cfg.backbone.d_model) == (8, 128)
    assert (cfg.train.lr, cfg.train.steps, cfg.train.batch_size) == (0.01, 40, 8)
    assert file_and_overrides(f, {"train.lr": "1"})["train.lr"] == "1"


def test_the_validating_function_derives_and_checks_the_token_size():
    cfg = build_train_config("ci")
    assert validate_train_config(cfg, 16).backbone.token_size == 16  # from the token table
    given = build_train_config("ci", {"backbone.token_size": 32})
    with pytest.raises(ConfigError, match="token_size=32 but the store has 16"):
        validate_train_config(given, 16, token_size_given=True)
    with pytest.raises(ConfigError, match="batch_size=8 is smaller than the 16 ranks"):
        validate_train_config(cfg, world=16)
    with pytest.raises(ConfigError, match="not divisible by n_heads"):
        build_train_config("ci", {"backbone.d_model": 66})


def _tiny_atlas(root: Path, token_size: int = 16) -> Atlas:
    """Four small MLPs (3 train, 1 val) tokenized into ROOT/tokens, with a manifest."""
    from core.tokens.plan import tokenize_state_dict
    from core.tokens.tokenize import merge_index

    atlas = Atlas.create(root)
    models, rows = {}, []
    for i in range(4):
        torch.manual_seed(i)
        m = nn.Sequential(nn.Linear(12, 8 + 4 * i), nn.ReLU(), nn.Linear(8 + 4 * i, 5))
        models[f"t/m{i}"] = tokenize_state_dict(m.state_dict(), "dense", token_size, model=m)
        rows.append({"id": f"t/m{i}", "status": "accepted", "split": "train" if i < 3 else "val"})
    append_jsonl(atlas.manifest_path, rows)
    write_store(atlas.tokens_dir, models, "dense", token_size)
    merge_index(atlas)
    return atlas


def test_the_resolved_config_tree_is_written_beside_a_training_run(tmp_path):
    atlas = _tiny_atlas(tmp_path / "atlas")
    out = tmp_path / "bb"
    over = {"train.steps": "3", "train.batch_size": "2", "backbone.latent_dim": "4"}
    train(atlas.root, "ci", {**over, "eval_every": 3, "ckpt_every": 3}, out=out)
    saved = read_json(BackboneFiles(out).config_path)
    resolved = to_dict(validate_train_config(build_train_config("ci", over), 16))
    assert saved["backbone"] == resolved["backbone"]  # token_size 16: from the token table
    assert {k: v for k, v in saved["train"].items() if k not in ("eval_every", "ckpt_every")} == {
        k: v for k, v in resolved["train"].items() if k not in ("eval_every", "ckpt_every")
    }
    assert (saved["train"]["eval_every"], saved["backbone"]["token_size"]) == (3, 16)
    assert "token_size" not in saved and "scheme" not in saved  # the token table's, not copied
    assert isinstance(build("train", "ci"), TrainRunConfig)
