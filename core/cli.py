"""weightatlas: learn one weight-space representation of many trained models, then explore it.

    weightatlas zoo --preset ci --out ZOO                 # (optional) train a small model zoo
    weightatlas collect ATLAS --source ZOO                # or ~/.cache/huggingface, or hub
    weightatlas tokenize ATLAS                            # weights -> tokens
    weightatlas train ATLAS --preset demo                 # the backbone autoencoder
    weightatlas embed ATLAS                               # embeddings and 2-D maps
    weightatlas evaluate ATLAS ; weightatlas sample ATLAS --arch SPEC
    streamlit run explorer/app.py                         # explore (type ATLAS in the sidebar)

Every stage reads and writes one atlas directory and can be re-run alone (it resumes).
`--set KEY=VALUE` overrides a preset field on every stage; each stage prints a short summary
(`--json` for the machine-readable result). `weightatlas STAGE --help` lists a stage's
options.

Each stage module defines ``add_cli(parser)`` (its flags) and ``run_cli(args) -> int``; this file
only wires them together and turns expected errors into one-line messages and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "zoo": ("core.zoo", "train a local model zoo and write it in Hub cache layout"),
    "collect": (
        "core.hub",
        "collect models from the Hub, an HF cache or a directory into an atlas",
    ),
    "tokenize": ("core.tokenize", "cut the atlas' accepted models into weight tokens"),
    "train": ("core.train", "train the backbone autoencoder on the token store"),
    "embed": ("core.embed", "embed models with the trained backbone and build 2-D maps"),
    "evaluate": ("core.evaluate", "property probes against the s(W) baseline"),
    "sample": ("core.sample", "generate new weights for an architecture"),
    "pipeline": ("core.pipeline", "run the stage notebooks in order and write a report"),
    "demo": ("core.demo", "build the small embedded demo atlas the app opens on"),
    "bench": ("core.bench", "speed benchmarks with an in-run baseline (JSON)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; each subcommand's flags come from its stage module."""
    parser = argparse.ArgumentParser(
        prog="weightatlas",
        description=__doc__.split("\n\nEach stage module")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_cli(p)
        p.set_defaults(_module=module)
    return parser


def add_json_flag(p: argparse.ArgumentParser) -> None:
    """``--json``: print the stage's result as JSON instead of the human summary."""
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON (for scripts) instead of the short summary",
    )


def add_set_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``--set KEY=VALUE`` (repeatable) beside a stage's positional ``KEY=VALUE`` overrides,
    so every stage takes the same override syntax; :func:`overrides_of` merges both."""
    p.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a {what} field (repeatable); same as a trailing KEY=VALUE",
    )


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The ``KEY=VALUE`` pairs given positionally and with ``--set``."""
    return [
        *(getattr(args, "overrides", None) or []),
        *(getattr(args, "set_overrides", None) or []),
    ]


def emit(args: argparse.Namespace, data: object, summary: str) -> None:
    """Print ``summary`` (a few human lines), or ``data`` as JSON with ``--json``."""
    if getattr(args, "json", False):
        from core.atlas import dumps

        print(dumps(data, indent=2))
    else:
        print(summary)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``weightatlas`` console script."""
    from core.errors import USER_ERRORS, DiskFullError
    from core.safety import is_disk_full

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run_cli(args) or 0)
    except DiskFullError as e:
        print(f"weightatlas {args.command}: {e}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        if not is_disk_full(e):
            print(f"weightatlas {args.command}: error: {e}", file=sys.stderr)
            return 2
        print(f"weightatlas {args.command}: {disk_full_message(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"weightatlas {args.command}: interrupted; re-run to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk surfaces as OSError, RuntimeError, SafetensorError...
        if not is_disk_full(e):
            raise
        print(f"weightatlas {args.command}: {disk_full_message(e, args)}", file=sys.stderr)
        return 2


def disk_full_message(e: BaseException, args: argparse.Namespace) -> str:
    """``disk full while writing X; nothing lost, re-run to resume`` (X: the file, else the atlas)."""
    where = None
    cur: BaseException | None = e
    while cur is not None and where is None:
        where = getattr(cur, "filename", None)
        cur = cur.__cause__ or cur.__context__
    where = where or getattr(args, "atlas", None) or getattr(args, "out", None) or "the output"
    return f"disk full while writing {where}; nothing lost, re-run to resume"


if __name__ == "__main__":
    sys.exit(main())
