"""Priors over the prompts' latents and draws from them (KDE or Gaussian, per token or joint)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import WeightAtlasError
from core.generation.config import SampleConfig

# priors and draws


def draw_mode(cfg: SampleConfig, source: str) -> str:
    """The draw mode of a run: ``cfg.mode``, or for ``auto`` joint with fresh prompts.

    Fresh prompts are independent random inits trained a few epochs: token by token they sit
    in unrelated bases, so drawing each token's kernel centre from another prompt assembles a
    model of neither. Measured through the latent-32 demo backbone (timm:resnet18 on digits10,
    2 fresh prompts at val 0.955 / 0.942 with batch norm re-estimated, chance 0.103, at-chance
    threshold 0.151): their decoded latents give 0.156 / 0.226; their tokens mixed without noise
    0.047 / 0.106 (chance); independent draws 0.064 / 0.064 (chance); joint draws 0.187 / 0.203. Atlas prompts keep
    ``independent`` (003 Alg. 3), which was not re-measured here.
    """
    if cfg.mode != "auto":
        return cfg.mode
    return "joint" if source == "fresh" else "independent"


def prompt_std(z: torch.Tensor) -> torch.Tensor:
    """Unbiased std over the prompts ``z (E, N, L)`` per token and dim, ``(N, L)`` (zeros for
    one prompt).

    Written out as mean and squared deviations: ``z.std(0)`` with a handful of prompts takes
    a slow reduction path on the CPU (1.1-1.5 s for ResNet-18's 2 x 174,616 x 62 latents,
    against ~0.1 s this way).
    """
    e = z.shape[0]
    if e < 2:
        return torch.zeros_like(z[0])
    return ((z - z.mean(0)) ** 2).sum(0).div_(e - 1).sqrt_()


def scott_bandwidth(z: torch.Tensor, scale: float, floor: float) -> torch.Tensor:
    """Per-token, per-dim kernel bandwidth ``(N, L)`` from prompt latents ``z (E, N, L)``.

    Scott's rule ``std_e * E^(-1/(L+4))`` per token and dim, floored at ``floor`` times the
    per-dim std over all prompt tokens (so one prompt still gives a usable spread).
    """
    e, _, dim = z.shape
    std = prompt_std(z)
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
    std = prompt_std(z)
    std = torch.maximum(std, floor * z.reshape(-1, dim).std(0).expand_as(std))
    noise = torch.randn(k, n, dim, generator=g, dtype=z.dtype)
    return mu[None] + noise * std[None], torch.full((k, n), -1, dtype=torch.long)


PRIORS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "kde": _kde,
    "gaussian": _gaussian,
}


# ---------------------------------------------------------------------------------------------


@dataclass
class Draw:
    """One decoded draw: its latents, model and validation score (a candidate for keeping)."""

    z: torch.Tensor  # (N, L)
    model: nn.Module
    val: float
    round: int
    draw: int
