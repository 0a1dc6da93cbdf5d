"""Weight generation: sample new models of a chosen architecture from the backbone's latent space.

    weightatlas sample ATLAS --arch zoo:resnet --n 10 --keep 3
    weightatlas sample ATLAS --arch timm:resnet18 --n 5 --keep 1 --task digits10
    weightatlas sample ATLAS --arch zoo:cnn --evaluate --heldout-task digits-invert
    weightatlas bench sample

Algorithm 3 of paper 003 (§2), with the sampling settings of paper 001 C.2:

1. Layer table of the target: a fresh instance of ``--arch`` (``core.architectures.resolve_arch``)
   is tokenized with the atlas' scheme; generated tokens are detokenized into exactly this
   layout, and everything the tokenizer leaves out (batch-norm statistics, integer buffers)
   comes from the fresh instance.
2. Prompt examples: the atlas models with the same layer table and task, best first by
   validation accuracy. With none, ``n_prompts`` fresh instances are trained ``prompt_epochs``
   epochs on the target task (003 §5: 1-5 examples, 1-5 epochs).
3. Prompts are embedded with haloing; a prior over each token position's latent is fitted:
   ``kde`` (Gaussian kernel density per token, bandwidth by Scott's rule with a floor) or
   ``gaussian`` (one diagonal Gaussian per token). The KDE bandwidth defaults to 0.1 x Scott:
   with 1-5 prompts from different epochs or runs, Scott's rule spreads draws across basins
   (on the ci atlas, sampled digits MLPs reached 0.24-0.58 val accuracy at 1 x Scott and
   0.42-0.73 at 0.1 x), and subsampling/bootstrapping widen the search where it pays.
4. Draws: ``independent`` mode draws every token of every sample on its own (its own kernel
   centre and its own noise); ``joint`` mode picks one prompt per sample for all tokens (a KDE
   over whole sequences) with independent noise per coordinate. No mode shares one noise
   vector across tokens.
5. Decode with haloing, detokenize, batch-norm conditioning (train-mode forward passes on the
   target's train split under ``torch.no_grad``: only running statistics change), score by
   validation accuracy, keep the best ``keep``. ``bootstrap_rounds`` re-fits the prior on the
   kept samples' latents and draws again; the best ``keep`` over all rounds are written.

Each kept model is a Hugging Face-format directory under ``ATLAS/generated/`` (config,
``model.safetensors``, README.md with provenance), loadable by ``core.architectures.load_model_dir``.
``evaluate_generation`` compares sampled models with random init of the same architecture under
the same fine-tuning budget and seeds (``ATLAS/results/generation.json`` / ``.md``).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.atlas import Atlas, atomic_write_bytes, write_json
from core.config import add_overrides_arg, build_config, parse_overrides, to_dict
from core.errors import WeightAtlasError

# Shapes: E prompts, K draws, N tokens of the target, D token size, L latent dim.

Progress = Callable[[float, str], None]


@dataclass
class SampleConfig:
    """Sampling settings (003 Alg. 3, 001 C.2)."""

    n: int = 10
    keep: int = 3
    mode: Literal["independent", "joint"] = "independent"
    prior: Literal["kde", "gaussian"] = "kde"
    bootstrap_rounds: int = 0
    max_prompts: int = 5
    n_prompts: int = 3  # fresh prompts when the atlas has none
    prompt_epochs: int = 2
    prompt_lr: float = 1e-3
    bandwidth_scale: float = 0.1  # times Scott's factor (see module docstring)
    bandwidth_floor: float = 0.02  # times the per-dim std over all prompt tokens
    halo: int | None = None
    window: int | None = None
    batch_size: int = 256  # windows per backbone call
    bn_batches: int = 4
    bn_batch_size: int = 128
    score_split: str = "val"
    seed: int = 0
    device: str = "cpu"


SAMPLE_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(n=6, keep=2, n_prompts=2, prompt_epochs=2, bn_batches=2),
    "demo": dict(n=20, keep=5, n_prompts=3, prompt_epochs=2),
    "paper": dict(n=50, keep=10, n_prompts=5, prompt_epochs=2, bn_batches=8),
}


@dataclass
class GenerationConfig:
    """Protocol of ``evaluate_generation`` (001 C.2: AdamW lr 1e-3, 5 epochs)."""

    epochs: tuple[int, ...] = (0, 1, 3, 5)
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0,)
    n: int = 10
    keep: int = 3
    heldout_task: str = "digits-invert"


GENERATION_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(seeds=(0,), n=6, keep=2),
    "demo": dict(seeds=(0, 1), n=20, keep=5),
}


# ---------------------------------------------------------------------------------------------
# target layout and prompts


@dataclass
class Target:
    """A resolved architecture with its task and tokenized layer table."""

    arch: Any  # core.architectures.ArchTarget
    task: str | None  # None: no task the atlas knows; generated unscored (see ``note``)
    scheme: str
    token_size: int
    layers: list[Any]  # LayerEntry
    positions: torch.Tensor  # (N, 3)
    excluded: list[dict[str, Any]]
    image_size: int | None = None  # model's expected input side, if it differs from the task's
    note: str | None = None  # why the target is unscored, shown to the user and in cards
    _fresh: dict[int, nn.Module] = field(default_factory=dict, repr=False)
    _side: dict[str, int | None] = field(default_factory=dict, repr=False)  # see run_side

    def fresh(self, seed: int) -> nn.Module:
        """A copy of the freshly initialized instance for ``seed`` (initialized once, then copied)."""
        if seed not in self._fresh:
            self._fresh = {seed: self.arch.build(seed)}
        return copy.deepcopy(self._fresh[seed])

    @property
    def layout(self) -> list[tuple[str, tuple[int, ...], int, int]]:
        return layout_of(self.layers)


def layout_of(layers: list[Any]) -> list[tuple[str, tuple[int, ...], int, int]]:
    """What must match for tokens of one model to fill another: name, shape, offset, count."""
    return [(e.name, tuple(e.shape), int(e.offset), int(e.count)) for e in layers]


def default_task(spec: str) -> str:
    """The task a spec is sampled for when none is given: a zoo family's own, else digits10."""
    from core.architectures import FAMILIES

    kind, _, rest = spec.partition(":")
    name = rest if rest else kind
    if (kind == "zoo" or not rest) and name in FAMILIES:
        return FAMILIES[name].default_task
    return "digits10"


class TargetError(WeightAtlasError):
    """An architecture target that cannot be built, or cannot run on its task (one line)."""


