"""Configuration of sampling (``SampleConfig``) and of the generation evaluation protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from core.config import register_presets


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
register_presets("generation", GenerationConfig, GENERATION_PRESETS)


Progress = Callable[[float, str], None]


@dataclass
class SampleConfig:
    """Sampling settings (003 Alg. 3, 001 C.2)."""

    n: int = 10  # draws per round (K)
    keep: int = 3  # models kept by validation accuracy (M)
    task: str | None = None  # target task (None: the family's own, else digits10)
    width: int | None = None  # zoo family size (None: the atlas' most common, else smallest)
    depth: int | None = None
    mode: Literal["auto", "independent", "joint"] = "auto"  # see draws.draw_mode
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
    # windows per backbone call. 64 (4,096 tokens at window 64): on the 2-core CPU a haloed bf16
    # decode of ResNet-18's 174,616 tokens took 5.7 s at 64 and 8.5 s at 256, whose activations
    # (> 32 MB) are mmapped and page-faulted afresh on every call (1.8 M minor faults)
    batch_size: int = 64
    bn_batches: int = 4
    bn_batch_size: int = 128
    score_split: str = "val"
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # backbone calls (build.backbone_precision)


SAMPLE_PRESETS: dict[str, dict[str, Any]] = {
    # 001 C.2's protocol for timm architectures (ImageNet): one anchor sample, five draws, the
    # best one kept; the default of `weightatlas sample` and the Generate page. Each prompt
    # costs an encode and a decode pass over every token of the target, each draw a decode,
    # each kept model an encode (its atlas distance): 8 passes here against 12 for `ci`, which
    # on the 2-core CPU is ResNet-18 in 50-57 s instead of 74-79 s from a fresh start
    "anchor": dict(n=5, keep=1, n_prompts=1, max_prompts=1, prompt_epochs=2, bn_batches=2),
    "ci": dict(n=6, keep=2, n_prompts=2, prompt_epochs=2, bn_batches=2),
    "demo": dict(n=20, keep=5, n_prompts=3, prompt_epochs=2),
    "paper-small": dict(n=50, keep=10, n_prompts=5, prompt_epochs=2, bn_batches=8),
    "paper-large": dict(n=50, keep=10, n_prompts=5, prompt_epochs=2, bn_batches=8),
}
register_presets("sample", SampleConfig, SAMPLE_PRESETS)
DEFAULT_SAMPLE_PRESET = "anchor"  # generation; `weightatlas sample --evaluate` uses ci
