"""Markdown tables, figures and verdicts for the pipeline report.

Each stage notebook calls one writer here after its stage ran; the writer reads what the stage
left in the atlas and writes a small markdown table into ``ATLAS/results/NAME.md``, which
``core.experiments.pipeline.write_report`` stitches into ``RUN/results/report.md``:

    from core.experiments import report
    report.collection_table(atlas)   # ATLAS/results/collection.md  (from manifest.jsonl)
    report.tokens_table(atlas)       # ATLAS/results/tokens.md      (from tokens/stats.json)
    report.training_table(atlas)     # ATLAS/results/training.md    (from backbone/metrics.jsonl)

Missing values are written as ``n/a`` (never NaN), so a report whose numeric cells are all
finite is a report where every stage produced its numbers. Figure helpers save matplotlib
figures as PNG into the run's figures directory.

The package, one module per part: ``tables`` (cells, markdown tables, the collection, tokens
and training tables), ``figures``, ``rules`` (what every verdict follows: chance, spreads,
sign tests, thresholds), ``verdicts`` (probes, map quality, permutation invariance,
generation), ``ablation_verdicts`` (MLN, tokenization, composition, modality) and ``lineage``
(model trees). Everything is
importable from ``core.experiments.report``; ``VERDICTS`` maps each report section to the
JSON and the function that judge it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.atlas import read_json
from core.experiments.report.ablation_verdicts import (
    composition_verdicts,
    mln_verdicts,
    modality_verdicts,
    paired_layers,
    robust_arm,
    tokenization_verdicts,
    w1_arm,
)
from core.experiments.report.figures import (
    collection_figure,
    generation_figure,
    map_figure,
    probes_figure,
    save_figure,
    tokens_figure,
    training_figure,
)
from core.experiments.report.lineage import lineage_table, lineage_verdicts
from core.experiments.report.rules import (
    AT_CHANCE_MARGIN,
    GENERATION_TOKEN_FLOOR,
    MAD_TO_STD,
    NOT_TESTABLE,
    PROBE_MIN_R2,
    SIGN_TEST_ALPHA,
    TABLE5_EPOCH,
    at_chance,
    compare,
    paired_verdict,
    robust_spread,
    sign_test,
    verdict_line,
)
from core.experiments.report.tables import (
    MISSING,
    SELECTION_METRICS,
    collection_table,
    fmt,
    md_table,
    model_accuracy,
    model_task,
    read_metrics,
    table_text,
    token_stats,
    tokens_table,
    training_summary,
    training_table,
    write_table,
)
from core.experiments.report.verdicts import (
    MAP_QUALITY_MARGIN,
    generation_verdicts,
    map_quality_verdicts,
    permutation_verdicts,
    probe_verdict,
    probe_verdicts,
    prompt_verdicts,
)

__all__ = [
    "AT_CHANCE_MARGIN",
    "GENERATION_TOKEN_FLOOR",
    "MAD_TO_STD",
    "MAP_QUALITY_MARGIN",
    "MISSING",
    "NOT_TESTABLE",
    "PROBE_MIN_R2",
    "SELECTION_METRICS",
    "SIGN_TEST_ALPHA",
    "TABLE5_EPOCH",
    "VERDICTS",
    "at_chance",
    "collection_figure",
    "collection_table",
    "compare",
    "composition_verdicts",
    "fmt",
    "generation_figure",
    "generation_verdicts",
    "lineage_table",
    "lineage_verdicts",
    "map_figure",
    "map_quality_verdicts",
    "md_table",
    "mln_verdicts",
    "modality_verdicts",
    "model_accuracy",
    "model_task",
    "paired_layers",
    "paired_verdict",
    "permutation_verdicts",
    "probe_verdict",
    "probe_verdicts",
    "probes_figure",
    "prompt_verdicts",
    "read_metrics",
    "robust_arm",
    "robust_spread",
    "save_figure",
    "section_verdicts",
    "sign_test",
    "table_text",
    "token_stats",
    "tokenization_verdicts",
    "tokens_figure",
    "tokens_table",
    "training_figure",
    "training_summary",
    "training_table",
    "verdict_line",
    "w1_arm",
    "write_table",
]

VERDICTS: dict[str, tuple[str, Any]] = {
    "map_quality.md": ("map_quality.json", map_quality_verdicts),
    "permutation.md": ("permutation.json", permutation_verdicts),
    "probes.md": ("probes.json", probe_verdicts),
    "generation.md": ("generation.json", generation_verdicts),
    "ablation_mln.md": ("ablation_mln.json", mln_verdicts),
    "ablation_tokenization.md": ("ablation_tokenization.json", tokenization_verdicts),
    "ablation_composition.md": ("ablation_composition.json", composition_verdicts),
    "experiment_modality.md": ("experiment_modality.json", modality_verdicts),
    "lineage.md": ("lineage.json", lineage_verdicts),
}


def section_verdicts(results_dir: str | Path, table: str) -> list[str]:
    """Verdict lines for the report section of ``table`` (empty when its JSON is missing)."""
    if table not in VERDICTS:
        return []
    name, fn = VERDICTS[table]
    path = Path(results_dir) / name
    return fn(read_json(path)) if path.exists() else []
