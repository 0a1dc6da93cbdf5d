"""The experiment pipeline: run the stage notebooks in order with papermill, then write a report.

    weightatlas pipeline --preset ci --out RUN            # zoo -> ... -> ablations, RUN/results/report.md
    weightatlas pipeline --preset demo --out RUN --from train   # resume from a stage

Each notebook in ``notebooks/`` has a ``parameters`` cell; this module injects the preset's
values, executes it into ``RUN/notebooks/NN_stage.ipynb`` and stops at the first failing cell,
keeping everything before it. The notebooks call ``core`` only, so the same experiment runs
from the CLI, from JupyterLab, or from here.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atlas import Atlas, append_jsonl, read_json, read_jsonl, write_json
from core.config import build_config, parse_overrides, to_dict
from core.errors import WeightAtlasError

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"

# stage name -> notebook file, in pipeline order
STAGES: dict[str, str] = {
    "collect": "01_collect.ipynb",
    "tokenize": "02_tokenize.ipynb",
    "train": "03_train.ipynb",
    "embed": "04_embed_probe.ipynb",
    "generate": "05_generate.ipynb",
    "ablations": "06_ablations.ipynb",
}


@dataclass
class PipelineConfig:
    """Knobs of one pipeline run; each stage notebook takes the subset it declares."""

    zoo_preset: str = "ci"
    backbone_preset: str = "ci"
    scheme: str = "dense"
    token_size: int = 64
    train_steps: int | None = None  # None: the backbone preset's own length
    ablation_steps: int = 150
    sample_arch: str = "zoo:resnet"
    sample_n: int = 8
    sample_keep: int = 3
    finetune_epochs: tuple[int, ...] = (0, 1, 3, 5)
    heldout_task: str = "digits-invert"
    seed: int = 0


PIPELINE_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(
        zoo_preset="ci", backbone_preset="ci", ablation_steps=120, sample_n=6, sample_keep=2
    ),
    "demo": dict(
        zoo_preset="demo", backbone_preset="demo", ablation_steps=600, sample_n=20, sample_keep=5
    ),
}


class StageFailed(WeightAtlasError):
    """A notebook cell raised; the message names the stage, the cell and the error."""


def _stage_parameters(cfg: PipelineConfig, run: Path, stage: str) -> dict[str, Any]:
    """The papermill parameters of one stage: paths plus the config fields it declares."""
    params: dict[str, Any] = {
        "run_dir": str(run),
        "atlas_dir": str(run / "atlas"),
        "zoo_dir": str(run / "zoo"),
        "figures_dir": str(run / "results" / "figures"),
    }
    params.update({k: list(v) if isinstance(v, tuple) else v for k, v in to_dict(cfg).items()})
    return params


def _declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters`` cell."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return set(re.findall(r"^([A-Za-z_]\w*)\s*=", cell.source, flags=re.M))
    raise WeightAtlasError(f"{notebook.name} has no cell tagged 'parameters'")


def run_stage(
    stage: str, run: Path, cfg: PipelineConfig, notebook_dir: Path = NOTEBOOK_DIR
) -> Path:
    """Execute one stage notebook into ``RUN/notebooks``; raise StageFailed on a failing cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    src = notebook_dir / STAGES[stage]
    out = run / "notebooks" / STAGES[stage]
    out.parent.mkdir(parents=True, exist_ok=True)
    declared = _declared_parameters(src)
    params = {k: v for k, v in _stage_parameters(cfg, run, stage).items() if k in declared}
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(src),
            str(out),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(run),
        )
    except PapermillExecutionError as e:
        raise StageFailed(
            f"stage {stage!r} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
            f"(executed notebook kept at {out})"
        ) from None
    append_jsonl(
        run / "results" / "stages.jsonl",
        [{"stage": stage, "seconds": round(time.perf_counter() - t0, 2), "notebook": str(out)}],
    )
    return out


