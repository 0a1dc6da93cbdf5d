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
from typing import Any, Literal

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


SPEC_KINDS = ("zoo", "timm", "hf")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` (``zoo``, ``timm`` or ``hf``) and ``ref`` (a zoo family, a
    timm model name, or a model folder / repo id)."""

    kind: Literal["zoo", "timm", "hf"]
    ref: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}"


def parse_model_spec(spec: str, want: Literal["arch", "weights"] = "arch") -> ModelSpec:
    """The one parser of model specs (``sample --arch``, ``embed --model``, ``resolve_arch``).

    ``zoo:<family>``, ``timm:<name>`` and ``hf:<folder or repo id>`` are taken as written. A bare
    spec is a folder (``hf``) when one exists at that path; else, when an architecture is wanted
    (``want="arch"``), a zoo family (``zoo``) if it names one; else a repo id (``hf``: the local
    HF cache, or the Hub where the caller fetches). A caller that wants weights
    (``want="weights"``, ``embed --model``) reads ``gpt2`` as the Hub's, not the zoo family.

    Raises:
        WeightAtlasError: an empty spec, an unknown prefix, or a bare name that is both a folder
            and a zoo family (one line naming the two ways to write it).
    """
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    if sep and kind in SPEC_KINDS:
        if not rest.strip():
            raise WeightAtlasError(f"empty model spec {spec!r}: write {kind}:<name>")
        return ModelSpec(kind, rest.strip())  # type: ignore[arg-type]
    if not text or (sep and not Path(text).expanduser().exists()):
        raise WeightAtlasError(
            f"bad architecture spec {spec!r}; use zoo:<family>, timm:<name> or hf:<dir or repo id>"
        )
    folder = Path(text).expanduser().is_dir()
    if folder and text in FAMILIES and want == "arch":
        raise WeightAtlasError(
            f"{text!r} is both a folder here and a zoo family: write hf:./{text} for the folder "
            f"or zoo:{text} for the family"
        )
    if folder or text not in FAMILIES or want == "weights":
        return ModelSpec("hf", text)
    return ModelSpec("zoo", text)


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

    parsed = parse_model_spec(spec)
    kind, rest = parsed.kind, parsed.ref
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
