"""The optimizer every trainer in the package builds: the zoo's models and the backbone."""

from __future__ import annotations

from typing import Any

import torch


def adamw(params: Any, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with its fused kernel where the weights live on CPU or CUDA.

    The fused kernel makes one pass over each weight, its gradient and both moments; the
    default for-loop on CPU makes about eight (lerp, mul, addcmul, sqrt, div, add, addcdiv and
    the decay): 67-116 ms against 10-12 ms per step for the demo backbone (4.8M weights, 2
    threads), 58 against ~8 ms for ResNet-18's 62 tensors. Same update rule up to rounding and
    the same state (step, exp_avg, exp_avg_sq), so checkpoints resume either way.
    """
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