def pipeline(
    preset: str = "ci",
    out: str | Path = "runs/ci",
    from_stage: str | None = None,
    only: str | None = None,
    overrides: dict[str, Any] | None = None,
    notebook_dir: Path = NOTEBOOK_DIR,
) -> Path:
    """Run the stage notebooks in order and write ``RUN/results/report.md``.

    Args:
        preset: a PIPELINE_PRESETS name.
        out: the run directory (holds zoo/, atlas/, notebooks/, results/).
        from_stage: resume from this stage; earlier stages are taken as done.
        only: run this one stage.
        overrides: PipelineConfig fields.

    Returns:
        The path of the report.
    """
    from tqdm.auto import tqdm

    cfg = build_config(PipelineConfig, PIPELINE_PRESETS, preset, overrides=overrides)
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    names = list(STAGES)
    for given in (from_stage, only):
        if given is not None and given not in STAGES:
            raise WeightAtlasError(f"unknown stage {given!r}; stages are {', '.join(names)}")
    todo = [only] if only else names[names.index(from_stage) if from_stage else 0 :]
    write_json(run / "pipeline.json", {"preset": preset, "config": to_dict(cfg)})
    t0 = time.perf_counter()
    for stage in tqdm(todo, desc="pipeline", unit="stage"):
        run_stage(stage, run, cfg, notebook_dir)
    report = write_report(run)
    append_jsonl(
        run / "results" / "stages.jsonl",
        [{"stage": "pipeline", "seconds": round(time.perf_counter() - t0, 2), "stages": todo}],
    )
    return report


# Report: the tables each stage wrote into ATLAS/results as (title, file) in report order.
REPORT_TABLES: list[tuple[str, str]] = [
    ("Collection", "collection.md"),
    ("Token store", "tokens.md"),
    ("Backbone training", "training.md"),
    ("Property probes vs s(W)", "probes.md"),
    ("Generation vs random init", "generation.md"),
    ("Ablation: loss normalization (MLN)", "ablation_mln.md"),
    ("Ablation: tokenization", "ablation_tokenization.md"),
    ("Ablation: collection composition", "ablation_composition.md"),
]


def write_report(run: str | Path) -> Path:
    """Assemble ``RUN/results/report.md`` from the tables and figures the stages wrote."""
    run = Path(run)
    results = Atlas(run / "atlas").results_dir
    lines = ["# Weight Atlas pipeline report", ""]
    info = run / "pipeline.json"
    if info.exists():
        meta = read_json(info)
        lines += [f"Preset `{meta['preset']}`; config `{meta['config']}`.", ""]
    timings = list(read_jsonl(run / "results" / "stages.jsonl"))
    if timings:
        lines += ["| stage | seconds |", "|---|---|"]
        lines += [
            f"| {t['stage']} | {t['seconds']:.1f} |" for t in timings if t["stage"] != "pipeline"
        ]
        lines.append("")
    missing = []
    for title, name in REPORT_TABLES:
        lines.append(f"## {title}")
        lines.append("")
        path = results / name
        if path.exists():
            lines.append(path.read_text().strip())
        else:
            missing.append(name)
            lines.append("_not produced in this run_")
        lines.append("")
    figures = sorted((run / "results" / "figures").glob("*.png"))
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}](figures/{f.name})" for f in figures]
        lines.append("")
    report = run / "results" / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    from core.atlas import atomic_write_bytes

    atomic_write_bytes(report, "\n".join(lines).encode())
    return report


def report_numbers(report: str | Path) -> list[float]:
    """Every number in the report's table cells (for checks that all are finite)."""
    values = []
    for line in Path(report).read_text().splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            for cell in line.strip("|").split("|"):
                cell = cell.strip().rstrip("%")
                try:
                    values.append(float(cell))
                except ValueError:
                    if cell.lower() in ("nan", "inf", "-inf"):
                        values.append(math.nan)
    return values


def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="ci", choices=sorted(PIPELINE_PRESETS))
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--from", dest="from_stage", default=None, choices=list(STAGES))
    p.add_argument("--only", default=None, choices=list(STAGES))
    p.add_argument("overrides", nargs="*", help="PipelineConfig fields as key=value")


def run_cli(args: argparse.Namespace) -> int:
    report = pipeline(
        args.preset, args.out, args.from_stage, args.only, parse_overrides(args.overrides)
    )
    print(report)
    return 0
