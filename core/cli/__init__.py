"""The ``weightatlas`` command line: one module per group of stages, wired in ``core.cli.main``.

``python -m core.cli STAGE ...`` and the ``weightatlas`` console script run :func:`main`;
``core.cli.main``'s docstring is the command's ``--help`` text. Each stage's
``add_<stage>_cli`` / ``run_<stage>_cli`` live in their group's module (``core.cli.data``,
``.backbone``, ``.embeddings``, ``.generation``, ``.experiments``) and are reached through
``COMMANDS``.
"""

from __future__ import annotations

from core.cli.common import USER_PRESET, config_overrides
from core.cli.main import COMMANDS, build_parser, main

__all__ = [
    "COMMANDS",
    "USER_PRESET",
    "build_parser",
    "config_overrides",
    "main",
]
