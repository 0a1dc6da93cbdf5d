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

    from core.architectures import load_model_dir, resolve_arch, logits
    loaded = load_model_dir("ZOO/models--weightatlas-zoo--vit-digits10-r0-e8/snapshots/REV")
    logits(loaded.model, x)                    # (B, num_classes) whatever the library
    target = resolve_arch("zoo:resnet")        # or "timm:resnet18", "hf:<dir or id>"
    model = target.build(seed=0); target.save(model, "out/", card=None)
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
import yaml
from torch import nn

from core.atlas import atomic_path, atomic_write_bytes
from core.errors import RejectedModel, WeightAtlasError

if TYPE_CHECKING:
    from core.datasets import TaskInfo

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
# our own models (library "weightatlas")

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}
NATIVE_MODELS: dict[str, type[nn.Module]] = {}


def register_native(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Decorator registering one of our own model classes under ``architecture`` ``name``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        NATIVE_MODELS[name] = cls
        cls.architecture = name
        return cls

    return deco


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise RejectedModel("bad config", f"unknown activation {name!r}")
    return ACTIVATIONS[name]()


@register_native("mlp")
class MLP(nn.Module):
    """Fully connected classifier on flattened inputs: ``depth`` hidden layers of ``hidden_size``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden_size: int,
        depth: int,
        activation: str = "relu",
    ):
        super().__init__()
        self.model_args = dict(
            in_features=in_features,
            num_classes=num_classes,
            hidden_size=hidden_size,
            depth=depth,
            activation=activation,
        )
        sizes = [in_features] + [hidden_size] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = _activation(activation)
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, F)
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


@register_native("cnn")
class CNN(nn.Module):
    """Small plain CNN (the classic model-zoo CNN): ``depth`` 3x3 conv + BN + act blocks of
    ``width`` channels (doubling after the first), 2x2 max-pooling after the first two, global
    average pooling and a linear head."""

    def __init__(
        self, in_chans: int, num_classes: int, width: int, depth: int, activation: str = "relu"
    ):
        super().__init__()
        self.model_args = dict(
            in_chans=in_chans,
            num_classes=num_classes,
            width=width,
            depth=depth,
            activation=activation,
        )
        blocks = []
        c_in = in_chans
        for i in range(depth):
            c_out = width if i == 0 else 2 * width
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    _activation(activation),
                    nn.MaxPool2d(2) if i < 2 else nn.Identity(),
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.blocks(x).mean(dim=(2, 3)))


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
        from core.safety import check_build_size, max_build_values

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
# loading and saving Hub-format directories


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict; RejectedModel if missing or malformed.

    Read as a regular file inside the model folder, with a byte and a JSON depth limit
    (``core.hub.read_model_config``, issue 12).
    """
    from core.hub import read_model_config

    return read_model_config(Path(path))


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a model directory (one file, or the shards of an index).

    Raises:
        RejectedModel: no safetensors weights (pickled weights are never loaded).
    """
    path = Path(path)
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    if (path / WEIGHTS_INDEX_NAME).is_file():
        try:
            index = json.loads((path / WEIGHTS_INDEX_NAME).read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise RejectedModel("bad weights", f"unreadable {WEIGHTS_INDEX_NAME}: {e}") from None
        files = []
        for shard in shards:
            # a bare file name in this folder (HF cache snapshots hold symlinks into ../../blobs,
            # so the check is on the name, not on the resolved path)
            f = path / shard
            if Path(shard).name != shard or not shard.endswith(".safetensors") or not f.is_file():
                raise RejectedModel(
                    "bad weights", f"index names a missing or outside shard {shard!r}"
                )
            files.append(f)
        return files
    if any((path / n).exists() for n in PICKLE_WEIGHTS):
        raise RejectedModel(
            "no safetensors", "only pickled weights (.bin/.pt), which are never loaded"
        )
    raise RejectedModel("no weights", f"{path} has no {WEIGHTS_NAME}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model directory's safetensors files (CPU)."""
    sd: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        try:
            sd.update(safetensors.torch.load_file(f, device="cpu"))
        except Exception as e:  # truncated or corrupt file
            raise RejectedModel("bad weights", f"{f.name}: {type(e).__name__}: {e}") from None
    return sd


def load_weights_strict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy ``state_dict`` into ``model``; every key and shape must match exactly.

    A state-dict entry may be absent from the file only if it shares storage with one that is
    present (tied weights, which safetensors stores once).

    Raises:
        RejectedModel: missing, unexpected or mis-shaped tensors.
    """
    own = model.state_dict()
    unexpected = sorted(set(state_dict) - set(own))
    present_ptrs = {own[k].data_ptr() for k in own if k in state_dict}
    missing = sorted(k for k in set(own) - set(state_dict) if own[k].data_ptr() not in present_ptrs)
    shapes = sorted(
        k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if unexpected or missing or shapes:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", shapes),
        ):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise RejectedModel("weights do not match config", "; ".join(parts))
    model.load_state_dict(state_dict, strict=False)


def load_model_dir(path: str | Path, *, device: str = "cpu") -> LoadedModel:
    """Instantiate the model in a Hub-format directory and load its safetensors weights.

    The model takes the checkpoint's floating dtype when all its float tensors share one
    (fp16/bf16 weights stay bit-exact); call ``.float()`` to compute in fp32.

    Raises:
        RejectedModel: with a reason (no config, remote code, unknown type, no safetensors,
            weights that do not match).
    """
    config = read_config(path)
    from core.safety import check_build_size, stored_values  # size before allocation (issue 12)

    try:
        stored = stored_values(path)
    except RejectedModel:  # no or bad weights: reported below, after the config's own checks
        stored = None
    check_build_size(config, stored, None, strict=False)
    model, library = empty_model(config)
    state_dict = read_state_dict(path)
    float_dtypes = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:  # keep fp16/bf16 checkpoints exact instead of upcasting them
        model.to(float_dtypes.pop())
    try:
        load_weights_strict(model, state_dict)
    except RejectedModel:
        if library != "transformers":
            raise
        model = _transformers_legacy_load(Path(path), model)
    return LoadedModel(
        model=model.to(device).eval(),
        library=library,
        model_type=model_type_of(config),
        family=family_of(config),
        config=config,
    )


def _transformers_legacy_load(path: Path, model: nn.Module) -> nn.Module:
    """Load a checkpoint with legacy key names (``LayerNorm.gamma``, prefixes) through the
    class's own ``from_pretrained`` (safetensors only, local files only, no remote code).

    Every tensor of the model must come from the file (nothing missing or mis-shaped); extra
    tensors the class does not use (a pre-training head) are left out.
    """
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    try:
        with _quiet():
            loaded, info = type(model).from_pretrained(
                path,
                config=model.config,
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=False,
                output_loading_info=True,
                dtype=dtype,
            )
    except Exception as e:
        raise RejectedModel("weights do not match config", f"{type(e).__name__}: {e}") from None
    missing = sorted(info.get("missing_keys", []))
    shapes = sorted(str(k) for k in info.get("mismatched_keys", []))
    if missing or shapes:
        parts = [
            f"{len(keys)} {label} (e.g. {keys[0]})"
            for label, keys in (("missing", missing), ("shape mismatch", shapes))
            if keys
        ]
        raise RejectedModel("weights do not match config", "; ".join(parts))
    return loaded.eval()


def config_of(model: nn.Module, library: str) -> dict[str, Any]:
    """The ``config.json`` dict that rebuilds ``model`` with ``empty_model``."""
    if library == "transformers":
        cfg = model.config.to_dict()
        cfg["architectures"] = [type(model).__name__]
        return cfg
    if library == "timm":
        return _timm_export_config(model)
    if library == "weightatlas":
        return {
            "library_name": "weightatlas",
            "architecture": type(model).architecture,
            "num_classes": model.model_args["num_classes"],
            "model_args": dict(model.model_args),
        }
    raise WeightAtlasError(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)}")


def _timm_export_config(model: nn.Module) -> dict[str, Any]:
    """timm's own Hub export (``save_config_for_hf``), with our preprocessing (inputs in [0, 1])."""
    import tempfile

    from timm.models._hub import save_config_for_hf

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        save_config_for_hf(model, f"{tmp}/config.json")
        cfg = json.loads(Path(f"{tmp}/config.json").read_text())
    pcfg = cfg["pretrained_cfg"]
    for key in ("tag", "license", "hf_hub_id", "origin_url", "paper_ids", "paper_name", "notes"):
        pcfg.pop(key, None)
    chans = pcfg["input_size"][0]
    pcfg["mean"], pcfg["std"] = [0.0] * chans, [1.0] * chans
    pcfg["crop_pct"] = 1.0
    return cfg


def save_model_dir(
    model: nn.Module,
    out_dir: str | Path,
    library: str,
    card: str | None = None,
    config: dict | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` (if ``card``) atomically.

    Tied tensors are stored once (``safetensors.torch.save_model``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = config if config is not None else config_of(model, library)
    atomic_write_bytes(
        out / "config.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    )
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        safetensors.torch.save_model(model, str(tmp), metadata={"format": "pt"})
    if card is not None:
        atomic_write_bytes(out / "README.md", card.encode())
    return out


def render_card(metadata: dict[str, Any], title: str, body: str = "") -> str:
    """A model card: YAML front matter (parsed by ``huggingface_hub.ModelCard``) + markdown."""
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n# {title}\n\n{body.strip()}\n"


# ---------------------------------------------------------------------------------------------
# zoo families


@dataclass(frozen=True)
class Family:
    """A zoo family: a config maker sized by ``width`` and ``depth`` for one task's shapes.

    ``widths`` / ``depths`` are the sizes the zoo draws from (small to large); ``kinds`` the
    task kinds it can train on; ``default_task`` the task ``resolve_arch`` evaluates on.
    ``epoch_scale`` / ``lr_scale`` multiply a zoo run's epochs and learning rate: small
    transformers need more and larger steps than CNNs on tiny data sets.
    """

    name: str
    library: str
    make_config: Callable[[TaskInfo, int, int], dict[str, Any]]
    kinds: tuple[str, ...]
    default_task: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    epoch_scale: int = 1
    lr_scale: float = 1.0

    def config(self, task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
        """The ``config.json`` dict of this family for ``task`` at ``width`` x ``depth``."""
        if task.kind not in self.kinds:
            raise WeightAtlasError(
                f"family {self.name!r} cannot train on {task.kind} task {task.name!r}"
            )
        return self.make_config(task, width, depth)


FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    library: str,
    widths: tuple[int, ...],
    depths: tuple[int, ...],
    kinds: tuple[str, ...] = ("image",),
    default_task: str = "digits10",
    epoch_scale: int = 1,
    lr_scale: float = 1.0,
) -> Callable[
    [Callable[[TaskInfo, int, int], dict[str, Any]]], Callable[[TaskInfo, int, int], dict[str, Any]]
]:
    """Decorator registering a zoo family's config maker ``fn(task, width, depth) -> config``."""

    def deco(
        fn: Callable[[TaskInfo, int, int], dict[str, Any]],
    ) -> Callable[[TaskInfo, int, int], dict[str, Any]]:
        if name in FAMILIES:
            raise ValueError(f"family {name!r} registered twice")
        FAMILIES[name] = Family(
            name, library, fn, kinds, default_task, widths, depths, epoch_scale, lr_scale
        )
        return fn

    return deco


def build_family(name: str, task: TaskInfo, width: int, depth: int, seed: int) -> nn.Module:
    """A freshly initialized model of family ``name`` for ``task`` (init seeded by ``seed``)."""
    if name not in FAMILIES:
        raise WeightAtlasError(f"unknown zoo family {name!r}; choose from {', '.join(FAMILIES)}")
    config = FAMILIES[name].config(task, width, depth)
    return build_from_config(config, seed)


def build_from_config(config: dict[str, Any], seed: int) -> nn.Module:
    """``empty_model(config)`` with its random init seeded, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _ = empty_model(config)
    return model


def _hf(cls_name: str, arch: str, task: TaskInfo, **kwargs: Any) -> dict[str, Any]:
    import transformers

    cfg = getattr(transformers, cls_name)(
        num_labels=task.num_classes, architectures=[arch], **kwargs
    )
    return cfg.to_dict()


def _patch(task: TaskInfo) -> int:
    """Patch size giving a 4x4 token grid (8x8 -> 2, 16x16 -> 4)."""
    return max(1, task.img_size // 4)


@register_family("resnet", library="transformers", widths=(8, 16, 24), depths=(1, 2))
def _resnet(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "ResNetConfig",
        "ResNetForImageClassification",
        task,
        num_channels=task.in_chans,
        embedding_size=width,
        hidden_sizes=[width, 2 * width],
        depths=[depth, depth],
        layer_type="basic",
        downsample_in_first_stage=False,
    )


@register_family("convnext", library="transformers", widths=(8, 16, 24), depths=(1, 2))
def _convnext(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "ConvNextConfig",
        "ConvNextForImageClassification",
        task,
        num_channels=task.in_chans,
        patch_size=_patch(task),
        num_stages=2,
        hidden_sizes=[width, 2 * width],
        depths=[depth, depth],
        image_size=task.img_size,
    )


@register_family(
    "vit",
    library="transformers",
    widths=(16, 32, 48),
    depths=(1, 2, 3),
    epoch_scale=2,
    lr_scale=2.0,
)
def _vit(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "ViTConfig",
        "ViTForImageClassification",
        task,
        num_channels=task.in_chans,
        image_size=task.img_size,
        patch_size=_patch(task),
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=2,
        intermediate_size=2 * width,
        encoder_stride=_patch(task),
    )


@register_family("swin", library="transformers", widths=(8, 16, 24), depths=(1, 2), epoch_scale=2)
def _swin(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "SwinConfig",
        "SwinForImageClassification",
        task,
        num_channels=task.in_chans,
        image_size=task.img_size,
        patch_size=_patch(task),
        embed_dim=width,
        depths=[depth, depth],
        num_heads=[1, 2],
        window_size=2,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        encoder_stride=2 * _patch(task),
    )


@register_family("regnet", library="transformers", widths=(8, 16, 24), depths=(1, 2))
def _regnet(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "RegNetConfig",
        "RegNetForImageClassification",
        task,
        num_channels=task.in_chans,
        embedding_size=width,
        hidden_sizes=[width, 2 * width],
        depths=[depth, depth],
        groups_width=8,
        layer_type="x",
        downsample_in_first_stage=False,
    )


def _timm(arch: str, task: TaskInfo, **model_args: Any) -> dict[str, Any]:
    """timm's Hub config of ``arch`` built with ``model_args`` (built once to export it)."""
    with torch.random.fork_rng(devices=[]):
        model = _timm_model({"architecture": arch, "model_args": dict(model_args)})
    return _timm_export_config(model)


@register_family("timm-resnet", library="timm", widths=(8, 16, 24), depths=(1, 2))
def _timm_resnet(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _timm(
        "resnet18",
        task,
        in_chans=task.in_chans,
        num_classes=task.num_classes,
        layers=[depth] * 4,
        channels=[width, width, 2 * width, 2 * width],
        stem_width=width,
    )


@register_family(
    "timm-vit", library="timm", widths=(16, 32, 48), depths=(1, 2, 3), epoch_scale=2, lr_scale=2.0
)
def _timm_vit(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _timm(
        "vit_tiny_patch16_224",
        task,
        in_chans=task.in_chans,
        num_classes=task.num_classes,
        img_size=task.img_size,
        patch_size=_patch(task),
        embed_dim=width,
        depth=depth,
        num_heads=2,
        mlp_ratio=2.0,
        class_token=False,
        global_pool="avg",
    )


@register_family("timm-convnext", library="timm", widths=(8, 16, 24), depths=(1, 2))
def _timm_convnext(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _timm(
        "convnext_atto",
        task,
        in_chans=task.in_chans,
        num_classes=task.num_classes,
        patch_size=1,  # timm's ConvNeXt reaches stride 32 from any stem stride > 1
        depths=[depth] * 4,
        dims=[width, width, 2 * width, 2 * width],
    )


@register_family("cnn", library="weightatlas", widths=(8, 16, 32), depths=(2, 3))
def _cnn(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return config_of(CNN(task.in_chans, task.num_classes, width, depth), "weightatlas")


@register_family(
    "mlp",
    library="weightatlas",
    widths=(16, 32, 64),
    depths=(1, 2, 3),
    kinds=("image", "tabular"),
    default_task="wine",
)
def _mlp(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return config_of(MLP(task.n_features, task.num_classes, width, depth), "weightatlas")


# Sequence families (issue 17): token-id classifiers sized for the procedural sequence tasks
# (``core.datasets.SEQUENCE_TASKS``: vocabulary of a few symbols, 13-21 positions). Dropout is
# off: these models are tiny and train for a few epochs on ~1,000 sequences.


def _seq_common(task: TaskInfo) -> dict[str, Any]:
    from core.datasets import CLS_ID, PAD_ID

    return dict(vocab_size=task.vocab_size, pad_token_id=PAD_ID, bos_token_id=CLS_ID)


@register_family(
    "bert",
    library="transformers",
    widths=(16, 32, 48),
    depths=(1, 2, 3),
    kinds=("sequence",),
    default_task="seq-brackets",
    epoch_scale=2,
    lr_scale=4.0,  # a [CLS]-pooled encoder needs larger steps than the last-token decoder
)
def _bert(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "BertConfig",
        "BertForSequenceClassification",
        task,
        **_seq_common(task),
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=task.seq_len,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@register_family(
    "gpt2",
    library="transformers",
    widths=(16, 32, 48),
    depths=(1, 2, 3),
    kinds=("sequence",),
    default_task="seq-brackets",
    epoch_scale=2,
    lr_scale=2.0,
)
def _gpt2(task: TaskInfo, width: int, depth: int) -> dict[str, Any]:
    return _hf(
        "GPT2Config",
        "GPT2ForSequenceClassification",
        task,
        **_seq_common(task),
        eos_token_id=_seq_common(task)["bos_token_id"],
        n_embd=width,
        n_layer=depth,
        n_head=2,
        n_inner=2 * width,
        n_positions=task.seq_len,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
    )


# ---------------------------------------------------------------------------------------------
# architecture targets for generation


@dataclass
class ArchTarget:
    """Something ``sample`` can generate weights for: builds fresh models and saves them.

    ``config`` is the ``config.json`` dict that ``empty_model`` builds; ``task`` is the task
    name models of this target are evaluated on (None if unknown, e.g. a bare timm name).
    """

    spec: str
    library: str
    family: str
    config: dict[str, Any]
    task: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int = 0) -> nn.Module:
        """A freshly initialized model (init seeded by ``seed``), in eval mode."""
        return build_from_config(self.config, seed)

    def save(self, model: nn.Module, out_dir: str | Path, card: str | None = None) -> Path:
        """Write ``model`` as a Hub-format directory that ``load_model_dir`` loads back."""
        if card is None:
            meta = {
                "library_name": self.library,
                "tags": [t for t in ("weightatlas", self.family, self.task) if t],
            }
            card = render_card(
                meta, f"{self.family} ({self.spec})", "Weights written by Weight Atlas."
            )
        return save_model_dir(model, out_dir, self.library, card=card, config=self.config)


def resolve_arch(
    spec: str,
    *,
    task: str | None = None,
    width: int | None = None,
    depth: int | None = None,
    cache_dir: str | Path | None = None,
) -> ArchTarget:
    """Turn an architecture spec into an ArchTarget.

    Args:
        spec: ``zoo:<family>`` or a bare family name; ``timm:<model name>``; ``hf:<model dir>``
            or ``hf:<repo id>`` (looked up in the local HF cache, ``cache_dir`` or the default).
        task: for zoo families and timm names, the task to size the model for (default: the
            family's default task; timm names without a task keep their own head).
        width, depth: zoo family sizes (default: the family's smallest).
    """
    from core.datasets import get_task

    kind, _, rest = spec.partition(":")
    if not rest:
        kind, rest = "zoo", spec
    if kind == "zoo":
        if rest not in FAMILIES:
            raise WeightAtlasError(
                f"unknown zoo family {rest!r}; choose from {', '.join(FAMILIES)}"
            )
        fam = FAMILIES[rest]
        task_name = task or fam.default_task
        config = fam.config(
            get_task(task_name).info, width or fam.widths[0], depth or fam.depths[0]
        )
        return ArchTarget(
            spec, fam.library, family_of(config), config, task=task_name, extra={"zoo_family": rest}
        )
    if kind == "timm":
        model_args: dict[str, Any] = {}
        if task is not None:
            info = get_task(task).info
            model_args = {"num_classes": info.num_classes, "in_chans": info.in_chans}
        config = {"architecture": rest, "model_args": model_args}
        with torch.random.fork_rng(devices=[]):
            model, _ = empty_model(config)
        config = _timm_export_config(model)
        return ArchTarget(spec, "timm", family_of(config), config, task=task)
    if kind == "hf":
        path = _local_model_dir(rest, cache_dir)
        config = read_config(path)
        library = library_of(config)
        from core.safety import check_build_size, max_build_values, stored_values

        try:  # size before allocation: against the folder's own weights (issue 12)
            stored = stored_values(path)
        except RejectedModel:  # a bare config is a valid architecture spec
            stored = None
        check_build_size(config, stored, max_build_values(), strict=False)
        return ArchTarget(
            spec,
            library,
            family_of(config),
            config,
            task=task or _card_task(path),
            source=str(path),
        )
    raise WeightAtlasError(
        f"bad architecture spec {spec!r}; use zoo:<family>, timm:<name> or hf:<dir or repo id>"
    )


def _local_model_dir(ref: str, cache_dir: str | Path | None) -> Path:
    path = Path(ref)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as e:
        raise WeightAtlasError(
            f"{ref!r} is neither a model directory nor a repo in the local HF cache ({type(e).__name__})"
        ) from None


def _card_task(path: Path) -> str | None:
    """The ``weightatlas.task`` of a zoo model card, if any."""
    from core.hub import read_card  # bounded, no YAML aliases (issue 12)

    try:
        meta = read_card(Path(path))
    except RejectedModel:
        return None
    block = meta.get("weightatlas")
    return block.get("task") if isinstance(block, dict) else None