def _one_line(e: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tasks_by_kind() -> str:
    from core.datasets import TASKS, get_task

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

    ``hf:`` targets take ``task``, else the task named in their card; with neither (or a card
    task the atlas does not know) the target has ``task=None`` and a ``note``: it is generated
    unscored. A target with a task must run on it: a forward pass on two of the task's inputs
    gives finite ``(2, num_classes)`` logits.

    Raises:
        TargetError: the target cannot be built or does not fit its task (one line).
    """
    from core.architectures import resolve_arch
    from core.datasets import TASKS
    from core.tokenize import tokenize_state_dict

    note = None
    if spec.startswith("hf:"):
        arch = resolve_arch(spec, task=task)
        task_name = task or arch.task
        if task_name is not None and task_name not in TASKS:
            note = f"its card names task {task_name!r}, which this atlas does not know"
            task_name = None
        elif task_name is None:
            note = "no task given (--task) and none in its card"
        if note is not None:
            note = (
                f"{spec}: {note}; generated unscored (no accuracy, no batch-norm conditioning; "
                "prompts: atlas models with its layer table, else untrained fresh instances; "
                f"draws kept in draw order). Tasks it could take: {_tasks_by_kind()}"
            )
    else:  # zoo families and timm names are sized for the task (head, input channels)
        task_name = task or default_task(spec)
        arch = resolve_arch(spec, task=task_name, width=width, depth=depth)
    try:
        model = arch.build(0)
    except WeightAtlasError:
        raise
    except Exception as e:  # a library refusing the config: one line, not a traceback
        raise TargetError(f"{spec} cannot be built: {_one_line(e)}") from None
    tok = tokenize_state_dict(model.state_dict(), scheme, token_size, model=model)
    if tok.n_tokens == 0:
        raise WeightAtlasError(f"{spec} has no trainable float tensors to generate")
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
    from core.architectures import logits
    from core.datasets import get_task

    task = get_task(str(target.task))
    info = task.info
    X, _ = task.split("train")
    shape = "x".join(map(str, info.input_shape))
    hint = f"pass --task with a task it takes ({_tasks_by_kind()})"
    was = model.training
    model.eval()
    try:
        out = logits(runnable(model, target), X[:2])
    except Exception as e:
        raise TargetError(
            f"{target.arch.spec} does not run on {target.task} ({info.kind}, {shape} "
            f"{'token ids' if info.kind == 'sequence' else 'inputs'}): {_one_line(e)}; {hint}"
        ) from None
    finally:
        model.train(was)
    if tuple(out.shape) != (2, info.num_classes):
        raise TargetError(
            f"{target.arch.spec} gives outputs of shape {tuple(out.shape)[1:]} on {target.task}, "
            f"not {info.num_classes} class logits (a different head?); {hint}"
        )
    if not torch.isfinite(out).all():
        raise TargetError(f"{target.arch.spec} gives non-finite logits on {target.task}")


def _input_side(config: dict[str, Any]) -> int | None:
    """The fixed input side a timm model was built for (``pretrained_cfg.input_size``)."""
    pcfg = config.get("pretrained_cfg") if isinstance(config, dict) else None
    size = pcfg.get("input_size") if isinstance(pcfg, dict) else None
    return int(size[-1]) if isinstance(size, list) and len(size) == 3 else None


class _Resize(nn.Module):
    """Feeds a model built for a fixed input size (timm ViT/Mixer at 224) the task's images.

    Images are resized bilinearly; the wrapped model's parameters and buffers are its own, so
    training or conditioning through the wrapper changes the model itself.
    """

    def __init__(self, model: nn.Module, side: int):
        super().__init__()
        self.model = model
        self.side = side

    def forward(self, x: torch.Tensor) -> Any:  # (B, C, H, W)
        if x.dim() == 4 and x.shape[-1] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return self.model(x)


def runnable(model: nn.Module, target: Target) -> nn.Module:
    """``model`` itself, or wrapped so that the task's images are resized to ``run_side``."""
    side = run_side(model, target)
    return model if side is None else _Resize(model, side)


def run_side(model: nn.Module, target: Target) -> int | None:
    """The image side the target is trained and scored at, None for the task's own inputs.

    The task's own side where the architecture runs at it (CNNs with global pooling), else the
    smallest power-of-two multiple of it that runs (ConvNeXt's stride 32: 8 -> 32 px), else the
    size it was built for (a ViT with fixed 224 px patches). An 8x8 task is not upsampled to
    224 px when the architecture allows less (issue 17). Decided once per target: it depends on
    the architecture, not on the weights.
    """
    from core.datasets import get_task

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
        chosen = next((s for s in sides if _runs_at(model, info, s)), int(target.image_size))
        target._side["side"] = None if chosen == info.img_size else chosen
    return target._side["side"]


def _runs_at(model: nn.Module, info: Any, side: int) -> bool:
    """Whether a forward pass on ``side`` x ``side`` images works."""
    x = torch.zeros(2, info.in_chans, side, side)
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
    """The prompt ranking metric of an atlas model: validation accuracy, else test accuracy."""
    for key in ("val_accuracy", "test_accuracy", "accuracy"):
        for source in (row.get("labels") or {}, row.get("metrics") or {}):
            v = source.get(key)
            if isinstance(v, int | float) and math.isfinite(v):
                return float(v)
    return float("-inf")


def atlas_prompts(a: Atlas, target: Target, limit: int) -> list[str]:
    """Atlas models with the target's exact layer table and task, best validation accuracy first."""
    from core.store import TokenStore

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


def fresh_prompts(
    target: Target, cfg: SampleConfig, progress: Progress | None = None
) -> list[nn.Module]:
    """``n_prompts`` freshly initialized instances trained ``prompt_epochs`` on the target task
    (untrained when the target has no task)."""
    from core.datasets import train_epochs

    out = []
    for i in range(cfg.n_prompts):
        model = target.arch.build(cfg.seed * 1000 + 500 + i)
        if cfg.prompt_epochs > 0 and target.task is not None:
            train_epochs(
                runnable(model, target),
                target.task,
                cfg.prompt_epochs,
                cfg.prompt_lr,
                seed=cfg.seed * 1000 + i,
            )
        out.append(model.eval())
        if progress is not None:
            progress(0.1 * (i + 1) / cfg.n_prompts, f"trained fresh prompt {i + 1}/{cfg.n_prompts}")
    return out


def model_tokens(model: nn.Module, target: Target) -> torch.Tensor:
    """Tokens ``(N, D)`` of a model of the target architecture (padding zeroed)."""
    from core.tokenize import tokenize_state_dict

    tok = tokenize_state_dict(model.state_dict(), target.scheme, target.token_size, model=model)
    if layout_of(tok.layers) != target.layout:
        raise WeightAtlasError("prompt model does not have the target's layer table")
    return tok.tokens.masked_fill(~tok.mask, 0.0)


# ---------------------------------------------------------------------------------------------
# priors and draws


def scott_bandwidth(z: torch.Tensor, scale: float, floor: float) -> torch.Tensor:
    """Per-token, per-dim kernel bandwidth ``(N, L)`` from prompt latents ``z (E, N, L)``.

    Scott's rule ``std_e * E^(-1/(L+4))`` per token and dim, floored at ``floor`` times the
    per-dim std over all prompt tokens (so one prompt still gives a usable spread).
    """
    e, _, dim = z.shape
    std = z.std(0, unbiased=True) if e > 1 else torch.zeros_like(z[0])
    factor = scale * e ** (-1.0 / (dim + 4))
    global_std = z.reshape(-1, dim).std(0)  # (L,)
    return torch.maximum(factor * std, floor * global_std.expand_as(std))


def draw_latents(
    z: torch.Tensor,
    k: int,
    generator: torch.Generator,
    *,
    mode: str = "independent",
    prior: str = "kde",
    bandwidth_scale: float = 1.0,
    bandwidth_floor: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``k`` latent sequences from a per-token prior fitted to prompts ``z (E, N, L)``.

    Args:
        z: prompt latents.
        k: number of draws.
        generator: the only source of randomness.
        mode: ``independent`` (every token draws its own kernel centre) or ``joint`` (one
            prompt per draw for all tokens); noise is independent per coordinate in both.
        prior: ``kde`` (Gaussian kernels on the prompts) or ``gaussian`` (diagonal Gaussian
            per token with the prompts' mean and std, floored like the KDE bandwidth).
        bandwidth_scale: multiplies Scott's factor (KDE).
        bandwidth_floor: minimum spread as a fraction of the per-dim std over all tokens.

    Returns:
        ``(draws (K, N, L), centres (K, N))``: the kernel centre (prompt index) of every token,
        or -1 for the Gaussian prior.
    """
    if mode not in ("independent", "joint"):
        raise WeightAtlasError(f"unknown sampling mode {mode!r}; choose independent or joint")
    if prior not in PRIORS:
        raise WeightAtlasError(f"unknown prior {prior!r}; choose from {', '.join(PRIORS)}")
    return PRIORS[prior](z, k, generator, mode, bandwidth_scale, bandwidth_floor)


def _kde(
    z: torch.Tensor, k: int, g: torch.Generator, mode: str, scale: float, floor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    e, n, dim = z.shape
    bw = scott_bandwidth(z, scale, floor)  # (N, L)
    if mode == "independent":
        centres = torch.randint(0, e, (k, n), generator=g)
    else:
        centres = torch.randint(0, e, (k, 1), generator=g).expand(k, n)
    mean = z[centres, torch.arange(n)[None, :]]  # (K, N, L)
    noise = torch.randn(k, n, dim, generator=g, dtype=z.dtype)
    return mean + noise * bw[None], centres.contiguous()


def _gaussian(
    z: torch.Tensor, k: int, g: torch.Generator, mode: str, scale: float, floor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    e, n, dim = z.shape
    mu = z.mean(0)
    std = z.std(0, unbiased=True) if e > 1 else torch.zeros_like(mu)
    std = torch.maximum(std, floor * z.reshape(-1, dim).std(0).expand_as(std))
    noise = torch.randn(k, n, dim, generator=g, dtype=z.dtype)
    return mu[None] + noise * std[None], torch.full((k, n), -1, dtype=torch.long)


PRIORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "kde": _kde,
    "gaussian": _gaussian,
}


# ---------------------------------------------------------------------------------------------
# decode, load, condition, score


def decode_latents(
    backbone: Any, draws: torch.Tensor, target: Target, cfg: SampleConfig
) -> torch.Tensor:
    """Haloed decode of ``draws (K, N, L)`` into tokens ``(K, N, D)``."""
    from core.embed import haloed_apply, resolve_window

    window, halo = resolve_window(_embed_cfg(cfg), backbone)
    return haloed_apply(
        backbone.decode, draws, target.positions, window, halo, cfg.batch_size
    ).float()


def _embed_cfg(cfg: SampleConfig) -> Any:
    from core.embed import EmbedConfig

    return EmbedConfig(
        window=cfg.window, halo=cfg.halo, batch_size=cfg.batch_size, device=cfg.device
    )


def encode_models(
    backbone: Any, tokens: list[torch.Tensor], target: Target, cfg: SampleConfig
) -> torch.Tensor:
    """Haloed latents ``(E, N, L)`` of prompt tokens."""
    from core.embed import encode_tokens

    return torch.stack(
        [encode_tokens(backbone, t, target.positions, _embed_cfg(cfg)) for t in tokens]
    )


def build_generated(tokens: torch.Tensor, target: Target, seed: int) -> nn.Module:
    """A fresh target instance with its trainable tensors replaced by detokenized ``tokens (N, D)``.

    Buffers (batch-norm statistics, counters) keep the fresh instance's values until
    :func:`condition_batchnorm`. Raises if any key or shape differs from the target.
    """
    from core.architectures import load_weights_strict
    from core.tokenize import detokenize

    model = target.fresh(seed)
    generated = detokenize(tokens, target.layers)
    state = dict(model.state_dict())
    missing = set(generated) - set(state)
    if missing:
        raise WeightAtlasError(f"generated tensors not in the target: {sorted(missing)[:3]}")
    state.update(generated)
    load_weights_strict(model, state)
    return model.eval()


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def condition_batchnorm(
    model: nn.Module, target: Target, batches: int, batch_size: int, seed: int
) -> int:
    """Reset and re-estimate batch-norm running statistics on target train data (003 §2).

    The model runs in train mode under ``torch.no_grad`` with cumulative averaging
    (``momentum=None``), so only running statistics (buffers) change; no weight is updated.

    Returns:
        The number of batch-norm modules conditioned (0: nothing to do).
    """
    from core.architectures import logits
    from core.datasets import get_task

    bns = _batchnorms(model)
    if not bns or target.task is None:
        return 0
    X, _ = get_task(target.task).split("train")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(X), generator=g)
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    net = runnable(model, target)
    try:
        for b in range(batches):
            idx = order[(b * batch_size) % len(X) :][:batch_size]
            if len(idx) < 2:
                idx = order[:batch_size]
            logits(net, X[idx])
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was)
    model.eval()
    return len(bns)


def score(model: nn.Module, target: Target, split: str) -> float:
    """Accuracy of the model on one split of the target task (NaN without a task)."""
    from core.datasets import evaluate_accuracy

    if target.task is None:
        return math.nan
    return float(evaluate_accuracy(runnable(model, target), target.task, split))


# ---------------------------------------------------------------------------------------------
# the stage


@dataclass
class Candidate:
    """One decoded draw: its latents, model and validation score."""

    z: torch.Tensor  # (N, L)
    model: nn.Module
    val: float
    round: int
    draw: int


@dataclass
class SampleResult:
    """What one sampling run produced (``sample`` writes it; ``generate`` returns it)."""

    kept: list[Candidate]
    prompts: list[str]
    prompt_source: str
    prompt_scores: list[float]
    scores: list[float] = field(default_factory=list)  # every draw's val accuracy
    seconds: dict[str, float] = field(default_factory=dict)


def generate(
    backbone: Any,
    target: Target,
    prompt_tokens: list[torch.Tensor],
    cfg: SampleConfig,
    progress: Progress | None = None,
    progress_span: tuple[float, float] = (0.1, 0.95),
    z: torch.Tensor | None = None,
) -> tuple[list[Candidate], list[float], dict[str, float]]:
    """Embed prompts, draw, decode, condition, score; keep the best ``cfg.keep`` (all rounds).

    ``z``: the prompts' latents ``(E, N, L)`` if already encoded (see :func:`round_trip`).

    Returns:
        ``(kept candidates best first, every draw's score, seconds per phase)``.
    """
    lo, hi = progress_span
    secs = {"embed": 0.0, "draw": 0.0, "decode": 0.0, "build": 0.0, "condition": 0.0, "score": 0.0}
    t0 = time.perf_counter()
    if z is None:
        z = encode_models(backbone, prompt_tokens, target, cfg)  # (E, N, L)
    secs["embed"] += time.perf_counter() - t0
    g = torch.Generator().manual_seed(cfg.seed)
    pool: list[Candidate] = []
    scores: list[float] = []
    rounds = 1 + cfg.bootstrap_rounds
    total = rounds * cfg.n
    done = 0
    for r in range(rounds):
        t0 = time.perf_counter()
        draws, _ = draw_latents(
            z,
            cfg.n,
            g,
            mode=cfg.mode,
            prior=cfg.prior,
            bandwidth_scale=cfg.bandwidth_scale,
            bandwidth_floor=cfg.bandwidth_floor,
        )
        secs["draw"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        tokens = decode_latents(backbone, draws, target, cfg)  # (K, N, D)
        secs["decode"] += time.perf_counter() - t0
        round_pool = []
        for i in range(cfg.n):
            t0 = time.perf_counter()
            model = build_generated(tokens[i], target, seed=cfg.seed)
            secs["build"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            condition_batchnorm(model, target, cfg.bn_batches, cfg.bn_batch_size, seed=cfg.seed + i)
            secs["condition"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            val = score(model, target, cfg.score_split)
            secs["score"] += time.perf_counter() - t0
            scores.append(val)
            round_pool.append(Candidate(draws[i], model, val, r, i))
            done += 1
            if progress is not None:
                progress(
                    lo + (hi - lo) * done / total,
                    f"round {r + 1}/{rounds}: draw {i + 1}/{cfg.n} "
                    + (f"val {val:.3f}" if math.isfinite(val) else "unscored"),
                )
        round_pool.sort(key=_rank)
        pool = sorted(pool + round_pool, key=_rank)[: cfg.keep]
        if r + 1 < rounds:
            z = torch.stack(
                [c.z for c in round_pool[: max(cfg.keep, 1)]]
            )  # bootstrap: best of round
    return pool, scores, secs


def _rank(c: Candidate) -> tuple[float, int, int]:
    """Best validation score first; unscored (NaN) draws keep their draw order."""
    return (-c.val if math.isfinite(c.val) else math.inf, c.round, c.draw)


def _finite(v: float | None) -> float | None:
    """``v``, or None for NaN/None (JSON and YAML have no NaN)."""
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")


def _card(target: Target, cand: Candidate, rank: int, info: dict[str, Any]) -> str:
    from core.architectures import render_card
    from core.datasets import PIPELINE_TAGS, get_task

    task = get_task(target.task).info if target.task is not None else None
    dataset = task.dataset if task is not None else None
    val, test = _finite(cand.val), _finite(info["test_accuracy"])
    block = {
        "generated": True,
        "arch": target.arch.spec,
        "family": target.arch.family,
        "task": target.task,
        "dataset": dataset,
        "scored": task is not None,
        "val_accuracy": val,
        "test_accuracy": test,
        "rank": rank,
        "round": cand.round,
        "draw": cand.draw,
        **{k: v for k, v in info.items() if k != "test_accuracy"},
    }
    if target.note:
        block["note"] = target.note
    meta: dict[str, Any] = {
        "library_name": target.arch.library,
        "tags": [t for t in ("weightatlas", "generated", target.arch.family, target.task) if t],
    }
    if task is not None:
        meta["datasets"] = [task.dataset]
        meta["model-index"] = [
            {
                "name": info["name"],
                "results": [
                    {
                        "task": {"type": PIPELINE_TAGS[task.kind]},
                        "dataset": {"name": task.dataset, "type": task.dataset},
                        "metrics": [
                            {"type": "accuracy", "name": "val_accuracy", "value": val},
                            {"type": "accuracy", "name": "test_accuracy", "value": test},
                        ],
                    }
                ],
            }
        ]
    meta["weightatlas"] = block
    head = (
        f"Generated by Weight Atlas from the latent space of backbone `{info['backbone']}` with "
        f"{len(info['prompts'])} {info['prompt_source']} prompt example(s), prior `{info['prior']}`, "
        f"mode `{info['mode']}`, seed {info['seed']}, kept rank {rank + 1} of {info['n']} draws "
        f"({info['bootstrap_rounds']} bootstrap rounds). "
    )
    if task is not None:
        body = head + (
            f"Batch-norm statistics were conditioned on the `{target.task}` train split. "
            f"Validation accuracy {cand.val:.4f}, test accuracy {info['test_accuracy']:.4f} "
            "(no fine-tuning)."
        )
        if "chance_accuracy" in info:
            body += (
                f" {'**At chance level**' if info.get('at_chance') else 'Above chance'}: chance "
                f"{info['chance_accuracy']:.4f} (threshold {info['chance_threshold']:.4f}), "
                f"random init {info['random_init_val_accuracy']:.4f} (validation)."
            )
        title = f"Generated {target.arch.spec} for {target.task}"
    else:
        body = head + f"**Unscored**: {target.note}"
        title = f"Generated {target.arch.spec} (unscored, no task)"
    return render_card(meta, title, body)


def generated_atlas_distance(
    a: Atlas, path: Path, backbone: Any, backbone_dir: str | Path | None, cfg: SampleConfig
) -> dict[str, Any]:
    """Card fields placing a written model against the atlas: embedded as ``weightatlas embed
    --model`` embeds a folder, then ``core.embed.atlas_distance`` (with its architecture).

    Returns:
        ``{atlas_distance, atlas_percentile, outside_atlas, atlas_distance_meaning,
        architecture_in_atlas, architecture_note, ...}``; ``{}`` when the atlas has no
        embeddings for this backbone (``weightatlas embed`` not run).
    """
    from core.embed import (
        EMBED_PRESETS,
        EmbedConfig,
        atlas_distance,
        embed_model_dir_full,
        embeddings_dir,
        model_architecture,
    )

    if not (embeddings_dir(a, backbone_dir) / "models.safetensors").exists():
        return {}
    ecfg = build_config(EmbedConfig, EMBED_PRESETS, "ci", overrides={"device": cfg.device})
    v = embed_model_dir_full(path, a.root, cfg=ecfg, check=False, backbone=backbone)["z"]
    ad = atlas_distance(a.root, v.numpy(), backbone_dir, architecture=model_architecture(path))
    return {
        "atlas_distance": ad["distance"],
        "atlas_percentile": ad["percentile"],
        "outside_atlas": ad["outside"],
        "atlas_distance_k": ad["k"],
        "atlas_distance_metric": ad["metric"],
        "atlas_distance_meaning": ad["meaning"],
        "architecture": ad["architecture"],
        "architecture_in_atlas": ad["architecture_in_atlas"],
        "architecture_note": ad["architecture_note"],
    }


def _write_model_dir(target: Target, model: nn.Module, out: Path, card: str) -> Path:
    """Write a Hub-format directory atomically (temp dir renamed into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        target.arch.save(model, tmp, card=card)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def progress_file_writer(path: str | Path) -> Callable[..., None]:
    """A progress callback writing ``{fraction, message, done, error, outputs}`` atomically."""
    path = Path(path)

    def write(
        fraction: float,
        message: str,
        done: bool = False,
        error: str | None = None,
        outputs: list[str] | None = None,
    ) -> None:
        write_json(
            path,
            {
                "fraction": float(fraction),
                "message": message,
                "done": done,
                "error": error,
                "outputs": outputs or [],
            },
        )

    return write


def sample(
    atlas: str | Path,
    arch: str,
    n: int | None = None,
    keep: int | None = None,
    prompts: list[str] | None = None,
    mode: str | None = None,
    prior: str | None = None,
    bootstrap_rounds: int | None = None,
    seed: int | None = None,
    task: str | None = None,
    progress: Progress | None = None,
    *,
    preset: str | None = "ci",
    width: int | None = None,
    depth: int | None = None,
    backbone_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[Path]:
    """Generate ``keep`` models of architecture ``arch`` and write them under ``ATLAS/generated/``.

    Args:
        atlas: a tokenized atlas with a trained backbone.
        arch: ``zoo:<family>``, ``timm:<name>`` or ``hf:<dir or id>``.
        n: draws per round (K).
        keep: models kept by validation accuracy (M).
        prompts: atlas model ids to use as prompt examples (default: best matching models,
            else freshly trained instances).
        mode: ``independent`` or ``joint`` (see :func:`draw_latents`).
        prior: ``kde`` or ``gaussian``.
        bootstrap_rounds: extra rounds re-fitting the prior on the kept latents.
        seed: seed of prompts, draws and conditioning.
        task: the target task (default: the family's own, else ``digits10``).
        progress: ``progress(fraction, message)`` callback.
        preset: a ``SAMPLE_PRESETS`` name for the remaining settings.
        width, depth: zoo family size (default: the size most common among atlas models of
            that family and task, else the smallest).
        backbone_dir: another backbone directory.
        out_dir: where to write (default ``ATLAS/generated``).
        overrides: other ``SampleConfig`` fields.

    Returns:
        The written model directories, best first.
    """
    from core.embed import _load_backbone, backbone_fingerprint, token_scheme
    from core.store import TokenStore

    a = Atlas.open(atlas)
    given = dict(
        n=n, keep=keep, mode=mode, prior=prior, bootstrap_rounds=bootstrap_rounds, seed=seed
    )
    cfg = build_config(
        SampleConfig,
        SAMPLE_PRESETS,
        preset,
        overrides={**(overrides or {}), **{k: v for k, v in given.items() if v is not None}},
    )
    if cfg.keep < 1 or cfg.n < cfg.keep:
        raise WeightAtlasError(f"need 1 <= keep <= n, got keep={cfg.keep}, n={cfg.n}")
    report = progress or (lambda f, m: None)
    report(0.0, f"resolving {arch}")
    scheme, size = token_scheme(a)
    if width is None and depth is None:
        width, depth = _common_size(a, arch, task)
    target = resolve_target(arch, scheme, size, task=task, width=width, depth=depth)
    if target.note:
        tqdm.write(f"note: {target.note}", file=sys.stderr)  # above any progress bar
        report(0.0, "no task: generating unscored")
    bdir = Path(backbone_dir) if backbone_dir is not None else a.backbone_dir
    backbone = _load_backbone(a, bdir, cfg.device)
    if backbone.cfg.token_size != size:
        raise WeightAtlasError(
            f"backbone token size {backbone.cfg.token_size} != token store's {size}"
        )
    store = TokenStore(a.tokens_dir)
    t_start = time.perf_counter()
    if prompts:
        unknown = [p for p in prompts if p not in store]
        if unknown:
            raise WeightAtlasError(f"prompt {unknown[0]!r} is not in the token store")
        bad = [p for p in prompts if layout_of(store.layers(p)) != target.layout]
        if bad:
            raise WeightAtlasError(
                f"prompt {bad[0]!r} does not have the layer table of {arch} for {target.task}"
            )
        prompt_ids, source = list(prompts), "atlas"
    else:
        prompt_ids, source = atlas_prompts(a, target, cfg.max_prompts), "atlas"
    if prompt_ids:
        prompt_tokens = [_store_tokens(store, p) for p in prompt_ids]
        manifest = {r["id"]: r for r in a.manifest()}
        prompt_scores = [metric_of(manifest.get(p, {})) for p in prompt_ids]
    else:
        source = "fresh"
        models = fresh_prompts(target, cfg, report)
        prompt_tokens = [model_tokens(m, target) for m in models]
        prompt_scores = [_finite(score(m, target, cfg.score_split)) for m in models]
        prompt_ids = [
            f"fresh:{arch}:seed{cfg.seed * 1000 + 500 + i}:"
            f"{cfg.prompt_epochs if target.task is not None else 0}ep"
            for i in range(len(models))
        ]
    report(0.1, f"{len(prompt_ids)} {source} prompt(s); drawing {cfg.n}")
    t0 = time.perf_counter()
    z, fidelity = round_trip(backbone, target, prompt_tokens, cfg)
    baseline = chance_baseline(target, cfg)
    r2 = fidelity["round_trip_median_layer_r2"]
    trips = fidelity["round_trip_val_accuracy"]
    pairs = ", ".join(
        f"{p:.3f} -> {q:.3f}"
        for p, q in zip(prompt_scores, trips)
        if p is not None and q is not None
    )
    reasons = [] if r2 is not None and r2 >= 0.5 else ["per-layer R² below 0.5"]
    if (
        baseline is not None
        and trips
        and all(q is not None and q <= baseline["chance_threshold"] for q in trips)
    ):
        reasons.append("the prompts score at chance after the round trip")
    tqdm.write(
        f"{'warning' if reasons else 'fidelity'}: encode-decode of the {len(prompt_tokens)} "
        f"{source} prompt(s): median per-layer R² (conv/linear) "
        + (f"{r2:.3f}" if r2 is not None else "n/a")
        + (f", val accuracy {pairs}" if pairs else "")
        + (f" (chance {baseline['chance_accuracy']:.3f})" if baseline is not None else "")
        + (f"; low ({' and '.join(reasons)}): expect weak generated models" if reasons else ""),
        file=sys.stderr,
    )
    fidelity["round_trip_seconds"] = round(time.perf_counter() - t0, 3)
    kept, scores, secs = generate(backbone, target, prompt_tokens, cfg, report, z=z)
    at_chance = [baseline is not None and c.val <= baseline["chance_threshold"] for c in kept]
    if baseline is not None and kept and all(at_chance):
        prompt_text = ", ".join(f"{v:.3f}" for v in prompt_scores if v is not None) or "n/a"
        tqdm.write(
            f"warning: every kept model is at chance level on {target.task} "
            f"(best val {kept[0].val:.3f}; chance {baseline['chance_accuracy']:.3f}, "
            f"random init {baseline['random_init_val_accuracy']:.3f}, prompts {prompt_text}): "
            "the backbone does not generate this architecture usefully here",
            file=sys.stderr,
        )
    fp = backbone_fingerprint(bdir)
    root = Path(out_dir) if out_dir is not None else a.generated_dir
    base = f"{_slug(arch)}--{_slug(target.task or 'unscored')}--seed{cfg.seed}"
    outputs = []
    for rank, cand in enumerate(kept):
        name = f"{base}--{rank:02d}"
        info = {
            "name": name,
            "backbone": fp,
            "backbone_dir": str(bdir),
            "prompts": prompt_ids,
            "prompt_source": source,
            "prompt_scores": prompt_scores,
            "seed": cfg.seed,
            "mode": cfg.mode,
            "prior": cfg.prior,
            "n": cfg.n,
            "keep": cfg.keep,
            "bootstrap_rounds": cfg.bootstrap_rounds,
            "draw_val_accuracies": [_finite(v) for v in scores],
            "input_side": run_side(cand.model, target),  # None: the task's own inputs
            "seconds": {k: round(v, 3) for k, v in secs.items()},
            "test_accuracy": score(cand.model, target, "test"),
            **(baseline or {}),
            "at_chance": at_chance[rank] if baseline is not None else None,
            **{k: v for k, v in fidelity.items() if k != "round_trip_layer_r2"},
        }
        path = _write_model_dir(target, cand.model, root / name, _card(target, cand, rank, info))
        placed = generated_atlas_distance(a, path, backbone, backbone_dir, cfg)
        if placed:  # issue 16: how far the generated model is from the collected ones
            info.update(placed)
            atomic_write_bytes(path / "README.md", _card(target, cand, rank, info).encode())
        outputs.append(path)
    seconds = time.perf_counter() - t_start
    report(1.0, f"wrote {len(outputs)} model(s) in {seconds:.1f} s")
    return outputs


def round_trip(
    backbone: Any, target: Target, prompt_tokens: list[torch.Tensor], cfg: SampleConfig
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Encode-decode fidelity on the prompts, before any draw (issue 17's "before a run").

    Returns:
        ``(z, fidelity)``: the prompts' latents ``(E, N, L)`` (reused for the draws) and
        ``{"round_trip_median_layer_r2" (over conv and linear layers, all layers if none),
        "round_trip_layer_r2" (per layer, median over prompts), "round_trip_val_accuracy" (per
        prompt, None without a task)}``. A layer's R² is ``1 - SSE / SST`` of its values;
        constant layers are left out.
    """
    from core.tokenize import detokenize

    z = encode_models(backbone, prompt_tokens, target, cfg)
    rec = decode_latents(backbone, z, target, cfg)  # (E, N, D)
    per_layer: dict[str, list[float]] = {}
    accs: list[float | None] = []
    for i, tokens in enumerate(prompt_tokens):
        ref, got = detokenize(tokens, target.layers), detokenize(rec[i], target.layers)
        for name, x in ref.items():
            x = x.double().flatten()
            sst = float(((x - x.mean()) ** 2).sum())
            if sst > 0:
                sse = float(((x - got[name].double().flatten()) ** 2).sum())
                per_layer.setdefault(name, []).append(1.0 - sse / sst)
        model = build_generated(rec[i], target, seed=cfg.seed)
        condition_batchnorm(model, target, cfg.bn_batches, cfg.bn_batch_size, seed=cfg.seed)
        accs.append(_finite(score(model, target, cfg.score_split)))
    layer_r2 = {k: float(np.median(v)) for k, v in per_layer.items()}
    main = {e.name for e in target.layers if e.kind in ("conv", "linear")} & set(layer_r2)
    vals = [layer_r2[k] for k in (main or layer_r2)]  # the weight matrices, as in training
    median = float(np.median(vals)) if vals else None
    return z, {
        "round_trip_median_layer_r2": median,
        "round_trip_layer_r2": layer_r2,
        "round_trip_val_accuracy": accs,
    }


def chance_baseline(target: Target, cfg: SampleConfig) -> dict[str, float] | None:
    """What a kept model's validation accuracy is compared with (None without a task).

    ``chance_accuracy``: the most frequent class' share of the score split (a constant
    predictor); ``chance_threshold``: chance plus three binomial standard errors on that split,
    at or below which a model is labelled at chance; ``random_init_val_accuracy``: the fresh
    init of the draws' seed, batch norm conditioned the same way.
    """
    from core.datasets import get_task

    if target.task is None:
        return None
    _, y = get_task(target.task).split(cfg.score_split)
    p = float(torch.bincount(y).max()) / len(y)
    model = target.fresh(cfg.seed)
    condition_batchnorm(model, target, cfg.bn_batches, cfg.bn_batch_size, seed=cfg.seed)
    return {
        "chance_accuracy": p,
        "chance_threshold": p + 3.0 * math.sqrt(p * (1.0 - p) / len(y)),
        "random_init_val_accuracy": score(model, target, cfg.score_split),
    }


def _store_tokens(store: Any, model_id: str) -> torch.Tensor:
    tok = store.get(model_id)
    return tok.tokens.masked_fill(~tok.mask, 0.0)


def _common_size(a: Atlas, arch: str, task: str | None) -> tuple[int | None, int | None]:
    """For a zoo family: the (width, depth) most common among the atlas' models of that family/task."""
    from collections import Counter

    kind, _, rest = arch.partition(":")
    name = rest if rest else kind
    if rest and kind != "zoo":
        return None, None
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


# ---------------------------------------------------------------------------------------------
# evaluation of generated models


def _finetune_curve(
    model: nn.Module, target: Target, epochs: tuple[int, ...], lr: float, seed: int
) -> dict[int, float]:
    """Test accuracy after each cumulative epoch budget in ``epochs`` (0 = zero-shot)."""
    from core.datasets import train_epochs

    out: dict[int, float] = {}
    done = 0
    net = runnable(model, target)
    for e in sorted(epochs):
        if e > done:
            train_epochs(net, target.task, e - done, lr, seed=seed * 100 + done)
            done = e
        out[e] = score(model, target, "test")
    return out


def evaluate_generation(
    atlas: str | Path,
    arch: str,
    task: str | None = None,
    heldout_task: str | None = None,
    *,
    preset: str | None = "ci",
    sample_preset: str | None = "ci",
    overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Sampled vs random init, zero-shot and after fine-tuning, in-distribution and held out.

    For each task and seed, ``sample`` draws ``n`` and keeps ``keep`` models; the same number
    of random-init models of the same architecture (init seeds ``seed*100 + i``) are fine-tuned
    with the same epochs, learning rate and shuffling seeds. The held-out task must be absent
    from the atlas' collection, so its prompts are freshly trained instances (003 §5).

    Returns:
        The dict written to ``ATLAS/results/generation.json`` (also ``generation.md``).
    """
    from core.embed import token_scheme

    a = Atlas.open(atlas)
    gcfg = build_config(GenerationConfig, GENERATION_PRESETS, preset, overrides=overrides)
    task = task or default_task(arch)
    heldout = heldout_task or gcfg.heldout_task
    collected = {(r.get("labels") or {}).get("task") for r in a.accepted()}
    if heldout in collected:
        raise WeightAtlasError(
            f"held-out task {heldout!r} is in the atlas' collection; pick a task it lacks"
        )
    scheme, size = token_scheme(a)
    report = progress or (lambda f, m: None)
    rows = []
    settings = [("in-distribution", task), ("held-out", heldout)]
    for si, (setting, task_name) in enumerate(settings):
        for seed in gcfg.seeds:
            gen_dir = a.generated_dir / "evaluation"
            paths = sample(
                a.root,
                arch,
                n=gcfg.n,
                keep=gcfg.keep,
                seed=seed,
                task=task_name,
                preset=sample_preset,
                out_dir=gen_dir,
            )
            from core.architectures import load_model_dir

            width, depth = _common_size(a, arch, task_name)
            target = resolve_target(arch, scheme, size, task=task_name, width=width, depth=depth)
            card = _read_card_block(paths[0])
            for i, p in enumerate(paths):
                model = load_model_dir(p).model
                curve = _finetune_curve(model, target, gcfg.epochs, gcfg.lr, seed=seed * 100 + i)
                rows.append(
                    {
                        "setting": setting,
                        "task": task_name,
                        "seed": seed,
                        "init": "sampled",
                        "model": i,
                        "curve": curve,
                        "prompt_source": card.get("prompt_source"),
                    }
                )
                rnd = target.arch.build(seed * 100 + i)
                curve = _finetune_curve(rnd, target, gcfg.epochs, gcfg.lr, seed=seed * 100 + i)
                rows.append(
                    {
                        "setting": setting,
                        "task": task_name,
                        "seed": seed,
                        "init": "random",
                        "model": i,
                        "curve": curve,
                    }
                )
            report((si + 1) / len(settings), f"{setting}: seed {seed} done")
    table = _aggregate(rows, gcfg.epochs)
    out = {
        "arch": arch,
        "tasks": {"in-distribution": task, "held-out": heldout},
        "config": to_dict(gcfg),
        "rows": rows,
        "table": table,
    }
    write_json(a.results_dir / "generation.json", out)
    atomic_write_bytes(a.results_dir / "generation.md", generation_markdown(out).encode())
    return out


def _read_card_block(path: Path) -> dict[str, Any]:
    from huggingface_hub import metadata_load

    meta = metadata_load(path / "README.md") or {}
    block = meta.get("weightatlas")
    return block if isinstance(block, dict) else {}


def _aggregate(rows: list[dict[str, Any]], epochs: tuple[int, ...]) -> list[dict[str, Any]]:
    out = []
    for setting in ("in-distribution", "held-out"):
        for init in ("sampled", "random"):
            sel = [r for r in rows if r["setting"] == setting and r["init"] == init]
            if not sel:
                continue
            entry: dict[str, Any] = {
                "setting": setting,
                "task": sel[0]["task"],
                "init": init,
                "n_models": len(sel),
            }
            for e in sorted(epochs):
                vals = np.array([r["curve"][e] for r in sel])
                entry[f"epoch{e}_mean"] = float(vals.mean())
                entry[f"epoch{e}_std"] = float(vals.std())
            out.append(entry)
    return out


def generation_markdown(out: dict[str, Any]) -> str:
    """The generation table: test accuracy (mean ± std) per epoch budget."""
    epochs = sorted(int(e) for e in out["config"]["epochs"])
    head = "| setting | task | init | models | " + " | ".join(f"epoch {e}" for e in epochs) + " |"
    lines = [
        f"Architecture `{out['arch']}`; test accuracy (mean ± std over kept models and seeds) after "
        f"fine-tuning with AdamW lr {out['config']['lr']}; random init uses the same budget and seeds.",
        "",
        head,
        "|" + "---|" * (4 + len(epochs)),
    ]
    for e in out["table"]:
        cells = " | ".join(f"{e[f'epoch{x}_mean']:.3f} ± {e[f'epoch{x}_std']:.3f}" for x in epochs)
        lines.append(f"| {e['setting']} | {e['task']} | {e['init']} | {e['n_models']} | {cells} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# CLI and bench


def add_cli(p: argparse.ArgumentParser) -> None:
    from core.cli import add_json_flag

    p.add_argument("atlas", help="a tokenized atlas with a trained backbone")
    p.add_argument(
        "--arch",
        required=True,
        help="target architecture: zoo:<family>, timm:<name> or hf:<model dir or repo id>",
    )
    p.add_argument("--n", type=int, default=None, help="draws per round, K (default: preset's)")
    p.add_argument(
        "--keep",
        type=int,
        default=None,
        help="models kept, M: the best draws by validation accuracy",
    )
    p.add_argument(
        "--prompts",
        default=None,
        help="comma-separated atlas model ids used as prompts (default: the best atlas models "
        "with the target's exact layer table, else freshly trained ones)",
    )
    p.add_argument(
        "--mode",
        choices=("independent", "joint"),
        default=None,
        help="independent: every token draws its own kernel centre among the prompts; "
        "joint: one prompt per draw for all tokens (default: preset's)",
    )
    p.add_argument(
        "--prior",
        choices=sorted(PRIORS),
        default=None,
        help="distribution fitted to the prompt latents: kde or gaussian (default: preset's)",
    )
    p.add_argument(
        "--bootstrap-rounds",
        type=int,
        default=None,
        help="extra rounds that re-fit the prior on the kept draws (default: preset's)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of prompts, draws and conditioning")
    p.add_argument("--task", default=None, help="target task (default: the architecture's own)")
    p.add_argument(
        "--width", type=int, default=None, help="zoo family width (default: the atlas' most common)"
    )
    p.add_argument(
        "--depth", type=int, default=None, help="zoo family depth (default: the atlas' most common)"
    )
    p.add_argument(
        "--preset",
        default="ci",
        choices=sorted(SAMPLE_PRESETS),
        help="SampleConfig preset for the settings not given (default: ci)",
    )
    p.add_argument("--backbone", default=None, help="another backbone directory")
    p.add_argument(
        "--out",
        default=None,
        help="folder for the generated model directories (default: ATLAS/generated)",
    )
    p.add_argument("--progress-file", default=None, help="JSON progress for a polling app")
    p.add_argument("--evaluate", action="store_true", help="run the generation evaluation instead")
    p.add_argument(
        "--heldout-task", default=None, help="with --evaluate: a task absent from the atlas"
    )
    p.add_argument(
        "--eval-preset",
        default="ci",
        choices=sorted(GENERATION_PRESETS),
        help="with --evaluate: GenerationConfig preset (ci is a smoke test; default: ci)",
    )
    add_overrides_arg(p, "SampleConfig (with --evaluate: GenerationConfig)")
    add_json_flag(p)


def run_cli(args: argparse.Namespace) -> int:
    writer = progress_file_writer(args.progress_file) if args.progress_file else None
    bar = tqdm(total=100, desc="sample", unit="%")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(100 * fraction)
        bar.set_postfix_str(message[:60])
        bar.refresh()
        if writer is not None:
            writer(fraction, message)

    try:
        if args.evaluate:
            out = evaluate_generation(
                args.atlas, args.arch, args.task, args.heldout_task, preset=args.eval_preset,
                sample_preset=args.preset, overrides=parse_overrides(args.overrides), progress=progress,
            )  # fmt: skip
            bar.close()
            from core.cli import emit

            note = ""
            if args.eval_preset == "ci":
                note = "\nnote: --eval-preset ci is a smoke test; use demo for numbers to report"
            emit(args, out, generation_markdown(out).rstrip("\n") + note)
            if writer is not None:
                writer(
                    1.0,
                    "done",
                    done=True,
                    outputs=[str(Atlas(Path(args.atlas)).results_dir / "generation.json")],
                )
            return 0
        paths = sample(
            args.atlas, args.arch, n=args.n, keep=args.keep,
            prompts=[p for p in args.prompts.split(",") if p] if args.prompts else None,
            mode=args.mode, prior=args.prior, bootstrap_rounds=args.bootstrap_rounds, seed=args.seed,
            task=args.task, progress=progress, preset=args.preset, width=args.width, depth=args.depth,
            backbone_dir=args.backbone, out_dir=args.out, overrides=parse_overrides(args.overrides),
        )  # fmt: skip
    except BaseException as e:
        bar.close()
        if writer is not None:
            writer(
                1.0,
                "failed",
                done=True,
                error=str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
        raise
    bar.close()
    if writer is not None:
        writer(1.0, "done", done=True, outputs=[str(p) for p in paths])
    from core.cli import emit
    from core.explore import generated_card

    cards = [generated_card(p) for p in paths]
    keys = ("test_accuracy", "at_chance", "chance_accuracy", "scored", "note", "prompts", "n",
            "keep", "atlas_distance", "atlas_percentile", "outside_atlas",
            "architecture_in_atlas")  # fmt: skip
    data = [{"path": str(p), **{k: c.get(k) for k in keys}} for p, c in zip(paths, cards)]
    first = cards[0] if cards else {}
    lines = [
        f"sample: kept {len(paths)} of {first.get('n', '?')} draws of {args.arch} "
        f"(best by validation accuracy), from {len(first.get('prompts') or [])} prompt(s)"
    ]
    for p, c in zip(paths, cards):
        acc = c.get("test_accuracy")
        chance = " (at chance)" if c.get("at_chance") is True else ""
        lines.append(
            (
                f"  {p.name}: test accuracy {acc:.3f}{chance}"
                if isinstance(acc, float)
                else f"  {p.name}: not scored"
            )
            + _distance_text(c)
        )
    if first.get("note"):
        lines.append(f"note: {first['note']}")
    if paths:
        lines.append(f"written to {paths[0].parent}")
    emit(args, data, "\n".join(lines))
    return 0


def _distance_text(card: dict[str, Any]) -> str:
    """``; atlas distance D (percentile P, inside|OUTSIDE the atlas)`` for a generated card."""
    d, pct = card.get("atlas_distance"), card.get("atlas_percentile")
    if not isinstance(d, int | float) or not isinstance(pct, int | float):
        return ""
    where = "OUTSIDE the atlas" if card.get("outside_atlas") else "inside the atlas"
    arch = "" if card.get("architecture_in_atlas", True) else "; architecture not in the atlas"
    return f"; atlas distance {d:.3f} (percentile {pct:.1f}, {where}{arch})"


def _random_backbone_atlas(root: Path, preset: str, scheme: str = "dense") -> None:
    """A throwaway atlas holding only an untrained backbone and a token-store index (bench)."""
    from core.backbone import BACKBONE_PRESETS, Backbone, BackboneConfig, save_backbone

    a = Atlas.create(root)
    cfg = build_config(BackboneConfig, BACKBONE_PRESETS, preset)
    torch.manual_seed(0)
    save_backbone(Backbone(cfg), a.backbone_dir)
    write_json(
        a.tokens_dir / "index.json", {"scheme": scheme, "token_size": cfg.token_size, "models": {}}
    )


def bench_sample(args: argparse.Namespace) -> dict[str, Any]:
    """Generated models per second for a zoo family, and seconds for a 5-draw timm:resnet18.

    Uses an untrained backbone of ``--preset`` (timing does not depend on its weights) and one
    untrained fresh prompt; baseline: random init + save of the same architecture, same count.
    """
    preset = args.preset or "ci"
    n = args.n or 10
    repeat = max(1, args.repeat)
    out: dict[str, Any] = {"backbone_preset": preset, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "atlas"
        _random_backbone_atlas(root, preset)
        for name, arch, k in (("zoo_cnn", "zoo:cnn", n), ("timm_resnet18", "timm:resnet18", 5)):
            overrides = {"n_prompts": 1, "prompt_epochs": 0, "device": args.device}
            target = resolve_target(
                arch, "dense", int(_backbone_token_size(root))
            )  # imports, untimed
            best, best_base = float("inf"), float("inf")
            phases: dict[str, float] = {}
            for r in range(repeat):
                t0 = time.perf_counter()
                paths = sample(
                    root,
                    arch,
                    n=k,
                    keep=k,
                    seed=r,
                    preset="ci",
                    out_dir=Path(tmp) / f"gen{r}",
                    overrides=overrides,
                )
                seconds = time.perf_counter() - t0
                if seconds < best:
                    best, phases = seconds, _read_card_block(paths[0]).get("seconds", {})
                t0 = time.perf_counter()
                for i in range(k):
                    target.arch.save(target.arch.build(i), Path(tmp) / f"base{r}" / str(i))
                best_base = min(best_base, time.perf_counter() - t0)
            out[name] = {
                "arch": arch,
                "n_models": k,
                "n_tokens": int(len(target.positions)),
                "seconds": best,
                "phase_seconds": phases,
                "models_per_s": k / best,
                "baseline_random_init_save_seconds": best_base,
                "baseline_models_per_s": k / best_base,
            }
    return out


def _backbone_token_size(root: Path) -> int:
    from core.atlas import read_json

    return int(read_json(root / "backbone" / "config.json")["backbone"]["token_size"])
