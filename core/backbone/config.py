"""Training configuration: ``TrainConfig``, its presets, and the (backbone, train) pair a preset names.

A training run is configured lingua-style as two nested parts: the backbone's shape
(``core.backbone.model.BackboneConfig``) and the optimisation (``TrainConfig``). One preset name
selects both; an override goes to whichever part has the key, and an unknown key fails."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from core.backbone.losses import LossNorm
from core.backbone.model import BACKBONE_PRESETS, BackboneConfig
from core.config import ConfigError, build_config, register_presets, to_dict

Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class TrainConfig:
    """How the backbone is trained. ``batch_size`` is global (all ranks) per micro-batch."""

    seed: int = 0
    steps: int = 200  # optimizer steps; 0: derived from ``epochs``
    epochs: int = 0  # passes over the train models (used when steps == 0)
    batch_size: int = 16  # windows per micro-batch, one window per row
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # OneCycleLR peak
    weight_decay: float = 0.0
    pct_start: float = 0.1  # OneCycleLR warm-up fraction
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    gamma: float = 0.05  # weight of the contrastive loss: (1 - gamma) * rec + gamma * con
    temperature: float = 0.1  # NT-Xent temperature
    loss_norm: LossNorm = "masked"  # masked (MLN) | token | layer (LWLN) | none
    mln_eps: float = 1e-5  # variance floor of the per-token standardization
    noise: float = 0.05  # augmentation noise std, relative to each token's std
    mask_frac: float = 0.1  # augmentation: fraction of real values zeroed
    windows_per_model: int = 1  # windows per model per epoch
    # H16: windows drawn per model in proportion to n_tokens**sample_alpha (0: uniform per
    # model, the paper's one window per model; 1: uniform per token); see ``Stream``
    sample_alpha: float = 0.5
    log_every: int = 10
    eval_every: int = 100  # validation R^2 every this many steps (and at the end)
    ckpt_every: int = 100
    train_eval_models: int = 8  # train models also scored by R^2 at each evaluation
    device: str = "auto"  # auto: cuda (LOCAL_RANK) if available, else cpu
    # compute dtype of forward/backward; weights, AdamW moments and losses stay fp32.
    # auto: bf16 autocast where the device runs it fast (CUDA with bf16; CPUs with AMX or
    # AVX-512 BF16, see ``bf16_is_fast``), else fp32
    dtype: Precision = "auto"
    # stop after this many evaluations without a better selection score (0: never stop early)
    patience: int = 0
    # additive: noise std relative to each token's std; multiplicative: values * (1 + noise N)
    noise_mode: Literal["additive", "multiplicative"] = "additive"
    # the second view is a function-preserving permutation of the model's hidden units
    # (core.backbone.views; families without unit groups get noise and masking only)
    permute: bool = False
    # the second view's window: "same" as the first, or "any" window of the same model
    positive: Literal["same", "any"] = "same"
    # checkpoint selection: "rec" (median per-layer val R^2 of conv + linear layers) or
    # "rec+knn" (that plus select_weight x the validation models' leave-one-run-out k-NN
    # family and task accuracy of their pooled embeddings; core.backbone.selection)
    select: Literal["rec", "rec+knn"] = "rec"
    select_weight: float = 1.0
    select_k: int = 5  # neighbours of the selection's k-NN


# the demo's contrastive weight: the sweep's pick (gamma 0 / 0.1 / 0.3, 200-step schedule, at
# its first validation: selection score 0.365 / 0.440 / 0.362; docs/results/backbone.md)
GAMMA = 0.1

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(steps=300, batch_size=8, lr=3e-3, pct_start=0.1, eval_every=100, ckpt_every=100),
    # 4,096 tokens per step (2 views x 32 windows x 64 tokens): enough rows for the matrix units.
    # Issue 25's recipe (003 §3): the second view is a function-preserving permutation of the
    # model's hidden units at another window of the same model, with multiplicative noise;
    # gamma from a sweep (docs/results/backbone.md); the kept checkpoint maximizes median
    # conv + linear val R^2 plus the val models' leave-one-run-out k-NN family/task accuracy,
    # until 3 evaluations bring no better one. lr 1e-3: no linear start to wreck any more
    "demo": dict(
        steps=200, batch_size=32, lr=1e-3, weight_decay=1e-4, eval_every=50, ckpt_every=50,
        log_every=10, gamma=GAMMA, noise_mode="multiplicative", permute=True, positive="any",
        select="rec+knn", patience=3,
    ),
    # the same, for longer. The exported demo backbone ran this preset with steps=100,
    # batch_size=16, eval_every=25, ckpt_every=25 (1,525 s on 2 CPU cores shared with ~12 other
    # processes: 11-13 s per step); the 400 steps here are what an idle machine affords
    "demo-long": dict(
        steps=400, batch_size=32, lr=1e-3, weight_decay=1e-4, eval_every=50, ckpt_every=50,
        log_every=10, gamma=GAMMA, noise_mode="multiplicative", permute=True, positive="any",
        select="rec+knn", patience=3,
    ),
    # paper 001 Table 4: AdamW, lr 2e-5, wd 3e-9, OneCycleLR, batch 64 (x2 accumulation for large)
    "paper-small": dict(
        steps=0, epochs=100, batch_size=64, lr=2e-5, weight_decay=3e-9, pct_start=0.3,
        eval_every=2000, ckpt_every=1000, log_every=50, train_eval_models=16,
    ),
    "paper-large": dict(
        steps=0, epochs=300, batch_size=64, grad_accum=2, lr=2e-5, weight_decay=3e-9,
        pct_start=0.3, eval_every=2000, ckpt_every=1000, log_every=50, train_eval_models=16,
    ),
}  # fmt: skip
register_presets("train", TrainConfig, TRAIN_PRESETS)


STATE_DIR = "train_state"


LAYERS_FILE = "val_layers.jsonl"  # per-layer validation R^2 / std ratio of the selected weights


SELECT_METRIC = "val_layer_r2_median_conv_linear"


def build_configs(
    preset: str = "ci", overrides: dict[str, Any] | None = None
) -> tuple[BackboneConfig, TrainConfig]:
    """Backbone and train configs of a preset, with overrides routed by key; unknown keys raise."""
    overrides = dict(overrides or {})
    bkeys = {f.name for f in dataclasses.fields(BackboneConfig)}
    tkeys = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - bkeys - tkeys)
    if unknown:
        raise ConfigError(
            f"unknown train key(s): {', '.join(unknown)}; valid keys: "
            f"{', '.join(sorted(bkeys | tkeys))}"
        )
    if preset not in BACKBONE_PRESETS or preset not in TRAIN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(TRAIN_PRESETS)}")
    bover = {k: v for k, v in overrides.items() if k in bkeys}
    tover = {k: v for k, v in overrides.items() if k in tkeys}
    bcfg = build_config(BackboneConfig, BACKBONE_PRESETS, preset, overrides=bover)
    tcfg = build_config(TrainConfig, TRAIN_PRESETS, preset, overrides=tover)
    if tcfg.steps <= 0 and tcfg.epochs <= 0:
        raise ConfigError("set steps > 0 or epochs > 0")
    if tcfg.batch_size < 1 or tcfg.grad_accum < 1:
        raise ConfigError("batch_size and grad_accum must be >= 1")
    choices = (
        ("noise_mode", ("additive", "multiplicative")),
        ("positive", ("same", "any")),
        ("select", ("rec", "rec+knn")),
    )
    for key, allowed in choices:
        if getattr(tcfg, key) not in allowed:
            raise ConfigError(
                f"{key} must be one of {', '.join(allowed)}, got {getattr(tcfg, key)!r}"
            )
    if bcfg.head not in ("mean", "window"):
        raise ConfigError(f"head must be mean or window, got {bcfg.head!r}")
    return bcfg, tcfg


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config (``{"backbone": ..., "train": ...}``) with the fields added to either
    config since it was written at their defaults, so an older run still reads as the same run
    (``fit``'s resume, the ablations' reuse)."""
    out = dict(saved)
    for key, default in (("backbone", BackboneConfig()), ("train", TrainConfig())):
        if isinstance(saved.get(key), dict):  # in field order, as a fresh config is
            out[key] = {**to_dict(default), **saved[key]}
    return out
