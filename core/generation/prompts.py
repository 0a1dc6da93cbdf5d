"""Targets and prompts: the target's layer layout, its task, and the models that seed the draws."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.atlas import Atlas
from core.collection.specs import parse_model_spec, resolve_arch, spec_label
from core.embeddings.encode import position_code
from core.errors import WeightAtlasError
from core.generation.config import Progress, SampleConfig
from core.manifest import as_row
from core.models.families import FAMILIES
from core.models.registry import logits
from core.tokens.plan import tokenize_state_dict
from core.tokens.store import TokenStore
from core.zoos.tasks import TASKS, get_task, train_epochs

# target layout and prompts


@dataclass
class Target:
    """A resolved architecture with its task and tokenized layer table."""

    arch: Any  # core.collection.specs.ArchTarget
    task: str | None  # None: no task the atlas knows; generated unscored (see ``note``)
    scheme: str
    token_size: int
    layers: list[Any]  # LayerEntry
    positions: torch.Tensor  # (N, 3)
    excluded: list[dict[str, Any]]
    image_size: int | None = None  # model's expected input side, if it differs from the task's
    note: str | None = None  # why the target is unscored, shown to the user and in cards
    in_chans: int | None = None  # image channels the model takes (None: the task's own)
    _fresh: dict[int, nn.Module] = field(default_factory=dict, repr=False)
    _side: dict[str, int | None] = field(default_factory=dict, repr=False)  # see run_side
    _code: dict[tuple[int, float], torch.Tensor] = field(default_factory=dict, repr=False)

    def fresh(self, seed: int) -> nn.Module:
        """A copy of the freshly initialized instance for ``seed`` (initialized once, then copied)."""
        if seed not in self._fresh:
            self._fresh = {seed: self.arch.build(seed)}
        return copy.deepcopy(self._fresh[seed])

    def position_code(self, backbone: Any) -> torch.Tensor:
        """``(N, C)`` position code of the target's tokens for ``backbone`` (computed once: every
        encode and decode pass of a run shares it; see ``core.embeddings.encode.position_code``)."""
        key = (int(backbone.cfg.d_model), float(backbone.cfg.pos_base))
        if key not in self._code:
            self._code = {key: position_code(backbone, self.positions)}
        return self._code[key]

    @property
    def layout(self) -> list[tuple[str, tuple[int, ...], int, int]]:
        return layout_of(self.layers)


def layout_of(layers: list[Any]) -> list[tuple[str, tuple[int, ...], int, int]]:
    """What must match for tokens of one model to fill another: name, shape, offset, count."""
    return [(e.name, tuple(e.shape), int(e.offset), int(e.count)) for e in layers]


def default_task(spec: str) -> str:
    """The task a spec is sampled for when none is given: a zoo family's own, else digits10."""

    try:
        parsed = parse_model_spec(spec)
    except WeightAtlasError:
        return "digits10"  # resolving the spec names the problem
    if parsed.kind == "zoo" and parsed.ref in FAMILIES:
        return FAMILIES[parsed.ref].default_task
    return "digits10"


class TargetError(WeightAtlasError):
    """An architecture target that cannot be built, or cannot run on its task (one line)."""


NO_TASK = "none"  # an hf: target generated without a task even where its card names one


