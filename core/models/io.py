"""Hub-format model folders (``config.json``, ``model.safetensors``, ``README.md``): load and save."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import yaml
from torch import nn

from core.atlas import atomic_path, atomic_write_bytes
from core.errors import RejectedModel, WeightAtlasError
from core.models.formats import read_model_config, read_safetensors_header
from core.models.registry import (
    LIBRARIES,
    PICKLE_WEIGHTS,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    LoadedModel,
    _quiet,
    check_build_size,
    empty_model,
    family_of,
    model_type_of,
)


def stored_values(path: str | Path, max_header_bytes: int = 100_000_000) -> int:
    """Values (all dtypes) in a model directory's safetensors headers; no tensor data read."""

    total = 0
    for f in weight_files(path):
        total += sum(t.numel for t in read_safetensors_header(f, max_header_bytes).values())
    return total


# loading and saving Hub-format directories


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict; RejectedModel if missing or malformed.

    Read as a regular file inside the model folder, with a byte and a JSON depth limit
    (``core.collection.facts.read_model_config``, issue 12).
    """

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
        return timm_export_config(model)
    if library == "weightatlas":
        return {
            "library_name": "weightatlas",
            "architecture": type(model).architecture,
            "num_classes": model.model_args["num_classes"],
            "model_args": dict(model.model_args),
        }
    raise WeightAtlasError(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)}")


def timm_export_config(model: nn.Module) -> dict[str, Any]:
    """timm's own Hub export (``save_config_for_hf``), with our preprocessing (inputs in [0, 1])."""

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
