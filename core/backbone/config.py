"""Training configuration: ``TrainConfig``, and the config tree of a training run.

A training run is configured lingua-style as one tree, ``TrainRunConfig``, of two nested parts:
the backbone's shape (``backbone``: ``core.backbone.model.BackboneConfig``) and the optimisation
(``train``: ``TrainConfig``). One preset name selects both (``RUN_PRESETS``, registered as the
``train`` component). Overrides are dotted paths (``backbone.latent_dim=32``, ``train.lr=3e-4``);
a flat key naming a field of exactly one part (``steps``, ``latent_dim``) is a documented alias
of its dotted path; an unknown key fails with the valid keys. ``validate_train_config`` is the one
place where values that span the parts, the token store and the ranks are derived and checked
(as lingua's ``validate_train_args``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.backbone.losses import LossNorm
from core.backbone.model import BACKBONE_PRESETS, BackboneConfig
from core.config import (
    ConfigError,
    build_config,
    flatten,
    merge,
    register_presets,
    to_dict,
)

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
    # train and select on each model's canonical form (core.backbone.views.CanonicalStore: the
    # hidden units of every unit group sorted by norm), the form ``embed`` encodes by default
    canonical: bool = False
    # raw-token backbones (token_norm off): set backbone.token_scale to the RMS of the
    # training tokens' real values, so the blocks see weights at unit scale. On in the demo
    # presets since session 9: with per-channel (sparse) tokens, over 3 seeds, family 0.966 ->
    # 0.978, kNN accuracy R² 0.213 -> 0.349, mlp/digits10 accuracy probe 0.558 -> 0.680, cnn
    # 0.661 -> 0.632 (docs/results/README.md); with dense tokens it traded family for the mlp
    # probe (session 8)
    scale_tokens: bool = False
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
        select="rec+knn", patience=3, canonical=True, scale_tokens=True,
    ),
    # the same, for longer. The exported demo backbone ran this preset with steps=100,
    # batch_size=16, eval_every=25, ckpt_every=25 (1,525 s on 2 CPU cores shared with ~12 other
    # processes: 11-13 s per step, at OMP_NUM_THREADS=2); the 400 steps here are what an idle
    # machine affords. On a shared machine run it at OMP_NUM_THREADS=1: OpenMP threads waiting
    # on each other cost more than they bring there (`weightatlas bench train --threads 2`,
    # default_1_thread: 2.16x at load 9-14). At one thread (issue 25, H5): steps=500 ran 450
    # steps in 1,312 s, patience stopping it after a divergence at step ~355 (rec loss 1.1 -> 24-42);
    # steps=800 lr=5e-4 ran 650 steps in 883 s, patience stopping it (best val_select_score
    # 0.714 at step 500), with no divergence. Session 7 (canonical form, a quiet machine, one
    # thread, 1.5-2 steps/s): the exported demo backbone is steps=200 batch_size=16
    # eval_every=25 ckpt_every=25 (141 s); steps=1000 lr=5e-4 stopped at 900 (kept 700, 677 s)
    # with a map and probes no better (docs/results/README.md)
    "demo-long": dict(
        steps=400, batch_size=32, lr=1e-3, weight_decay=1e-4, eval_every=50, ckpt_every=50,
        log_every=10, gamma=GAMMA, noise_mode="multiplicative", permute=True, positive="any",
        select="rec+knn", patience=3, canonical=True, scale_tokens=True,
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


@dataclass
class TrainRunConfig:
    """The config tree of one training run: the backbone's shape and how it is trained."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# one preset name selects both parts (the tables keep their names in step)
RUN_PRESETS: dict[str, dict[str, Any]] = {
    name: {"backbone": BACKBONE_PRESETS[name], "train": TRAIN_PRESETS[name]}
    for name in TRAIN_PRESETS
}
register_presets("train", TrainRunConfig, RUN_PRESETS)


STATE_DIR = "train_state"


LAYERS_FILE = "val_layers.jsonl"  # per-layer validation R^2 / std ratio of the selected weights