def _one_line(e: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tasks_by_kind() -> str:

    kinds: dict[str, list[str]] = {}
    for t in TASKS:
        kinds.setdefault(get_task(t).info.kind, []).append(t)
    return "; ".join(f"{k}: {', '.join(v[:3])}" for k, v in kinds.items())


def resolve_target(
    spec: str,
    scheme: str,
    token_size: int,
    task: str | None = None,
    width: int | None = None,
    depth: int | None = None,
) -> Target:
    """Resolve ``spec`` for ``task`` and tokenize a fresh instance to get its layer table.

    ``hf:`` targets take ``task``, else the task named in their card; with neither, with
    ``task=NO_TASK`` (``"none"``), or with a card task the atlas does not know, the target has
    ``task=None`` and a ``note``: it is generated unscored. A target with a task must run on it:
    a forward pass on two of the task's inputs gives finite ``(2, num_classes)`` logits (images
    are resized to the model's input side and grey <-> RGB converted where the model's config
    asks for it, see :func:`runnable`).

    Raises:
        TargetError: the target cannot be built or does not fit its task (one line).
    """

    note = None
    if parse_model_spec(spec).kind == "hf":
        chosen_none = task == NO_TASK
        arch = resolve_arch(spec, task=None if chosen_none else task)
        task_name = None if chosen_none else task or arch.task
        if chosen_none:
            note = "no task chosen"
        elif task_name is not None and task_name not in TASKS:
            note = f"its card names task {task_name!r}, which this atlas does not know"
            task_name = None
        elif task_name is None:
            note = "no task given and none in its card"
        if note is not None:
            note = (
                f"{spec_label(spec)}: {note}; generated unscored (no accuracy, no batch-norm conditioning; "
                "prompts: atlas models with its layer table, else untrained fresh instances; "
                f"draws kept in draw order). Tasks it could take: {_tasks_by_kind()}"
            )
    else:  # zoo families and timm names are sized for the task (head, input channels)
        if task == NO_TASK:
            raise TargetError(f"{spec} is built for a task (its head and inputs); choose one")
        task_name = task or default_task(spec)
        arch = resolve_arch(spec, task=task_name, width=width, depth=depth)
    try:
        model = arch.build(0)
    except WeightAtlasError:
        raise
    except Exception as e:  # a library refusing the config: one line, not a traceback
        raise TargetError(f"{spec_label(spec)} cannot be built: {_one_line(e)}") from None
    tok = tokenize_state_dict(model.state_dict(), scheme, token_size, model=model)
    if tok.n_tokens == 0:
        raise WeightAtlasError(f"{spec_label(spec)} has no trainable float tensors to generate")
    target = Target(
        arch,
        task_name,
        scheme,
        token_size,
        tok.layers,
        tok.positions,
        tok.excluded,
        _input_side(arch.config),
        note=note,
        in_chans=_input_chans(arch.config),
    )
    if task_name is not None:
        check_task_fit(model, target)
    return target


@torch.no_grad()
def check_task_fit(model: nn.Module, target: Target) -> None:
    """Raise TargetError unless ``model`` maps two task inputs to finite class logits.

    The issue-17 crash (a BERT target given the image task digits10 died inside
    ``modeling_bert``) becomes one line naming the task's inputs and the tasks that exist.
    """

    task = get_task(str(target.task))
    info = task.info
    X, _ = task.split("train")
    shape = "x".join(map(str, info.input_shape))
    hint = f"choose a task it takes ({_tasks_by_kind()}) or none (generated unscored)"
    was = model.training
    model.eval()
    try:
        out = logits(runnable(model, target), X[:2])
    except WeightAtlasError as e:  # core.models.registry.logits: an output without logits
        raise TargetError(
            f"{spec_label(target.arch.spec)} has no classification head ({type(model).__name__} "
            "returns features, not class logits), so it takes no task: generate it with none "
            f"(unscored) [{_one_line(e)}]"
        ) from None
    except Exception as e:
        raise TargetError(
            f"{spec_label(target.arch.spec)} does not run on {target.task} ({info.kind}, {shape} "
            f"{'token ids' if info.kind == 'sequence' else 'inputs'}): {_one_line(e)}; {hint}"
        ) from None
    finally:
        model.train(was)
    if tuple(out.shape) != (2, info.num_classes):
        raise TargetError(
            f"{spec_label(target.arch.spec)} gives outputs of shape {tuple(out.shape)[1:]} on {target.task}, "
            f"not {info.num_classes} class logits (a different head?); {hint}"
        )
    if not torch.isfinite(out).all():
        raise TargetError(
            f"{spec_label(target.arch.spec)} gives non-finite logits on {target.task}"
        )


def _input_side(config: dict[str, Any]) -> int | None:
    """The fixed input side a model was built for: timm's ``pretrained_cfg.input_size``, a
    transformers vision config's ``image_size``."""
    if not isinstance(config, dict):
        return None
    pcfg = config.get("pretrained_cfg")
    size = pcfg.get("input_size") if isinstance(pcfg, dict) else None
    if isinstance(size, list) and len(size) == 3:
        return int(size[-1])
    side = config.get("image_size")
    if isinstance(side, list | tuple) and len(side) == 2 and side[0] == side[1]:
        side = side[0]
    return int(side) if isinstance(side, int) and not isinstance(side, bool) and side > 0 else None


def _input_chans(config: dict[str, Any]) -> int | None:
    """Image channels a transformers vision config takes (``num_channels``), else None."""
    n = config.get("num_channels") if isinstance(config, dict) else None
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


# channel changes that keep an image's meaning: grey to RGB (copies), RGB to grey (mean)
SOUND_CHANNEL_CHANGES = {(1, 3), (3, 1)}


class _Adapt(nn.Module):
    """Feeds a model the task's images at the side and channels it was built for.

    Images are resized bilinearly to ``side`` (a timm ViT/Mixer at 224, a transformers ViT at its
    ``image_size``); one grey channel is copied to three, or three are averaged to one
    (``chans``). The wrapped model's parameters and buffers are its own, so training or
    conditioning through the wrapper changes the model itself.
    """

    def __init__(self, model: nn.Module, side: int | None, chans: int | None = None):
        super().__init__()
        self.model = model
        self.side = side
        self.chans = chans

    def forward(self, x: torch.Tensor) -> Any:  # (B, C, H, W)
        if x.dim() == 4 and self.chans is not None and x.shape[1] != self.chans:
            x = x.mean(1, keepdim=True) if self.chans == 1 else x.expand(-1, self.chans, -1, -1)
        if x.dim() == 4 and self.side is not None and x.shape[-1] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return self.model(x)


def run_chans(target: Target) -> int | None:
    """The channels the task's images are converted to, None for the task's own.

    Only grey <-> RGB (:data:`SOUND_CHANNEL_CHANGES`); a model taking other channel counts runs
    on no image task of another count.
    """
    if target.task is None or target.in_chans is None:
        return None
    info = get_task(target.task).info
    if info.kind != "image" or info.in_chans == target.in_chans:
        return None
    return target.in_chans if (info.in_chans, target.in_chans) in SOUND_CHANNEL_CHANGES else None


def runnable(model: nn.Module, target: Target) -> nn.Module:
    """``model`` itself, or wrapped so that the task's images are resized to ``run_side`` and
    converted to ``run_chans`` channels."""
    side, chans = run_side(model, target), run_chans(target)
    return model if side is None and chans is None else _Adapt(model, side, chans)


def input_adaptation(model: nn.Module, target: Target) -> str | None:
    """How the task's inputs are changed for the model, in words (None: taken as they are)."""
    if target.task is None:
        return None
    info = get_task(target.task).info
    side, chans = run_side(model, target), run_chans(target)
    parts = []
    if chans is not None:
        parts.append("grey copied to RGB" if chans == 3 else "RGB averaged to grey")
    if side is not None:
        parts.append(f"{info.img_size}x{info.img_size} resized to {side}x{side} px")
    return ", ".join(parts) or None


def task_fits(
    spec: str, scheme: str, token_size: int, tasks: list[str] | None = None
) -> dict[str, str | None]:
    """Which tasks an ``hf:`` target runs on: task -> None if it does, else the one-line reason.

    The model is built once; each task gets one forward pass on two of its inputs (adapted as
    :func:`runnable` adapts them), as :func:`resolve_target` checks a chosen task.
    """
    base = resolve_target(spec, scheme, token_size, task=NO_TASK)
    model = base.arch.build(0)
    out: dict[str, str | None] = {}
    for name in tasks if tasks is not None else list(TASKS):
        target = copy.copy(base)
        target.task, target.note, target._side = name, None, {}
        try:  # a fresh copy per task: a Swin keeps the window it shrank for a smaller input
            check_task_fit(copy.deepcopy(model), target)
            out[name] = None
        except TargetError as e:
            out[name] = str(e)
    return out


def run_side(model: nn.Module, target: Target) -> int | None:
    """The image side the target is trained and scored at, None for the task's own inputs.

    The task's own side where the architecture runs at it (CNNs with global pooling), else the
    smallest power-of-two multiple of it that runs (ConvNeXt's stride 32: 8 -> 32 px), else the
    size it was built for (a ViT with fixed 224 px patches). An 8x8 task is not upsampled to
    224 px when the architecture allows less (issue 17). Decided once per target: it depends on
    the architecture, not on the weights.
    """

    if target.task is None or target.image_size is None:
        return None
    info = get_task(target.task).info
    if info.kind != "image" or info.img_size == target.image_size:
        return None
    if "side" not in target._side:
        sides, side = [], info.img_size
        while side < target.image_size:
            sides.append(side)
            side *= 2
        chosen = next(
            (s for s in sides if _runs_at(model, info, s, target)), int(target.image_size)
        )
        target._side["side"] = None if chosen == info.img_size else chosen
    return target._side["side"]


def _runs_at(model: nn.Module, info: Any, side: int, target: Target | None = None) -> bool:
    """Whether a forward pass on ``side`` x ``side`` images works (on a copy: a transformers
    Swin shrinks its window for small inputs and keeps it, breaking later passes)."""
    model = copy.deepcopy(model)
    x = torch.zeros(2, info.in_chans, side, side)
    chans = run_chans(target) if target is not None else None
    if chans is not None:
        x = torch.zeros(2, chans, side, side)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
        return True
    except (RuntimeError, AssertionError, ValueError):
        return False
    finally:
        model.train(was)


def metric_of(row: dict[str, Any]) -> float:
    """The prompt ranking metric of an atlas model (``ModelRow.selection_accuracy``: validation
    accuracy, else test accuracy), -inf if it has neither."""
    value = as_row(row).selection_accuracy
    return float("-inf") if value is None else value


def atlas_prompts(a: Atlas, target: Target, limit: int) -> list[str]:
    """Atlas models with the target's exact layer table and task, best validation accuracy first."""

    store = TokenStore(a.tokens_dir)
    want = target.layout
    manifest = {r["id"]: r for r in a.manifest()}
    found = []
    for mid in store.ids:
        row = manifest.get(mid, {})
        task = (row.get("labels") or {}).get("task")
        if task is not None and target.task is not None and task != target.task:
            continue  # models without a task label (Hub models), or a target without a task,
            # match on layout alone
        if layout_of(store.layers(mid)) == want:
            found.append((metric_of(row), mid))
    found.sort(key=lambda t: (-t[0], t[1]))
    return [mid for _, mid in found[:limit]]


def prompt_recipe(target: Target, cfg: SampleConfig) -> tuple[int, float]:
    """``(epochs, lr)`` of fresh prompts: the preset's, scaled for sequence families.

    A sequence target whose family is a zoo family (``bert``, ``gpt2``) trains with that
    family's zoo recipe (``epoch_scale`` x epochs, ``lr_scale`` x lr): at the preset's 2 epochs
    and lr 1e-3 a tiny BERT stayed at chance (0.500) on seq-brackets, so its prompts carried
    nothing. Image and tabular targets keep the preset: their cost grows with the input side,
    and issue 17's time limit is for them.
    """
    epochs, lr = cfg.prompt_epochs, cfg.prompt_lr
    if target.task is None or get_task(target.task).info.kind != "sequence":
        return epochs, lr
    fam = FAMILIES.get(str(target.arch.extra.get("zoo_family") or target.arch.family))
    if fam is None or "sequence" not in fam.kinds:
        return epochs, lr
    return epochs * fam.epoch_scale, lr * fam.lr_scale


def fresh_prompts(
    target: Target, cfg: SampleConfig, progress: Progress | None = None
) -> list[nn.Module]:
    """``n_prompts`` freshly initialized instances trained on the target task with
    :func:`prompt_recipe` (untrained when the target has no task)."""
    epochs, lr = prompt_recipe(target, cfg)
    out = []
    for i in range(cfg.n_prompts):
        model = target.arch.build(cfg.seed * 1000 + 500 + i)
        if epochs > 0 and target.task is not None:
            train_epochs(runnable(model, target), target.task, epochs, lr, seed=cfg.seed * 1000 + i)
        out.append(model.eval())
        if progress is not None:
            progress(0.1 * (i + 1) / cfg.n_prompts, f"trained fresh prompt {i + 1}/{cfg.n_prompts}")
    return out


def _common_size(a: Atlas, arch: str, task: str | None) -> tuple[int | None, int | None]:
    """For a zoo family: the (width, depth) most common among the atlas' models of that family/task."""

    parsed = parse_model_spec(arch)
    if parsed.kind != "zoo":
        return None, None
    name = parsed.ref
    task = task or default_task(arch)
    sizes: Counter[tuple[int, int]] = Counter()
    for row in a.accepted():
        labels = row.get("labels") or {}
        if labels.get("family", row.get("family")) == name and labels.get("task") == task:
            w, d = labels.get("width"), labels.get("depth")
            if isinstance(w, int) and isinstance(d, int):
                sizes[(w, d)] += 1
    if not sizes:
        return None, None
    (w, d), _ = max(sizes.items(), key=lambda t: (t[1], -t[0][0], -t[0][1]))
    return w, d


def model_tokens(model: nn.Module, target: Target) -> torch.Tensor:
    """Tokens ``(N, D)`` of a model of the target architecture (padding zeroed)."""

    tok = tokenize_state_dict(model.state_dict(), target.scheme, target.token_size, model=model)
    if layout_of(tok.layers) != target.layout:
        raise WeightAtlasError("prompt model does not have the target's layer table")
    return tok.tokens.masked_fill(~tok.mask, 0.0)


# ---------------------------------------------------------------------------------------------
