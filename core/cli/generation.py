"""``weightatlas sample``: generate weights for an architecture, estimate, or evaluate generation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from core.atlas import Atlas, GeneratedCard, read_json
from core.cli.common import add_config_flags, add_json_flag, config_overrides, emit
from core.errors import WeightAtlasError
from core.generation.config import DEFAULT_SAMPLE_PRESET, GENERATION_PRESETS
from core.generation.draws import PRIORS
from core.generation.estimate import estimate_sample
from core.generation.evaluation import evaluate_generation, generation_markdown
from core.generation.sample import progress_file_writer, sample
from core.safety import printable


def add_sample_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas sample``: the draws (shorthands of SampleConfig fields), then how
    the run is done (``--estimate``, ``--evaluate``, outputs)."""
    p.add_argument("atlas", help="a tokenized atlas with a trained backbone")
    p.add_argument(
        "--arch",
        required=True,
        help="target architecture: zoo:<family>, timm:<name> or hf:<model dir or repo id>",
    )
    _add_draw_flags(p)
    add_config_flags(
        p, "sample", None, "SampleConfig",
        default_text=f"{DEFAULT_SAMPLE_PRESET}, 001 C.2's one anchor and five draws; with "
        "--evaluate: ci, the sampling inside each evaluation run",
    )  # fmt: skip
    p.add_argument("--backbone", default=None, help="another backbone directory")
    p.add_argument(
        "--out",
        default=None,
        help="folder for the generated model directories (default: ATLAS/generated)",
    )
    p.add_argument("--progress-file", default=None, help="JSON progress for a polling app")
    _add_estimate_and_evaluate_flags(p)
    add_json_flag(p)


# the SampleConfig fields with a shorthand flag (``--n 8`` is ``--set n=8``)
SAMPLE_SHORTHANDS = ("n", "keep", "mode", "prior", "bootstrap_rounds", "seed", "task")
SAMPLE_SHORTHANDS += ("width", "depth")


def _add_draw_flags(p: argparse.ArgumentParser) -> None:
    """Shorthands of the SampleConfig fields a run usually sets (``SAMPLE_SHORTHANDS``)."""
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
        choices=("auto", "independent", "joint"),
        default=None,
        help="independent: every token draws its own kernel centre among the prompts; "
        "joint: one prompt per draw for all tokens; auto: joint for fresh prompts, independent "
        "for atlas prompts (default: preset's)",
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
    p.add_argument(
        "--task",
        default=None,
        help="target task (default: the architecture's own; none: an hf: model generated unscored)",
    )
    p.add_argument(
        "--width", type=int, default=None, help="zoo family width (default: the atlas' most common)"
    )
    p.add_argument(
        "--depth", type=int, default=None, help="zoo family depth (default: the atlas' most common)"
    )


def _add_estimate_and_evaluate_flags(p: argparse.ArgumentParser) -> None:
    """``--estimate``/``--estimate-file`` and the generation evaluation's flags."""
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print what the run would do (prompts from the atlas or fresh, backbone passes) and "
        "its expected time on this machine now, then exit without generating",
    )
    p.add_argument(
        "--estimate-file",
        default=None,
        help="JSON of an estimate already shown for this run (the Generate page writes it): "
        "reported instead of timing the machine again",
    )
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


def read_estimate(path: str | Path) -> dict[str, Any]:
    """An ``estimate_sample`` result from ``--estimate-file`` (checked for its two fields)."""
    est = read_json(path)
    if (
        not isinstance(est, dict)
        or not isinstance(est.get("text"), str)
        or not isinstance((est.get("seconds") or {}).get("total"), int | float)
    ):
        raise WeightAtlasError(f"{path} is not an estimate (needs 'text' and 'seconds.total')")
    return est


def _prompt_ids(args: argparse.Namespace) -> list[str] | None:
    """``--prompts a,b`` as a list of atlas ids (None: let the stage choose)."""
    return [p for p in args.prompts.split(",") if p] if args.prompts else None


class _Progress:
    """The sample stage's progress: a tqdm bar (drawn at the first report, not before a bad
    atlas is refused) and, with ``--progress-file``, the JSON file the app polls."""

    def __init__(self, progress_file: str | None) -> None:
        self.writer = progress_file_writer(progress_file) if progress_file else None
        self.bar: tqdm | None = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is None:
            self.bar = tqdm(total=100, desc="sample", unit="%")
        self.bar.n = int(100 * fraction)
        self.bar.set_postfix_str(printable(message[:60]))
        self.bar.refresh()
        if self.writer is not None:
            self.writer(fraction, message)

    def close(self) -> None:
        """Close the bar (before the summary is printed)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def done(self, outputs: list[str]) -> None:
        """Close the bar; the progress file says done, with the outputs."""
        self.close()
        if self.writer is not None:
            self.writer(1.0, "done", done=True, outputs=outputs)

    def failed(self, error: BaseException) -> None:
        """Close the bar; the progress file says failed, with the error's first line."""
        self.close()
        if self.writer is not None:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            self.writer(1.0, "failed", done=True, error=first)


