"""Typed configuration: dataclasses with named presets and loud overrides.

Every component (zoo, tokenizer, backbone, trainer, sampler, ...) has one dataclass and one
preset table. A config is built as defaults <- preset <- file (JSON/YAML) <- overrides
(CLI ``key=value`` strings or papermill parameters). Unknown or mistyped keys raise
``ConfigError``; nothing is silently ignored.

A field may itself be a config dataclass (a branch of a config tree, e.g. the training run's
``backbone`` and ``train``): it is set by dotted keys (``backbone.latent_dim=32``) or by a
nested mapping in a file; a flat key naming a field of exactly one branch is an alias of its
dotted path, one naming fields of two branches is refused as ambiguous.

    cfg = build_config(BackboneConfig, BACKBONE_PRESETS, "ci", overrides={"d_model": "64"})
    run = build_config(TrainRunConfig, RUN_PRESETS, "ci", overrides={"train.lr": "3e-4"})
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (often a CLI string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: cannot use {value!r} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if "e" in value.lower() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_config(tp: Any) -> bool:
    """Whether a field's type is itself a config dataclass (a branch of the config tree)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every settable key of config class ``cls``, nested fields as dotted paths."""
    out: list[str] = []
    for name, tp in _field_types(cls).items():
        out += valid_keys(tp, f"{prefix}{name}.") if _is_config(tp) else [f"{prefix}{name}"]
    return out


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``.

    A config file may write a branch either way (``backbone: {latent_dim: 32}`` or
    ``backbone.latent_dim: 32``); no config field holds a mapping, so every mapping is a branch.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        key = f"{prefix}{str(key).strip().replace('-', '_')}"
        if isinstance(value, Mapping):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def _route(cls: type, key: str, prefix: str, source: str) -> tuple[str | None, str]:
    """``(branch, rest)`` for one override key of ``cls``: ``(None, key)`` for an own field.

    A dotted key names its branch; a flat key that is no field of ``cls`` but a field of
    exactly one branch is an alias for that branch's field (``steps`` -> ``train.steps``).
    """
    types_ = _field_types(cls)
    head, dot, rest = key.partition(".")
    branches = {k for k, tp in types_.items() if _is_config(tp)}
    if dot and head in branches:
        return head, rest
    if not dot and key in types_ and key not in branches:
        return None, key
    if not dot:
        owners = [b for b in branches if key in valid_keys(types_[b])]
        if len(owners) == 1:
            return owners[0], key
        if len(owners) > 1:
            choices = " or ".join(f"{prefix}{b}.{key}" for b in sorted(owners))
            raise ConfigError(f"{prefix}{key} in {source} is ambiguous: write {choices}")
    raise ConfigError(
        f"unknown {cls.__name__} key {prefix}{key} in {source}; "
        f"valid keys: {', '.join(valid_keys(cls, prefix))}"
    )


def merge(
    cfg: T, overrides: Mapping[str, Any] | None, source: str = "overrides", prefix: str = ""
) -> T:
    """Return a copy of ``cfg`` with ``overrides`` applied; unknown keys raise.

    Keys are field names, dotted paths into nested config fields (``backbone.latent_dim``), or
    nested mappings (a config file's ``backbone: {latent_dim: 32}``). A flat key that names a
    field of exactly one nested config is accepted as an alias of its dotted path.

    Raises:
        ConfigError: one line naming the unknown key and every valid key, or a bad value.
    """
    if not overrides:
        return cfg
    types_ = _field_types(type(cfg))
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flatten(overrides).items():
        branch, rest = _route(type(cfg), key, prefix, source)
        if branch is None:
            own[rest] = _coerce(value, types_[rest], prefix + rest)
        else:
            nested.setdefault(branch, {})[rest] = value
    for branch, values in nested.items():
        own[branch] = merge(getattr(cfg, branch), values, source, f"{prefix}{branch}.")
    return dataclasses.replace(cfg, **own)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file into a plain dict."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """Parse CLI ``key=value`` pairs."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        k, v = pair.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def build_config(
    cls: type[T],
    presets: Mapping[str, Mapping[str, Any]],
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` as defaults <- preset <- file <- overrides.

    Args:
        cls: the dataclass type.
        presets: the component's preset table, name -> field overrides.
        preset: a preset name, or None for the dataclass defaults.
        file: optional JSON/YAML file of field values.
        overrides: field values that win over everything else.
    """
    cfg = cls()
    if preset is not None:
        if preset not in presets:
            raise ConfigError(
                f"unknown {cls.__name__} preset {preset!r}; choose from {', '.join(presets)}"
            )
        cfg = merge(cfg, presets[preset], f"preset {preset!r}")
    if file is not None:
        cfg = merge(cfg, load_file(file), str(file))
    return merge(cfg, overrides)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (nested configs as nested dicts)."""
    return _jsonable(dataclasses.asdict(cfg))


# --------------------------------------------------------------------------- the preset registry

# component name -> the module that defines its config dataclass and registers its presets
COMPONENTS: dict[str, str] = {
    "zoo": "core.zoos.zoo",
    "collect": "core.collection.config",
    "tokenize": "core.tokens.tokenize",
    "backbone": "core.backbone.model",
    "train": "core.backbone.config",
    "embed": "core.embeddings.encode",
    "probe": "core.embeddings.probes",
    "sample": "core.generation.config",
    "generation": "core.generation.config",
    "ablation": "core.experiments.ablations",
    "modality": "core.experiments.modality",
    "pipeline": "core.experiments.pipeline",
    "demo": "core.experiments.demo",
    "lineage": "core.trees.lineage",
}

# component name -> (config dataclass, its preset table); filled by each component's module
PRESETS: dict[str, tuple[type, Mapping[str, Mapping[str, Any]]]] = {}


def presets_of(name: str) -> tuple[type, Mapping[str, Mapping[str, Any]]]:
    """``(config class, preset table)`` of component ``name``, importing its module if needed."""
    if name not in COMPONENTS:
        raise ConfigError(f"unknown component {name!r}; components: {', '.join(COMPONENTS)}")
    if name not in PRESETS:
        importlib.import_module(COMPONENTS[name])  # the module registers its table on import
    return PRESETS[name]


def register_presets(
    name: str, cls: type, table: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Register ``cls``'s preset table under ``name`` (``"backbone"``, ``"train"``, ...).

    Returns the table, so that a module can write ``X_PRESETS = register_presets(...)``.
    """
    if name in PRESETS and PRESETS[name][1] is not table:
        raise ConfigError(f"presets {name!r} are registered twice")
    PRESETS[name] = (cls, table)
    return table


def check_preset(name: str, preset: str) -> None:
    """Raise ``ConfigError`` unless ``preset`` is a preset of component ``name``."""
    cls, table = presets_of(name)
    if preset not in table:
        raise ConfigError(
            f"unknown {cls.__name__} preset {preset!r}; choose from {', '.join(table)}"
        )


def build(
    name: str,
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The config of component ``name``: defaults <- preset <- file <- overrides."""
    cls, table = presets_of(name)
    return build_config(cls, table, preset, file, overrides)


def file_and_overrides(
    file: str | Path | None, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """One mapping of a config file's keys, then the overrides on top (file <- overrides).

    Both are flattened to dotted keys first, so ``--set backbone.latent_dim=8`` wins over a
    file's ``backbone: {latent_dim: 32}`` without dropping the file's other backbone fields.
    """
    file_values = flatten(load_file(file)) if file is not None else {}
    return {**file_values, **flatten(overrides or {})}
