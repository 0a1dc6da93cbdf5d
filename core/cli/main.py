"""weightatlas: learn one weight-space representation of many trained models, then explore it.

    weightatlas zoo --preset ci --out ZOO                 # (optional) train a small model zoo
    weightatlas collect ATLAS --source ZOO                # or hf-cache (your HF cache), or hub
    weightatlas tokenize ATLAS                            # weights -> tokens
    weightatlas train ATLAS --preset demo                 # the backbone autoencoder
    weightatlas embed ATLAS                               # embeddings and 2-D maps
    weightatlas evaluate ATLAS ; weightatlas sample ATLAS --arch SPEC
    weightatlas lineage ATLAS                             # model trees from the weights
    streamlit run explorer/app.py                         # explore (type ATLAS in the sidebar)

Every stage reads and writes one atlas directory and can be re-run alone (it resumes).
Every stage takes ``--preset NAME``, ``--config FILE`` and ``--set KEY=VALUE`` (applied in that
order over the defaults; ``train``'s keys are dotted, ``--set backbone.latent_dim=32 --set
train.lr=3e-4``, a flat key of one part being an alias); each prints a short summary (``--json``
for the machine-readable result). ``weightatlas STAGE --help`` lists a stage's options.

This package is the whole command line (``core/cli/``, one module per group of stages): one
``add_<stage>_cli(parser)`` and ``run_<stage>_cli(args)`` pair per stage, calling core's public
functions; :func:`main` turns expected errors into one-line messages and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from core.atlas import CorruptLineWarning, KnownAtlases
from core.cli.backbone import add_train_cli, run_train_cli
from core.cli.common import disk_full_message
from core.cli.data import (
    add_collect_cli,
    add_tokenize_cli,
    add_zoo_cli,
    run_collect_cli,
    run_tokenize_cli,
    run_zoo_cli,
)
from core.cli.embeddings import add_embed_cli, add_evaluate_cli, run_embed_cli, run_evaluate_cli
from core.cli.experiments import (
    add_bench_cli,
    add_demo_cli,
    add_lineage_cli,
    add_pipeline_cli,
    run_bench_cli,
    run_demo_cli,
    run_lineage_cli,
    run_pipeline_cli,
)
from core.cli.generation import add_sample_cli, run_sample_cli
from core.errors import USER_ERRORS, DiskFullError
from core.safety import is_disk_full, printable

# ------------------------------------------------------------ wiring

# subcommand -> (add flags, run, one-line help)
COMMANDS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
] = {
    "zoo": (add_zoo_cli, run_zoo_cli, "train a local model zoo and write it in Hub cache layout"),
    "collect": (
        add_collect_cli,
        run_collect_cli,
        "collect models from the Hub, an HF cache or a directory into an atlas",
    ),
    "tokenize": (
        add_tokenize_cli,
        run_tokenize_cli,
        "cut the atlas' accepted models into weight tokens",
    ),
    "train": (add_train_cli, run_train_cli, "train the backbone autoencoder on the token store"),
    "embed": (
        add_embed_cli,
        run_embed_cli,
        "embed models with the trained backbone and build 2-D maps",
    ),
    "evaluate": (add_evaluate_cli, run_evaluate_cli, "property probes against the s(W) baseline"),
    "sample": (add_sample_cli, run_sample_cli, "generate new weights for an architecture"),
    "pipeline": (
        add_pipeline_cli,
        run_pipeline_cli,
        "run the stage notebooks in order and write a report",
    ),
    "demo": (add_demo_cli, run_demo_cli, "build the small embedded demo atlas the app opens on"),
    "lineage": (
        add_lineage_cli,
        run_lineage_cli,
        "recover model trees from the weights and check the declared base models",
    ),
    "bench": (add_bench_cli, run_bench_cli, "speed benchmarks with an in-run baseline (JSON)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="weightatlas",
        description=__doc__.split("\n\nThis package")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``weightatlas`` console script (and of ``python -m core.cli``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default", CorruptLineWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            if issubclass(category, CorruptLineWarning):  # one line, above any progress bar
                tqdm.write(f"weightatlas {args.command}: warning: {printable(message)}", sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; expected errors become one line on stderr and exit code 2."""
    try:
        rc = int(args._run(args) or 0)
        if rc == 0 and isinstance(getattr(args, "atlas", None), str | Path):
            KnownAtlases().add(args.atlas)  # the app finds it by name from any folder
        return rc
    except DiskFullError as e:
        print(f"weightatlas {args.command}: {printable(e)}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        if not is_disk_full(e):
            print(f"weightatlas {args.command}: error: {printable(e)}", file=sys.stderr)
            return 2
        print(
            f"weightatlas {args.command}: {printable(disk_full_message(e, args))}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        print(f"weightatlas {args.command}: interrupted; re-run to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk surfaces as OSError, RuntimeError, SafetensorError...
        if not is_disk_full(e):
            raise
        print(
            f"weightatlas {args.command}: {printable(disk_full_message(e, args))}", file=sys.stderr
        )
        return 2
