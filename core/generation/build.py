"""Decode latents into weights, load them into the target model, condition batch norm, score."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from core.backbone.device import autocast, compute_dtype
from core.backbone.inference import BF16_MIN_WIDTH, packed_backbone
from core.embeddings.encode import (
    EmbedConfig,
    encode_tokens,
    haloed_apply,
    resolve_window,
)
from core.errors import WeightAtlasError
from core.generation.config import SampleConfig
from core.generation.prompts import Target, runnable
from core.models.io import load_weights_strict
from core.models.registry import logits
from core.tokens.plan import detokenize
from core.zoos.tasks import evaluate_accuracy, get_task

# decode, load, condition, score


@contextmanager
def backbone_precision(cfg: SampleConfig, backbone: Any) -> Iterator[Any]:
    """The backbone every sampling pass runs through, in the precision of ``cfg.dtype``.

    ``auto`` is bf16 where bf16 matmuls are fast (CUDA; a CPU with AVX-512 BF16 or AMX when
    the backbone is at least :data:`BF16_MIN_WIDTH` wide), else fp32. On the CPU, bf16 runs
    through the packed copy (``core.backbone.inference``: weights cast and packed once, GELU
    fused), elsewhere under bf16 autocast with fp32 weights. Measured on this project's 2-core
    CPU (AVX-512 BF16, no AMX): a timm:resnet18 run with fresh prompts on the demo backbone
    (d_model 256) took 159 CPU-seconds in bf16 autocast instead of 331 in fp32, decoded tokens
    differing by a relative MSE of ~2e-5 (far below the backbone's reconstruction error); with
    the ci backbone (d_model 64), ``weightatlas bench sample`` measured bf16 no faster (67.7 s
    vs 64.4 s), so there it stays fp32.

    Yields:
        An object with the backbone's ``cfg``, ``encode`` and ``decode``.
    """
    device = torch.device(cfg.device)
    dtype = cfg.dtype
    if dtype == "auto" and device.type == "cpu" and backbone.cfg.d_model < BF16_MIN_WIDTH:
        dtype = "fp32"
    cdtype = compute_dtype(dtype, device)
    packed = (
        packed_backbone(backbone) if cdtype == torch.bfloat16 and device.type == "cpu" else None
    )
    if packed is not None:
        yield packed
        return
    with autocast(device, cdtype):
        yield backbone


def decode_latents(
    backbone: Any, draws: torch.Tensor, target: Target, cfg: SampleConfig
) -> torch.Tensor:
    """Haloed decode of ``draws (K, N, L)`` into tokens ``(K, N, D)``."""
    window, halo = resolve_window(embed_config(cfg), backbone)
    code = target.position_code(backbone)
    with backbone_precision(cfg, backbone) as bb:
        out = haloed_apply(
            bb.decode, draws, target.positions, window, halo, cfg.batch_size, code=code
        )
    return out.float()


def embed_config(cfg: SampleConfig) -> Any:

    return EmbedConfig(
        window=cfg.window, halo=cfg.halo, batch_size=cfg.batch_size, device=cfg.device
    )


def encode_models(
    backbone: Any, tokens: list[torch.Tensor], target: Target, cfg: SampleConfig
) -> torch.Tensor:
    """Haloed latents ``(E, N, L)`` of prompt tokens."""
    code = target.position_code(backbone)
    with backbone_precision(cfg, backbone) as bb:
        return torch.stack(
            [encode_tokens(bb, t, target.positions, embed_config(cfg), code=code) for t in tokens]
        )


def build_generated(tokens: torch.Tensor, target: Target, seed: int) -> nn.Module:
    """A fresh target instance with its trainable tensors replaced by detokenized ``tokens (N, D)``.

    Buffers (batch-norm statistics, counters) keep the fresh instance's values until
    :func:`condition_batchnorm`. Raises if any key or shape differs from the target.
    """

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

    if target.task is None:
        return math.nan
    return float(evaluate_accuracy(runnable(model, target), target.task, split))


# ---------------------------------------------------------------------------------------------
