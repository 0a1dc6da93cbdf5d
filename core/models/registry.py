"""One registry of what can be built or loaded: zoo families, transformers configs, timm names.

Three libraries are understood, each in its own Hub format (``config.json`` +
``model.safetensors`` + ``README.md``):

- ``transformers``: a config with ``model_type``; the class is ``config.architectures[0]``
  looked up on the ``transformers`` module (else the Auto class for the config), never
  ``trust_remote_code``; configs with ``auto_map`` / ``custom_class`` are rejected.
- ``timm``: a config with ``architecture`` (timm's Hub export, with ``model_args``), built with
  ``timm.create_model(name, pretrained=False, **model_args)``.
- ``weightatlas``: our own tiny models (``"library_name": "weightatlas"``): an MLP and a CNN.

Weights are read only from safetensors and loaded strictly. Zoo families (``FAMILIES``) are
small configurations of these libraries sized for 8x8 / 16x16 one-channel images or tabular
features; each takes a ``width`` and a ``depth``.

    from core.models.io import load_model_dir
    from core.models.registry import logits
    from core.collection.specs import resolve_arch
    loaded = load_model_dir("ZOO/models--weightatlas-zoo--vit-digits10-r0-e8/snapshots/REV")
    logits(loaded.model, x)                    # (B, num_classes) whatever the library
    target = resolve_arch("zoo:resnet")        # or "timm:resnet18", "hf:<dir or id>"
    model = target.build(seed=0); target.save(model, "out/", card=None)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from core.errors import RejectedModel, WeightAtlasError
from core.models.native import NATIVE_MODELS


def implied_size(config: dict[str, Any]) -> tuple[int, int]:
    """``(parameters, buffer values)`` of the model a config describes, built on the meta device.

    No real memory is allocated (every tensor lives on ``torch.device("meta")``), so a config
    asking for 10^14 values is sized in milliseconds. The cost follows the size of the config,
    not the number of layers it asks for: layer, block and expert counts (``num_hidden_layers``,
    ``depths``, ``num_local_experts``, ...) above ``SIZE_BUILD_LAYERS`` are built at 2 and at 4,
    and each count's share is extrapolated linearly (exact for a stack of identical blocks, or
    of pairs), so ``num_hidden_layers: 10**12`` costs two small builds. A build that registers more
    than ``MAX_SIZING_MODULES`` modules anyway (a count under a name not recognised) stops there.

    Raises:
        RejectedModel: the config's own build errors, ``too large`` for more layer counts or
            modules than a model has, or ``bad config`` if the library's classes cannot be built
            on the meta device (the size cannot be known safely).
    """
    key = json.dumps(config, sort_keys=True, default=repr)
    if key in _IMPLIED_SIZES:
        return _IMPLIED_SIZES[key]
    counts = _layer_counts(config)
    large = [(path, v) for path, v in counts if v > SIZE_BUILD_LAYERS]
    if len(large) > MAX_LARGE_COUNTS:
        raise RejectedModel(
            "too large",
            f"the config sets {len(large)} layer counts above {SIZE_BUILD_LAYERS} "
            f"(at most {MAX_LARGE_COUNTS})",
        )
    built = sum(v for _p, v in counts if v <= SIZE_BUILD_LAYERS) + 4 * len(large)
    if built > MAX_BUILD_LAYERS:
        raise RejectedModel(
            "too large",
            f"the config asks for {built:,} layers in all (at most {MAX_BUILD_LAYERS:,})",
        )
    if not large:
        params, buffers = _meta_size(config)
    else:
        base_config = config
        for path, _v in large:
            base_config = _with_value(base_config, path, 2)
        params, buffers = base = _meta_size(base_config)
        for path, v in large:  # two more blocks, so that alternating blocks (Swin) average out
            more = _meta_size(_with_value(base_config, path, 4))
            params += (v - 2) * (more[0] - base[0]) // 2
            buffers += (v - 2) * (more[1] - base[1]) // 2
        params, buffers = max(params, 0), max(buffers, 0)
    if len(_IMPLIED_SIZES) >= 256:
        _IMPLIED_SIZES.pop(next(iter(_IMPLIED_SIZES)))
    _IMPLIED_SIZES[key] = (params, buffers)
    return params, buffers


# layer/block/expert counts up to this are built as they are; larger ones are extrapolated
SIZE_BUILD_LAYERS = 64
# a config with more counts above SIZE_BUILD_LAYERS than this is refused unsized
MAX_LARGE_COUNTS = 16
# at most this many layers (all counts, the large ones cut to 4) are built to size one
MAX_BUILD_LAYERS = 4096
# a sizing build that registers more modules than this is stopped (bert-base has ~230,
# timm's vit_large ~300, a 126-layer Llama ~1,100)
MAX_SIZING_MODULES = 20_000
# names of counts of repeated layers, blocks, stages or experts (in any nested config):
# num_hidden_layers, n_layer, encoder_layers, depth(s), layers (timm ResNet), num_blocks,
# num_local_experts, n_routed_experts, block_config (DenseNet)
_COUNT_KEY = re.compile(r"(?:^|_)(?:layers?|blocks?|experts?|depths?)$|^block_config$")


def _layer_counts(config: Any) -> list[tuple[tuple[Any, ...], int]]:
    """``(path, value)`` of every layer-like count in a config (ints, or ints in a list)."""
    found: list[tuple[tuple[Any, ...], int]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), config)]
    while stack:
        path, obj = stack.pop()
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            counted = isinstance(k, str) and _COUNT_KEY.search(k)
            if counted and isinstance(v, int) and not isinstance(v, bool):
                found.append(((*path, k), v))
            elif counted and isinstance(v, list):
                for i, x in enumerate(v):
                    if isinstance(x, int) and not isinstance(x, bool):
                        found.append(((*path, k, i), x))
                    elif isinstance(x, dict | list):
                        stack.append(((*path, k, i), x))
            elif isinstance(v, dict | list):
                stack.append(((*path, k), v))
    return found


def _with_value(obj: Any, path: tuple[Any, ...], value: int) -> Any:
    """A copy of ``obj`` with ``value`` at ``path`` (only the containers on the path copied)."""
    head, rest = path[0], path[1:]
    out = dict(obj) if isinstance(obj, dict) else list(obj)
    out[head] = _with_value(obj[head], rest, value) if rest else value
    return out


class _TooManyModules(BaseException):
    """Raised by the sizing build's module hook; a BaseException so that the library
    builders' ``except Exception`` (a malformed config) does not turn it into ``bad config``."""


