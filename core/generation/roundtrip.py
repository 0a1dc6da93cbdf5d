"""Before a run draws: the prompts' encode-decode round trip (issue 17's "before a run"),
its plain reading, the prompts' own reference scores and the chance baseline a kept model is
judged against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from core.generation.build import (
    build_generated,
    condition_batchnorm,
    decode_latents,
    encode_models,
    score,
)
from core.generation.config import SampleConfig
from core.generation.prompts import (
    Target,
)
from core.tokens.plan import detokenize
from core.zoos.tasks import get_task


def finite_or_none(v: float | None) -> float | None:
    """``v``, or None for NaN/None (JSON and YAML have no NaN)."""
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def prompt_reference(
    prompt_tokens: list[torch.Tensor], target: Target, cfg: SampleConfig
) -> list[float | None]:
    """Validation accuracy of each prompt rebuilt from its own tokens, with batch norm
    re-estimated exactly as for the round trip and every draw.

    This is what the draws are compared with: a perfect backbone would reproduce it. A fresh
    prompt's own running statistics after 2 epochs can be far off (a timm:resnet18 prompt:
    0.276 val as trained, 0.955 with batch norm re-estimated), which once made the encode-decode
    look like a loss when the prompt's statistics were the problem.
    """
    out: list[float | None] = []
    for tokens in prompt_tokens:
        model = build_generated(tokens, target, seed=cfg.seed)
        condition_batchnorm(model, target, cfg.bn_batches, cfg.bn_batch_size, seed=cfg.seed)
        out.append(finite_or_none(score(model, target, cfg.score_split)))
    return out


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
        accs.append(finite_or_none(score(model, target, cfg.score_split)))
    layer_r2 = {k: float(np.median(v)) for k, v in per_layer.items()}
    main = {e.name for e in target.layers if e.kind in ("conv", "linear")} & set(layer_r2)
    vals = [layer_r2[k] for k in (main or layer_r2)]  # the weight matrices, as in training
    median = float(np.median(vals)) if vals else None
    return z, {
        "round_trip_median_layer_r2": median,
        "round_trip_layer_r2": layer_r2,
        "round_trip_val_accuracy": accs,
    }


def fidelity_summary(
    target: Target,
    fidelity: dict[str, Any],
    prompt_scores: list[float | None],
    baseline: dict[str, float] | None,
    source: str,
) -> dict[str, Any]:
    """Plain reading of the prompts' round trip (issue 17's "before a run" warning).

    Low when the median weight-matrix R² is below 0.5, or when the prompts keep less than half
    of their accuracy above chance after one encode-decode (draws add sampling noise on top,
    so generated models then land near chance).

    Returns:
        ``{"fidelity_low", "fidelity_reasons", "round_trip_retained", "round_trip_worst_layers",
        "text"}``; ``round_trip_retained`` is the mean over prompts above chance of
        ``(after - chance) / (before - chance)`` (None without a task).
    """
    r2 = fidelity["round_trip_median_layer_r2"]
    trips = fidelity["round_trip_val_accuracy"]
    layer_r2 = fidelity.get("round_trip_layer_r2") or {}
    main = {e.name for e in target.layers if e.kind in ("conv", "linear")} & set(layer_r2)
    worst = sorted(main or layer_r2, key=lambda k: layer_r2[k])[:3]
    retained = _retained(prompt_scores, trips, baseline)
    reasons = _low_fidelity_reasons(r2, trips, retained, baseline)
    pairs = " and ".join(
        f"{p:.3f} -> {q:.3f}"
        for p, q in zip(prompt_scores, trips)
        if p is not None and q is not None
    )
    facts = (
        f"encode-decode of the {len(trips)} {source} prompt(s) of {target.arch.spec}: "
        + (
            f"val accuracy {pairs} (own tokens -> after encode-decode, batch norm re-estimated "
            "in both)"
            if pairs
            else "unscored"
        )
        + (f" (chance {baseline['chance_accuracy']:.3f})" if baseline is not None else "")
        + "; median per-layer R² of the weight matrices "
        + (f"{r2:.3f}" if r2 is not None else "n/a")
        + (" (lowest: " + ", ".join(f"{k} {layer_r2[k]:.2f}" for k in worst) + ")" if worst else "")
    )
    if reasons:
        text = (
            f"warning: expect generated models near chance: {'; '.join(reasons)}. Measured "
            + facts
            + "."
        )
    else:
        text = "fidelity: " + facts + "."
    return {
        "fidelity_low": bool(reasons),
        "fidelity_reasons": reasons,
        "round_trip_retained": retained,
        "round_trip_worst_layers": {k: layer_r2[k] for k in worst},
        "text": text,
    }


def _retained(
    prompt_scores: list[float | None],
    trips: list[float | None],
    baseline: dict[str, float] | None,
) -> float | None:
    """Mean over prompts above chance of ``(after - chance) / (before - chance)`` (None
    without a task or without such prompts)."""
    if baseline is None:
        return None
    c = baseline["chance_accuracy"]
    gains = [
        (q - c) / (p - c)
        for p, q in zip(prompt_scores, trips)
        if p is not None and q is not None and p > baseline["chance_threshold"]
    ]
    return float(np.mean(gains)) if gains else None


def _low_fidelity_reasons(
    r2: float | None,
    trips: list[float | None],
    retained: float | None,
    baseline: dict[str, float] | None,
) -> list[str]:
    """Why the round trip predicts generated models near chance (empty: it does not)."""
    reasons = []
    if r2 is None or r2 < 0.5:
        reasons.append(
            "the backbone reconstructs its weight matrices poorly (median per-layer R² "
            + (f"{r2:.3f}" if r2 is not None else "n/a")
            + ", 1 = exact)"
        )
    if (
        baseline is not None
        and trips
        and all(q is not None and q <= baseline["chance_threshold"] for q in trips)
    ):
        reasons.append("the prompts score at chance after one encode-decode")
    elif retained is not None and retained < 0.5:
        reasons.append(
            f"the prompts keep only {100 * max(retained, 0.0):.0f} % of their accuracy above "
            "chance after one encode-decode"
        )
    return reasons


def chance_baseline(target: Target, cfg: SampleConfig) -> dict[str, float] | None:
    """What a kept model's validation accuracy is compared with (None without a task).

    ``chance_accuracy``: the most frequent class' share of the score split (a constant
    predictor); ``chance_threshold``: chance plus three binomial standard errors on that split,
    at or below which a model is labelled at chance; ``random_init_val_accuracy``: the fresh
    init of the draws' seed, batch norm conditioned the same way.
    """

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
