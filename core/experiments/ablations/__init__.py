"""Ablations of paper 001 at laptop scale: loss normalization, tokenization, collection composition.

Each ablation trains small backbones with one knob changed and everything else (atlas, step
budget, backbone preset, seed) held fixed, then writes a markdown table into
``ATLAS/results/`` and its raw numbers as JSON next to it:

- ``mln`` (001 Table 1, Fig. 6, D.4.1): backbones with ``none``, ``token`` and ``masked`` loss
  normalization on the atlas' own token store (``ATLAS/backbones/mln-MODE``). For held-out
  (test-split) models: Wasserstein-1 between original and reconstructed values of each layer,
  divided by the layer's std, averaged by layer kind; and the zero-shot accuracy of models
  sampled from each backbone. ``mln_figure`` draws the Fig.-6-like histograms.
- ``tokenization`` (001 D.4.2): the accepted models tokenized ``dense`` and ``sparse`` into
  sibling atlases (``ATLAS/ablations/tok-SCHEME``); tokens, padding fraction, bytes on disk and
  the validation R² of a backbone trained on each (``ATLAS/backbones/tok-SCHEME``).
- ``composition`` (000, 001 Table 2): a backbone trained only on the target architecture's
  family versus one trained on the diverse collection subsampled to the same number of
  tokens (same step budget), both generating models of the target architecture for the same
  task; the generation accuracy of each.

    from core.experiments.ablations import run_ablations
    run_ablations("RUN/atlas", preset="ci")          # all three, resumable
    run_ablations("RUN/atlas", preset="ci", only=("mln",), overrides={"steps": 50})

Backbones already trained to the requested step count are reused, so a re-run after a failure
only trains what is missing.

One module per ablation (``mln``, ``tokenization``, ``composition``) over ``common``; this
package runs them (``run_ablations``) and re-exports their public names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import build_config
from core.errors import WeightAtlasError
from core.experiments.ablations.common import (
    ABLATION_PRESETS,
    ABLATIONS,
    FIG6_KINDS,
    MLN_ARMS,
    MODES,
    REPORT_KINDS,
    AblationConfig,
    _atlas,
    arm_name,
    backbone_path,
    by_kind,
    composition_prompts,
    generation_accuracy,
    heldout_ids,
    heldout_prompts,
    layer_distances,
    mln_budget,
    pca_reference,
    per_model_spread,
    same_run,
    sibling_atlas,
    train_backbone,
    trained_steps,
    zoo_rows,
)
from core.experiments.ablations.composition import (
    budget_subsample,
    composition_figure,
    run_composition,
)
from core.experiments.ablations.mln import (
    ARM_COLORS,
    _cell,
    _layer_summary,
    _pick_layers,
    mln_base,
    mln_figure,
    mln_markdown,
    mln_summary_figure,
    run_mln,
)
from core.experiments.ablations.tokenization import (
    run_tokenization,
    tokenization_figure,
)


def ablation_config(preset: str | None = "ci", overrides: dict[str, Any] | None = None):
    """The AblationConfig of a preset with overrides (unknown keys raise)."""
    return build_config(AblationConfig, ABLATION_PRESETS, preset, overrides=overrides)


def run_ablations(
    atlas: str | Path,
    preset: str | None = "ci",
    only: tuple[str, ...] | list[str] = ABLATIONS,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the chosen ablations on an atlas (tokenized, main backbone not required).

    Args:
        atlas: the atlas directory.
        preset: an ABLATION_PRESETS name.
        only: which of ``ABLATIONS`` to run, in that order.
        overrides: AblationConfig fields.

    Returns:
        ``{name: result}`` as written to ``results/ablation_NAME.json``.
    """
    unknown = set(only) - set(ABLATIONS)
    if unknown:
        raise WeightAtlasError(f"unknown ablation(s) {sorted(unknown)}; choose from {ABLATIONS}")
    cfg = ablation_config(preset, overrides)
    runners = {"mln": run_mln, "tokenization": run_tokenization, "composition": run_composition}
    return {name: runners[name](atlas, cfg) for name in ABLATIONS if name in only}


__all__ = [
    "ABLATIONS",
    "ABLATION_PRESETS",
    "ARM_COLORS",
    "AblationConfig",
    "FIG6_KINDS",
    "MLN_ARMS",
    "MODES",
    "REPORT_KINDS",
    "_atlas",
    "_cell",
    "_layer_summary",
    "_pick_layers",
    "ablation_config",
    "arm_name",
    "backbone_path",
    "budget_subsample",
    "by_kind",
    "composition_figure",
    "composition_prompts",
    "generation_accuracy",
    "heldout_ids",
    "heldout_prompts",
    "layer_distances",
    "mln_base",
    "mln_budget",
    "mln_figure",
    "mln_markdown",
    "mln_summary_figure",
    "pca_reference",
    "per_model_spread",
    "run_ablations",
    "run_composition",
    "run_mln",
    "run_tokenization",
    "same_run",
    "sibling_atlas",
    "tokenization_figure",
    "train_backbone",
    "trained_steps",
    "zoo_rows",
]