SELECT_METRIC = "val_layer_r2_median_conv_linear"


def build_train_config(
    preset: str = "ci",
    overrides: Mapping[str, Any] | None = None,
    file: str | Path | None = None,
) -> TrainRunConfig:
    """The run's config tree: defaults <- preset <- file <- overrides, validated.

    Raises:
        ConfigError: an unknown preset or key (with the valid ones), or inconsistent values.
    """
    if preset not in RUN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(RUN_PRESETS)}")
    cfg = build_config(TrainRunConfig, RUN_PRESETS, preset, file, overrides)
    return validate_train_config(cfg)


def token_size_given(overrides: Mapping[str, Any] | None) -> bool:
    """Whether ``overrides`` set the backbone's token size (dotted or as the flat alias)."""
    return bool({"token_size", "backbone.token_size"} & set(flatten(overrides or {})))


def validate_train_config(
    cfg: TrainRunConfig,
    token_size: int | None = None,
    *,
    token_size_given: bool = False,
    world: int = 1,
) -> TrainRunConfig:
    """Check a run's config tree and derive what one part takes from another or from the data.

    The one place for values that span the config's parts, the token store and the ranks:
    the backbone's ``token_size`` comes from the token table (the one source of the token
    size); a value given explicitly that differs from it is refused.

    Args:
        cfg: the tree as built from preset, file and overrides.
        token_size: the token store's token size (None: no store yet, nothing derived).
        token_size_given: whether the user set ``backbone.token_size`` (then it must match).
        world: the number of ranks sharing each global batch.

    Returns:
        The tree with derived values filled in.

    Raises:
        ConfigError: one line naming the inconsistent keys.
    """
    b, t = cfg.backbone, cfg.train
    if t.steps <= 0 and t.epochs <= 0:
        raise ConfigError("set train.steps > 0 or train.epochs > 0")
    if t.batch_size < 1 or t.grad_accum < 1:
        raise ConfigError("train.batch_size and train.grad_accum must be >= 1")
    if t.batch_size < world:
        raise ConfigError(f"batch_size={t.batch_size} is smaller than the {world} ranks")
    choices = (
        ("noise_mode", ("additive", "multiplicative")),
        ("positive", ("same", "any")),
        ("select", ("rec", "rec+knn")),
    )
    for key, allowed in choices:
        if getattr(t, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {getattr(t, key)!r}")
    if b.head not in ("mean", "window"):
        raise ConfigError(f"head must be mean or window, got {b.head!r}")
    if b.window < 1 or b.latent_dim < 1 or b.token_size < 1:
        raise ConfigError(
            "backbone.window, backbone.latent_dim and backbone.token_size must be >= 1"
        )
    if b.d_model % b.n_heads:
        raise ConfigError(f"d_model={b.d_model} is not divisible by n_heads={b.n_heads}")
    if token_size is not None and b.token_size != token_size:
        if token_size_given:
            raise ConfigError(
                f"token_size={b.token_size} but the store has {token_size}; "
                "re-tokenize or drop the override"
            )
        cfg = merge(cfg, {"backbone.token_size": token_size})
    return cfg


def build_configs(
    preset: str = "ci", overrides: dict[str, Any] | None = None
) -> tuple[BackboneConfig, TrainConfig]:
    """Backbone and train configs of a preset (``build_train_config``'s two parts)."""
    cfg = build_train_config(preset, overrides)
    return cfg.backbone, cfg.train


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run config (``{"backbone": ..., "train": ...}``) with the fields added to either
    config since it was written at their defaults, so an older run still reads as the same run
    (``fit``'s resume, the ablations' reuse)."""
    # the token table is the one source of scheme and token size: copies in older runs go
    out = {k: v for k, v in saved.items() if k not in ("scheme", "token_size")}
    for key, default in (("backbone", BackboneConfig()), ("train", TrainConfig())):
        if isinstance(saved.get(key), dict):  # in field order, as a fresh config is
            out[key] = {**to_dict(default), **saved[key]}
    return out
