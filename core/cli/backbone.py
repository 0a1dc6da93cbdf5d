"""``weightatlas train``: the backbone on the atlas' token store, and its summary."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from core.atlas import Atlas, BackboneFiles
from core.backbone.train import split_warning, train
from core.cli.common import USER_PRESET, add_config_flags, add_json_flag, config_overrides, emit
from core.safety import printable

# ------------------------------------------------------------ train


def train_summary_text(summary: dict[str, Any], atlas: str | Path, preset: str) -> str:
    """A few lines on a finished training run: steps, time, models, validation R², where."""
    out = Path(str(summary.get("out", "")))
    cfg = BackboneFiles(out).config()
    n_train, n_val = cfg.get("n_train_models"), cfg.get("n_val_models")
    lines = [
        f"train: {summary.get('steps', '?')} steps in {summary.get('seconds', 0):.0f} s "
        f"(preset {preset}) on {n_train if n_train is not None else '?'} training models"
        + (" (stopped early)" if summary.get("stopped_early") else "")
    ]
    best = summary.get("best")
    if isinstance(best, dict) and isinstance(best.get("value"), int | float):
        start = " (the starting point: training did not beat it)" if best.get("step") == 0 else ""
        lines.append(
            f"kept: the checkpoint of step {best.get('step')}, {best.get('metric')} "
            f"{best['value']:.3f}{start}"
        )
    else:
        lines.append(f"kept: the last step ({summary.get('steps', '?')}); no validation score")
    for fam, n in (summary.get("families_not_trained") or {}).items():
        lines.append(printable(split_warning(fam, n)))
    if isinstance(summary.get("val_r2"), int | float):
        lines.append(
            f"last validation R² {summary['val_r2']:.3f} on {summary.get('val_models', n_val)} "
            "held-out models"
            + (
                f"; training R² {summary['train_r2']:.3f} on a sample of "
                f"{summary.get('train_models', '?')} training models"
                if isinstance(summary.get("train_r2"), int | float)
                else ""
            )
        )
    if preset == "ci":
        lines.append("note: preset ci is a smoke test; use --preset demo or larger for a map")
    lines.append(f"backbone written to {out}")
    default_out = Atlas(Path(atlas)).backbone_dir
    own = str(out) and out.resolve() != default_out.resolve()
    lines.append(f"next: weightatlas embed {atlas}" + (f" --backbone {out}" if own else ""))
    return "\n".join(lines)


def add_train_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas train``."""

    p.add_argument("atlas", help="atlas directory (collected and tokenized)")
    add_config_flags(p, "train", USER_PRESET, "TrainRunConfig (backbone.*, train.*)")
    p.add_argument("--out", default=None, help="output dir (default ATLAS/backbone)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    add_json_flag(p)


def run_train_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas train``; prints a short summary (``--json``: the summary dict) on rank 0."""

    summary = train(
        args.atlas,
        args.preset,
        config_overrides(args),
        out=args.out,
        resume=not args.fresh,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        emit(args, summary, train_summary_text(summary, args.atlas, args.preset))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
