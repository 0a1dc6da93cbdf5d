"""``pipeline``, ``demo``, ``lineage`` and ``bench``: runs over whole atlases."""

from __future__ import annotations

import argparse
import sys

from core.atlas import Atlas, atomic_write_bytes, dumps
from core.bench import BENCHES
from core.cli.common import add_config_flags, add_json_flag, config_overrides, emit
from core.experiments.demo import demo, dir_bytes
from core.experiments.pipeline import STAGES, pipeline


# ------------------------------------------------------------ pipeline
def add_pipeline_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas pipeline``."""
    add_config_flags(p, "pipeline", "ci")
    p.add_argument("--out", required=True, help="run directory (notebooks, atlas, report.md)")
    p.add_argument(
        "--from", dest="from_stage", default=None, choices=list(STAGES), help="start at this stage"
    )
    p.add_argument("--only", default=None, choices=list(STAGES), help="run only this stage")
    add_json_flag(p)


def run_pipeline_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas pipeline``; prints a short summary (``--json``: the result)."""
    report = pipeline(args.preset, args.out, args.from_stage, args.only, config_overrides(args))
    note = (
        " (ci is a smoke test: its numbers check that the stages run)"
        if args.preset == "ci"
        else ""
    )
    emit(
        args,
        {"report": str(report), "preset": args.preset},
        f"pipeline {args.preset}: notebooks run, report written to {report}{note}",
    )
    return 0


# ------------------------------------------------------------ demo
def add_demo_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas demo``."""
    p.add_argument("--out", default="assets/demo", help="where to write the demo atlas")
    p.add_argument(
        "--from-atlas", default=None, help="export this finished atlas instead of building"
    )
    p.add_argument("--work", default=None, help="scratch dir for the zoo and full atlas")
    add_config_flags(p, "demo", "demo")
    add_json_flag(p)


def run_demo_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas demo``; prints a short summary (``--json``: the result)."""
    path = demo(args.out, args.from_atlas, args.work, args.preset, config_overrides(args))
    size_mb = dir_bytes(path) / 2**20
    n = sum(1 for _ in Atlas.open(path).accepted())
    emit(
        args,
        {"out": str(path), "size_mb": size_mb, "models": n},
        f"demo: atlas of {n} models ({size_mb:.1f} MB) written to {path}\n"
        f"open it: WEIGHTATLAS_ATLAS={path} streamlit run explorer/app.py",
    )
    return 0


# ------------------------------------------------------------ lineage
def add_lineage_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas lineage``."""
    p.add_argument("atlas", help="atlas directory (after collect; the weights must be in reach)")
    add_config_flags(p, "lineage", "default")
    p.add_argument(
        "--zoo",
        default=None,
        help="a zoo directory with model trees: also score the result against its ground truth",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p)


def run_lineage_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas lineage``; prints a short summary (``--json``: the result)."""
    from core.experiments.report import lineage_table
    from core.trees.lineage import lineage
    from core.trees.score import score_atlas
    from core.trees.table import LineageTable

    info = lineage(args.atlas, args.preset, config_overrides(args), progress=not args.no_progress)
    if args.zoo:  # scored before the report section is written, so it shows the figures
        LineageTable(args.atlas).update_info(score=score_atlas(args.atlas, args.zoo))
    report = lineage_table(args.atlas)
    data = dict(info)
    st = info["status"]
    text = (
        f"lineage: {info['models']} models, {info['trees']} trees, {info['edges']} parent edges "
        f"({info['fingerprint_seconds'] + info['recover_seconds']:.1f} s)\n"
        f"declared vs weights: {st['agrees']} agree, {st['missing']} missing declarations, "
        f"{st['contradicts']} contradictions, {st['differs']} differ inside their tree, "
        f"{st['unverifiable']} unverifiable\n"
        f"table: {args.atlas}/lineage/lineage.jsonl; report section: {report}"
    )
    if args.zoo:
        s = LineageTable(args.atlas).info()["score"]
        data["score"] = s
        ours, mother = s["ours"], s.get("mother") or {}
        text += (
            f"\nvs the zoo's truth: tree ARI {ours['ari']:.3f} (MoTHer {mother.get('ari')}), "
            f"parent edges {ours['edge_accuracy']:.3f} (MoTHer {mother.get('edge_accuracy')}), "
            f"planted declarations found {s['planted_found']}/{s['planted']}, "
            f"false alarms {len(s['false_alarms'])}"
        )
    emit(args, data, text)
    return 0


# ------------------------------------------------------------ bench
def add_bench_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas bench``."""
    p.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    p.add_argument("--preset", default=None, help="preset for benchmarks that take one")
    p.add_argument("--n", type=int, default=None, help="problem size for benchmarks that take one")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--device", default="cpu", help="torch device for benchmarks that use one")
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: all cores)"
    )
    p.add_argument(
        "--atlas", default=None, help="train: also time validation on this atlas' val split"
    )


def run_bench_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas bench``; prints a short summary (``--json``: the result)."""
    result = BENCHES[args.name](args)
    text = dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_bytes(args.out, (text + "\n").encode())
    sys.stdout.flush()
    return 0
