"""What every stage's command line shares: the config flags, ``--json`` and the printed summary."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from core.atlas import dumps
from core.config import file_and_overrides, parse_overrides, presets_of, valid_keys
from core.safety import printable


def add_json_flag(p: argparse.ArgumentParser) -> None:
    """``--json``: print the stage's result as JSON instead of the human summary."""
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON (for scripts) instead of the short summary",
    )


# the one default preset of the stages that build an atlas of your models (collect, train,
# embed, evaluate): ``ci`` is the explicit smoke test (``--preset ci``); ``zoo`` and
# ``pipeline`` keep ``ci``, their own smoke-test runs
USER_PRESET = "demo"


def add_config_flags(
    p: argparse.ArgumentParser,
    component: str,
    default: str | None,
    what: str | None = None,
    default_text: str | None = None,
) -> None:
    """``--preset NAME``, ``--config FILE`` and ``--set KEY=VALUE``: the one way to configure a stage.

    The config is built as defaults <- preset <- file <- ``--set`` (``core.config.build``); an
    unknown or mistyped key fails with the list of valid keys. A config tree (``train``) takes
    dotted keys; a flat key naming one branch's field is an alias of its dotted path.
    """
    cls, table = presets_of(component)
    what = what or cls.__name__
    keys = valid_keys(cls)
    tree = any("." in k for k in keys)
    first = next((k for k in keys if k.endswith(".latent_dim")), keys[-1])
    example = f" (dotted, e.g. {first}=...; a flat key of one part is an alias)" if tree else ""
    p.add_argument(
        "--preset",
        default=default,
        choices=list(table),
        help=f"{what} preset (default: {default_text or default or 'the dataclass defaults'})",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"JSON or YAML file of {what} fields (nested mappings or dotted keys), applied over "
        "the preset",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a {what} field{example}, applied last (repeatable)",
    )


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--config`` file's fields with the ``--set`` pairs on top."""
    return file_and_overrides(args.config, parse_overrides(args.overrides))


def emit(args: argparse.Namespace, data: object, summary: str) -> None:
    """Print ``summary`` (a few human lines), or ``data`` as JSON with ``--json``."""
    if getattr(args, "json", False):
        print(dumps(data, indent=2))  # JSON escapes control characters itself
    else:
        print(printable(summary, newlines=True))
    sys.stdout.flush()


def disk_full_message(e: BaseException, args: argparse.Namespace) -> str:
    """``disk full while writing X; nothing lost, re-run to resume`` (X: the file, else the atlas)."""
    where = None
    cur: BaseException | None = e
    while cur is not None and where is None:
        where = getattr(cur, "filename", None)
        cur = cur.__cause__ or cur.__context__
    where = where or getattr(args, "atlas", None) or getattr(args, "out", None) or "the output"
    return f"disk full while writing {where}; nothing lost, re-run to resume"
