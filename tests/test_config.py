"""Typed configs: presets, file and override merging, loud failures on unknown keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest

from core.config import ConfigError, build_config, parse_overrides, to_dict


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