def run_sample_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas sample``: an estimate, the generation evaluation, or a sample run."""
    if args.preset is None:
        args.preset = "ci" if args.evaluate else DEFAULT_SAMPLE_PRESET
    if args.estimate:
        est = estimate_sample(
            args.atlas, args.arch, args.task, preset=args.preset, overrides=config_overrides(args),
            width=args.width, depth=args.depth, backbone_dir=args.backbone,
            prompts=_prompt_ids(args),
        )  # fmt: skip
        emit(args, est, f"estimate for {args.arch}: {est['text']}")
        return 0
    progress = _Progress(args.progress_file)
    try:
        if args.evaluate:
            out = evaluate_generation(
                args.atlas, args.arch, args.task, args.heldout_task, preset=args.eval_preset,
                sample_preset=args.preset, overrides=config_overrides(args), progress=progress,
            )  # fmt: skip
            progress.close()
            note = ""
            if args.eval_preset == "ci":
                note = "\nnote: --eval-preset ci is a smoke test; use demo for numbers to report"
            emit(args, out, generation_markdown(out).rstrip("\n") + note)
            progress.done([str(Atlas(Path(args.atlas)).results_dir / "generation.json")])
            return 0
        flags = {k: getattr(args, k) for k in SAMPLE_SHORTHANDS if getattr(args, k) is not None}
        paths = sample(
            args.atlas, args.arch, args.preset, {**flags, **config_overrides(args)},
            prompts=_prompt_ids(args), progress=progress, backbone_dir=args.backbone,
            out_dir=args.out,
            estimate=read_estimate(args.estimate_file) if args.estimate_file else None,
        )  # fmt: skip
    except BaseException as e:
        progress.failed(e)
        raise
    progress.done([str(p) for p in paths])
    emit(args, *_sample_summary(args.arch, paths))
    return 0


def _sample_summary(arch: str, paths: list[Path]) -> tuple[list[dict[str, Any]], str]:
    """``(--json rows, the printed summary)`` of a sample run, read from the generated cards."""
    cards = [GeneratedCard(Path(p)).block() for p in paths]
    keys = ("test_accuracy", "at_chance", "chance_accuracy", "scored", "note", "prompts", "n",
            "keep", "atlas_distance", "atlas_percentile", "outside_atlas",
            "architecture_in_atlas")  # fmt: skip
    data = [{"path": str(p), **{k: c.get(k) for k in keys}} for p, c in zip(paths, cards)]
    first = cards[0] if cards else {}
    lines = [
        f"sample: kept {len(paths)} of {first.get('n', '?')} draws of {arch} "
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
    if isinstance(first.get("chance_accuracy"), float):
        lines.append("  against: " + _baselines_text(first))
    if first.get("note"):
        lines.append(f"note: {first['note']}")
    if paths:
        lines.append(f"written to {paths[0].parent}")
    return data, "\n".join(lines)


def _baselines_text(card: dict[str, Any]) -> str:
    """Prompts (before / after an encode-decode), random init and chance, from a generated card."""

    def fmt(values: Any) -> str:
        vals = [v for v in values or [] if isinstance(v, int | float)]
        return " / ".join(f"{v:.3f}" for v in vals) or "n/a"

    rnd = card.get("random_init_val_accuracy")
    return (
        f"prompts {fmt(card.get('prompt_scores'))} (val), after encode-decode "
        f"{fmt(card.get('round_trip_val_accuracy'))}; random init "
        + (f"{rnd:.3f}" if isinstance(rnd, int | float) else "n/a")
        + f" (val); chance {card['chance_accuracy']:.3f}; draws {card.get('mode', '?')}"
    )


def _distance_text(card: dict[str, Any]) -> str:
    """``; atlas distance D (percentile P, inside|OUTSIDE the atlas)`` for a generated card."""
    d, pct = card.get("atlas_distance"), card.get("atlas_percentile")
    if not isinstance(d, int | float) or not isinstance(pct, int | float):
        return ""
    where = "OUTSIDE the atlas" if card.get("outside_atlas") else "inside the atlas"
    arch = "" if card.get("architecture_in_atlas", True) else "; architecture not in the atlas"
    return f"; atlas distance {d:.3f} (percentile {pct:.1f}, {where}{arch})"
