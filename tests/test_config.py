"""Typed configs: presets, file and override merging, loud failures on unknown keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest

from core.cli import build_parser, config_overrides
from core.config import (
    COMPONENTS,
    ConfigError,
    build,
    build_config,
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
    for key, value in table[preset].items():  # each preset field arrives, coerced to its type
        got = getattr(cfg, key)
        assert got == value or (isinstance(got, tuple) and list(got) == list(value)), key


def test_every_table_is_registered_and_has_the_shared_names():
    assert set(REGISTRY) == set(COMPONENTS)
    for component in COMPONENTS:
        names = set(presets_of(component)[1])
        assert {"ci", "demo"} <= names, (component, sorted(names))


def test_every_pipeline_preset_names_existing_sub_presets():
    for name in presets_of("pipeline")[1]:
        check_config(build("pipeline", name))


def test_pipeline_rejects_a_missing_sub_preset_before_any_stage(tmp_path):
    with pytest.raises(ConfigError, match="backbone_preset: unknown TrainConfig preset 'nope'"):
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
