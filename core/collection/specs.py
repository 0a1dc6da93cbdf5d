"""Model specs, the one front door: ``zoo:``, ``timm:``, ``hf:`` specs resolved to buildable models.

``resolve_arch`` turns a spec into an ``ArchTarget`` (a config that builds fresh models and
saves them as Hub-format folders): ``zoo:<family>`` (or a bare family name) sized for a task,
``timm:<name>``, ``hf:<folder or repo id in the local HF cache>``. It sits in ``collection``
because it reads cards and the HF cache like the collector and sizes zoo and timm targets by
the zoo's tasks (``core.zoos.tasks``); the stages above (embeddings, generation) and the app
resolve specs through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import RejectedModel, WeightAtlasError
from core.models.families import FAMILIES, build_from_config
from core.models.formats import read_card
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
