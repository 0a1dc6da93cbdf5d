"""The ``weightatlas`` command line: one module per group of stages, wired in ``core.cli.main``.

``python -m core.cli STAGE ...`` and the ``weightatlas`` console script run :func:`main`;
``core.cli.main``'s docstring is the command's ``--help`` text.
"""

from __future__ import annotations

from core.cli.backbone import add_train_cli, run_train_cli, train_summary_text
from core.cli.common import (
    USER_PRESET,
    add_config_flags,
    add_json_flag,
    config_overrides,
    disk_full_message,
    emit,
)
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
from core.cli.generation import add_sample_cli, read_estimate, run_sample_cli
from core.cli.main import COMMANDS, build_parser, main

__all__ = [
    "COMMANDS",
    "USER_PRESET",
    "add_bench_cli",
    "add_collect_cli",
    "add_config_flags",
    "add_demo_cli",
    "add_embed_cli",
    "add_evaluate_cli",
    "add_json_flag",
    "add_lineage_cli",
    "add_pipeline_cli",
    "add_sample_cli",
    "add_tokenize_cli",
    "add_train_cli",
    "add_zoo_cli",
    "build_parser",
    "config_overrides",
    "disk_full_message",
    "emit",
    "main",
    "read_estimate",
    "run_bench_cli",
    "run_collect_cli",
    "run_demo_cli",
    "run_embed_cli",
    "run_evaluate_cli",
    "run_lineage_cli",
    "run_pipeline_cli",
    "run_sample_cli",
    "run_tokenize_cli",
    "run_train_cli",
    "run_zoo_cli",
    "train_summary_text",
]