_SIZING = threading.local()


def _count_module(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
    left = getattr(_SIZING, "left", None)
    if left is None:
        return
    if left <= 0:
        raise _TooManyModules
    _SIZING.left = left - 1


def _meta_size(config: dict[str, Any]) -> tuple[int, int]:
    """``(parameters, buffer values)`` of one build of ``config`` on the meta device."""
    handle = register_module_module_registration_hook(_count_module)
    _SIZING.left = MAX_SIZING_MODULES
    try:
        with torch.device("meta"):
            model, _library = empty_model(config)
    except RejectedModel:
        raise
    except _TooManyModules:
        raise RejectedModel(
            "too large", f"the config builds more than {MAX_SIZING_MODULES:,} modules"
        ) from None
    except Exception as e:  # noqa: BLE001 (any failure of an untrusted config)
        raise RejectedModel(
            "bad config",
            f"cannot be sized before allocation ({type(e).__name__}: {str(e)[:200]})",
        ) from None
    finally:
        _SIZING.left = None
        handle.remove()
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    return params, buffers


# implied sizes of configs already sized, by canonical JSON: a generation run builds its target
# several times (prompts, draws, scoring), and a meta build of timm's ResNet-18 takes ~0.8 s
_IMPLIED_SIZES: dict[str, tuple[int, int]] = {}


DEFAULT_MAX_BUILD_VALUES = 2_000_000_000


def max_build_values() -> int:
    """The absolute limit on a model built from a config (``WEIGHTATLAS_MAX_BUILD_VALUES``)."""
    try:
        return int(os.environ.get("WEIGHTATLAS_MAX_BUILD_VALUES", DEFAULT_MAX_BUILD_VALUES))
    except ValueError:
        return DEFAULT_MAX_BUILD_VALUES


def check_build_size(
    config: dict[str, Any],
    stored_values: int | None = None,
    max_values: int | None = DEFAULT_MAX_BUILD_VALUES,
    strict: bool = True,
) -> int | None:
    """Refuse a config whose model would be too large, before any real allocation.

    Args:
        config: the ``config.json`` dict ``core.models.registry.empty_model`` builds.
        stored_values: values stored in the model's safetensors (all dtypes), if known: the
            build may not exceed them by more than a quarter (plus 4,096 for small buffers).
        max_values: absolute limit on parameters + buffers (None: no limit).
        strict: a config whose classes cannot be built on the meta device is rejected
            (``bad config``); with False it passes unchecked (trusted callers, e.g. a zoo).

    Returns:
        The implied number of parameters (None if not strict and it could not be sized).

    Raises:
        RejectedModel: ``too large``, ``weights do not match config`` or ``bad config``.
    """
    try:
        params, buffers = implied_size(config)
    except RejectedModel as e:
        if strict or not e.detail.startswith("cannot be sized"):
            raise
        return None
    total = params + buffers
    if max_values is not None and total > max_values:
        raise RejectedModel(
            "too large",
            f"the config implies {total:,} values (parameters and buffers) > limit {max_values:,}",
        )
    if stored_values is not None and params > stored_values * 1.25 + 4096:
        raise RejectedModel(
            "weights do not match config",
            f"the config implies {params:,} parameters, the files store {stored_values:,} values",
        )
    return params


LIBRARIES = ("transformers", "timm", "weightatlas")
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS = (
    "pytorch_model.bin",
    "model.pt",
    "model.pth",
    "pytorch_model.bin.index.json",
    "model.ckpt",
)
REMOTE_CODE_KEYS = ("auto_map", "custom_class", "custom_pipelines")

# timm.create_model arguments that would read files, download or change what is built
# from something other than the architecture itself; a config that sets them is rejected.
TIMM_FORBIDDEN_ARGS = frozenset(
    {
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "checkpoint_path",
        "cache_dir",
        "scriptable",
        "exportable",
        "no_jit",
        "features_only",
        "pretrained_strict",
    }
)


@dataclass
class LoadedModel:
    """A model instantiated from a Hub-format directory, in eval mode, with its labels."""

    model: nn.Module
    library: str
    model_type: str
    family: str
    config: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# logits of any classifier


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class logits ``(B, num_classes)`` of ``model`` on inputs ``x``, whatever the library.

    ``x`` is ``(B, C, H, W)`` images, ``(B, F)`` features or ``(B, S)`` token ids; transformers
    outputs give ``.logits``, timm and our models return a tensor.
    """
    out = model(x)
    if isinstance(out, torch.Tensor):
        return out
    value = getattr(out, "logits", None)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise WeightAtlasError(
        f"{type(model).__name__} returned {type(out).__name__}, not class logits"
    )


# ---------------------------------------------------------------------------------------------


# empty models from configs


def _find_keys(obj: Any, keys: tuple[str, ...]) -> str | None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in keys:
                return k
            found = _find_keys(v, keys)
            if found:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _find_keys(v, keys)
            if found:
                return found
    return None


def library_of(config: dict[str, Any]) -> str:
    """Which library a ``config.json`` belongs to: ``weightatlas``, ``transformers`` or ``timm``."""
    if not isinstance(config, dict):
        raise RejectedModel("bad config", "config.json is not a JSON object")
    remote = _find_keys(config, REMOTE_CODE_KEYS)
    if remote:
        raise RejectedModel("remote code", f"config sets {remote!r}; custom code is never run")
    if config.get("library_name") == "weightatlas":
        return "weightatlas"
    if isinstance(config.get("model_type"), str):
        return "transformers"
    if isinstance(config.get("architecture"), str):
        return "timm"
    raise RejectedModel(
        "unknown config", "no model_type (transformers), architecture (timm) or library_name"
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence library chatter (timm's pretrained-mean notes, transformers' init warnings)."""
    loggers = [logging.getLogger(n) for n in ("timm", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _native_model(config: dict[str, Any]) -> nn.Module:
    arch = config.get("architecture")
    if arch not in NATIVE_MODELS:
        raise RejectedModel(
            "unknown architecture",
            f"weightatlas has no {arch!r}; known: {', '.join(NATIVE_MODELS)}",
        )
    args = config.get("model_args")
    if not isinstance(args, dict):
        raise RejectedModel("bad config", "weightatlas config without a model_args object")
    try:
        return NATIVE_MODELS[arch](**args)
    except TypeError as e:
        raise RejectedModel("bad config", f"{arch}: {e}") from None


def _transformers_model(config: dict[str, Any]) -> nn.Module:
    import transformers

    model_type = config["model_type"]
    if model_type not in transformers.CONFIG_MAPPING:
        raise RejectedModel("unknown model_type", f"transformers has no model_type {model_type!r}")
    cfg_cls = transformers.CONFIG_MAPPING[model_type]
    try:
        with _quiet():
            cfg = cfg_cls.from_dict(dict(config))
    except Exception as e:  # a malformed config of an untrusted model
        raise RejectedModel("bad config", f"{model_type}: {type(e).__name__}: {e}") from None
    cls = None
    arch = (cfg.architectures or [None])[0]
    if isinstance(arch, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", arch):
        candidate = getattr(transformers, arch, None)
        if (
            isinstance(candidate, type)
            and issubclass(candidate, transformers.PreTrainedModel)
            and candidate.config_class is cfg_cls
        ):
            cls = candidate
    if cls is None:
        for auto in (transformers.AutoModelForImageClassification, transformers.AutoModel):
            mapping = auto._model_mapping
            if type(cfg) in mapping:
                cls = mapping[type(cfg)]
                break
    if cls is None:
        raise RejectedModel(
            "unsupported architecture", f"no transformers class for {arch or model_type!r}"
        )
    try:
        with _quiet():
            model = cls(cfg)
    except Exception as e:
        raise RejectedModel("bad config", f"{cls.__name__}: {type(e).__name__}: {e}") from None
    return model.float()


def _timm_model(config: dict[str, Any]) -> nn.Module:
    import timm

    arch = config["architecture"]
    if not timm.is_model(arch):
        raise RejectedModel("unknown architecture", f"timm has no model {arch!r}")
    args = config.get("model_args", {})
    if not isinstance(args, dict):
        raise RejectedModel("bad config", "timm model_args is not an object")
    bad = sorted(set(args) & TIMM_FORBIDDEN_ARGS)
    if bad:
        raise RejectedModel("bad config", f"timm model_args may not set {', '.join(bad)}")
    args = dict(args)
    if "num_classes" in config:
        args["num_classes"] = config["num_classes"]
    try:
        with _quiet():
            return timm.create_model(arch, pretrained=False, **args)
    except Exception as e:
        raise RejectedModel("bad config", f"{arch}: {type(e).__name__}: {e}") from None


_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "weightatlas": _native_model,
    "transformers": _transformers_model,
    "timm": _timm_model,
}


def empty_model(config: dict[str, Any]) -> tuple[nn.Module, str]:
    """Instantiate the model a ``config.json`` describes, randomly initialized, in eval mode.

    Returns:
        ``(model, library)``.

    Raises:
        RejectedModel: unknown ``model_type``/architecture, remote code, or a malformed config.
    """
    library = library_of(config)
    if torch.get_default_device().type != "meta":  # size first, allocation-free (issue 12)
        check_build_size(config, None, max_build_values(), strict=False)
    model = _BUILDERS[library](config)
    return model.eval(), library


def model_type_of(config: dict[str, Any]) -> str:
    """``model_type`` for transformers, the architecture name for timm and our own models."""
    library = library_of(config)
    return str(config["model_type"] if library == "transformers" else config["architecture"])


FAMILY_ALIASES = {
    "deit": "vit",
    "regnetx": "regnet",
    "regnety": "regnet",
    "regnetz": "regnet",
    "data2vec-vision": "beit",
    "mobilenet_v1": "mobilenet",
    "mobilenet_v2": "mobilenet",
}
_TIMM_PREFIXES = ("tf", "hf", "legacy", "gluon")


def family_of(config: dict[str, Any]) -> str:
    """A coarse family label for the manifest: ``resnet``, ``vit``, ``convnext``, ``mlp``, ...

    transformers: ``model_type``; timm: the root of the architecture name
    (``resnet50d`` -> ``resnet``); ours: the architecture. Versions (``v2``) are dropped and a
    few aliases are merged (``deit`` -> ``vit``).
    """
    library = library_of(config)
    if library == "timm":
        parts = config["architecture"].lower().split("_")
        while len(parts) > 1 and parts[0] in _TIMM_PREFIXES:
            parts = parts[1:]
        m = re.match(r"([a-z]+?)(v\d+)?(\d.*)?$", parts[0])
        name = m.group(1) if m else parts[0]
    else:
        name = model_type_of(config).lower()
    name = FAMILY_ALIASES.get(name, name)
    name = re.sub(r"[_-]?v\d+$", "", name)
    return FAMILY_ALIASES.get(name, name)


def trainable_names(model: nn.Module) -> set[str]:
    """State-dict names of parameters; everything else in ``state_dict()`` is a buffer.

    Tied parameters appear under every name they have in the state dict.
    """
    params = {id(p) for p in model.parameters()}
    names = set(dict(model.named_parameters(remove_duplicate=False)))
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in params:
            names.add(name)
    return names & set(model.state_dict())


# ---------------------------------------------------------------------------------------------
