"""Architecture targets for generation: ``zoo:``, ``timm:``, ``hf:`` specs resolved to buildable models."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.collection.facts import read_card
from core.errors import RejectedModel, WeightAtlasError
from core.models.families import FAMILIES, build_from_config
from core.models.io import (
    read_config,
    render_card,
    save_model_dir,
    stored_values,
    timm_export_config,
)
from core.models.registry import (
    check_build_size,
    empty_model,
    family_of,
    library_of,
    max_build_values,
)
from core.zoos.tasks import get_task

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
        config = timm_export_config(model)
        return ArchTarget(spec, "timm", family_of(config), config, task=task)
    if kind == "hf":
        path = _local_model_dir(rest, cache_dir)
        config = read_config(path)
        library = library_of(config)

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


def repo_id_of(path: str | Path) -> str | None:
    """``org/name`` of a folder in Hugging Face cache layout (``models--org--name/snapshots/REV``),
    else None."""
    p = Path(path)
    if p.parent.name != "snapshots" or not p.parent.parent.name.startswith("models--"):
        return None
    parts = p.parent.parent.name.removeprefix("models--").split("--")
    return "/".join(parts) if all(parts) else None


def spec_label(spec: str) -> str:
    """How an architecture spec is named to people and in folder names: an ``hf:`` folder by its
    repo id when it lies in a Hugging Face cache (not by its snapshot hash), else by its last
    folder name; ``zoo:`` and ``timm:`` specs as they are."""
    kind, _, rest = spec.partition(":")
    if kind != "hf" or not rest:
        return spec
    path = Path(rest)
    repo = repo_id_of(path)
    if repo is not None:
        return f"hf:{repo}"
    return f"hf:{path.name}" if path.is_dir() else spec  # else a repo id, named as typed


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

    try:
        meta = read_card(Path(path))
    except RejectedModel:
        return None
    block = meta.get("weightatlas")
    return block.get("task") if isinstance(block, dict) else None


# ---------------------------------------------------------------------------------------------
# timm architectures the Generate page offers

# small timm CNNs that build and run on the zoo's 8x8 / 16x16 one-channel tasks (checked by
# tests/test_app.py through timm_fit); the registry's other names are reached by search
TIMM_SUGGESTED = (
    "resnet10t",
    "resnet14t",
    "resnet18",
    "resnet26",
    "resnet34",
    "seresnet18",
    "mobilenetv3_small_050",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "mobilenetv2_050",
    "mobilenetv2_100",
    "efficientnet_b0",
    "efficientnet_lite0",
    "lcnet_050",
    "lcnet_100",
    "regnetx_002",
    "regnety_002",
    "ghostnet_050",
    "mnasnet_small",
    "mobilevit_xxs",
    "mixnet_s",
    "rexnet_100",
    "tinynet_e",
)
MAX_GENERATE_PARAMS = 50_000_000  # larger targets are refused before anything is built


def timm_search(query: str, limit: int = 60) -> list[str]:
    """timm registry names containing ``query`` (case-insensitive); suggested ones first."""
    import timm

    q = query.strip().lower()
    names = [n for n in timm.list_models() if q in n.lower()]
    first = [n for n in TIMM_SUGGESTED if n in names]
    return (first + [n for n in names if n not in first])[:limit]


def timm_fit(name: str, task: str) -> dict[str, Any]:
    """Can timm model ``name`` be built and trained for ``task`` here? Sized on the meta device.

    Builds the model with the task's classes and input channels on PyTorch's meta device (no
    memory is allocated) and runs one forward pass on a meta batch of the task's input shape.

    Returns:
        ``{"name", "params", "ok", "reason"}``: ``ok`` False with a one-line ``reason`` when
        the task is tabular, the model does not take the task's input size, or it has more than
        :data:`MAX_GENERATE_PARAMS` parameters.
    """

    import timm
    import torch

    out: dict[str, Any] = {"name": name, "params": None, "ok": False, "reason": None}
    if not timm.is_model(name):
        out["reason"] = f"timm has no model {name!r}"
        return out
    info = get_task(task).info
    if info.kind != "image":
        out["reason"] = f"timm models take images; {task} is a {info.kind} task"
        return out
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(
                name, pretrained=False, num_classes=info.num_classes, in_chans=info.in_chans
            )
            out["params"] = int(sum(p.numel() for p in model.parameters()))
            if out["params"] > MAX_GENERATE_PARAMS:
                out["reason"] = (
                    f"{out['params'] / 1e6:.1f} M parameters; the Generate page takes up to "
                    f"{MAX_GENERATE_PARAMS / 1e6:.0f} M"
                )
                return out
            model.eval()
            model(torch.empty(2, *info.input_shape))
    except Exception as e:  # any failure of the third-party build or forward: not offered
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        out["reason"] = (
            f"does not run on {task}'s {'x'.join(map(str, info.input_shape))} input: {first}"
        )
        return out
    out["ok"] = True
    return out
