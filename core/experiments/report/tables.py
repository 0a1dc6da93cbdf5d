"""Report tables: cells (``n/a`` for missing values), markdown tables written to
``ATLAS/results/NAME.md``, and the collection, tokens and training tables.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.atlas import (
    Atlas,
    BackboneFiles,
    atomic_write_bytes,
    read_json,
    read_jsonl,
)
from core.errors import WeightAtlasError
from core.manifest import as_row

MISSING = "n/a"


def fmt(value: Any, digits: int = 3) -> str:
    """One table cell: floats rounded to ``digits`` significant decimals, None/NaN as n/a."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return MISSING
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return str(value).replace("|", "/")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(headers)} headers")
        lines.append("| " + " | ".join(fmt(v, digits) for v in row) + " |")
    return "\n".join(lines)


def write_table(
    atlas: str | Path | Atlas,
    name: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    note: str = "",
    digits: int = 3,
) -> Path:
    """Write ``ATLAS/results/NAME.md``: an optional one-paragraph note, then the table."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    text = (note.strip() + "\n\n" if note else "") + md_table(headers, rows, digits) + "\n"
    path = a.results_dir / f"{name}.md"
    atomic_write_bytes(path, text.encode())
    return path


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(vals) if vals else None


def model_accuracy(row: dict[str, Any]) -> float | None:
    """A manifest row's test accuracy (``core.manifest.ModelRow.accuracy``)."""
    return as_row(row).accuracy


def model_task(row: dict[str, Any]) -> str | None:
    """A manifest row's task (zoo label), or its first dataset."""
    labels = row.get("labels") or {}
    if labels.get("task"):
        return str(labels["task"])
    datasets = row.get("datasets") or []
    return str(datasets[0]) if datasets else None


def collection_table(atlas: str | Path | Atlas) -> Path:
    """``results/collection.md``: per family, accepted/rejected models, tasks, params, accuracy."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    rows = a.manifest()
    if not rows:
        raise WeightAtlasError(f"{a.root} has an empty manifest; run `weightatlas collect` first")
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_family[r.get("family") or "unknown"].append(r)
    table = []
    for fam in sorted(by_family):
        rs = by_family[fam]
        acc = [r for r in rs if r.get("status") == "accepted"]
        splits = Counter(r.get("split") for r in acc)
        tasks = sorted({t for t in (model_task(r) for r in acc) if t})
        params = [r["params"] for r in acc if isinstance(r.get("params"), int | float)]
        table.append(
            [
                fam,
                len(acc),
                len(rs) - len(acc),
                splits.get("train", 0),
                splits.get("val", 0),
                splits.get("test", 0),
                len(tasks),
                int(statistics.median(params)) if params else None,
                _mean(model_accuracy(r) for r in acc),
            ]
        )
    accepted = [r for r in rows if r.get("status") == "accepted"]
    reasons = Counter(
        (r.get("reason") or "unknown").split(":")[0] for r in rows if r.get("status") != "accepted"
    )
    note = f"{len(accepted)} of {len(rows)} candidate models accepted."
    if reasons:
        note += " Rejections: " + ", ".join(f"{k} ({v})" for k, v in reasons.most_common()) + "."
    headers = [
        "family",
        "accepted",
        "rejected",
        "train",
        "val",
        "test",
        "tasks",
        "median params",
        "mean test acc",
    ]
    return write_table(a, "collection", headers, table, note)


def token_stats(atlas: str | Path | Atlas) -> dict[str, Any]:
    """``tokens/stats.json`` plus ``disk_bytes`` (size of the shard files on disk)."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    path = a.tokens.stats_path
    if not path.exists():
        raise WeightAtlasError(f"{a.root} has no token statistics; run `weightatlas tokenize`")
    stats = read_json(path)
    stats["disk_bytes"] = sum(p.stat().st_size for p in a.tokens_dir.glob("*.safetensors"))
    return stats


def tokens_table(atlas: str | Path | Atlas) -> Path:
    """``results/tokens.md``: the token store per family (models, tokens, padding) and totals."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    s = token_stats(a)
    rows = [
        [fam, f["models"], f["tokens"], f["values"], f["padding_fraction"]]
        for fam, f in s.get("per_family", {}).items()
    ]
    rows.append(["all", s["models"], s["tokens"], s["values"], s["padding_fraction"]])
    note = (
        f"Scheme `{s['scheme']}`, token size {s['token_size']}; {s['failed']} models failed; "
        f"shards take {s['disk_bytes'] / 2**20:.2f} MiB on disk."
    )
    return write_table(a, "tokens", ["family", "models", "tokens", "values", "padding"], rows, note)


def read_metrics(backbone_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of a backbone's ``metrics.jsonl`` (empty if it was never trained)."""
    return list(read_jsonl(BackboneFiles(Path(backbone_dir)).metrics_path))


def _last(rows: list[dict[str, Any]], *keys: str) -> int | float | None:
    for r in reversed(rows):
        for k in keys:
            v = r.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                return v
    return None


def _first(rows: list[dict[str, Any]], *keys: str) -> int | float | None:
    return _last(list(reversed(rows)), *keys)


def training_summary(backbone_dir: str | Path) -> dict[str, int | float | None]:
    """Steps, first/last training loss, last validation loss and R², speed and wall seconds."""
    rows = read_metrics(backbone_dir)
    if not rows:
        raise WeightAtlasError(f"no metrics.jsonl in {backbone_dir}; train a backbone first")
    r2s = [float(r["val_r2"]) for r in rows if isinstance(r.get("val_r2"), int | float)]
    return {
        "steps": _last(rows, "step"),
        "first_loss": _first(rows, "loss"),
        "last_loss": _last(rows, "loss"),
        "val_rec_loss": _last(rows, "val_rec_loss"),
        "train_r2": _last(rows, "train_r2"),
        "val_r2": r2s[-1] if r2s else None,
        "best_val_r2": max(r2s) if r2s else None,
        "tokens_per_s": _last(rows, "tokens_per_s"),
        "seconds": _last(rows, "seconds"),
    }


# what a backbone's ``selected.metric`` (config.json) names, for the training table
SELECTION_METRICS = {
    "val_layer_r2_median_conv_linear": "median per-layer val R², conv + linear",
    "val_select_score": (
        "selection score: median per-layer val R², conv + linear, plus the val models' "
        "leave-one-run-out k-NN family and task accuracy"
    ),
}


def training_table(atlas: str | Path | Atlas, backbone_dir: str | Path | None = None) -> Path:
    """``results/training.md``: the main backbone's loss and reconstruction R² over training."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    bdir = Path(backbone_dir) if backbone_dir is not None else a.backbone_dir
    s = training_summary(bdir)
    cfg = BackboneFiles(bdir).config()
    rows = [
        ["steps", s["steps"]],
        ["train loss (first log)", s["first_loss"]],
        ["train loss (last log)", s["last_loss"]],
        ["val reconstruction loss (last)", s["val_rec_loss"]],
        ["train-model R² (last)", s["train_r2"]],
        ["val R² (last)", s["val_r2"]],
        ["val R² (best)", s["best_val_r2"]],
        ["tokens / s", None if s["tokens_per_s"] is None else round(s["tokens_per_s"])],
        ["wall seconds", s["seconds"]],
    ]
    vals = [r for r in read_metrics(bdir) if r.get("val_r2_by_kind")]
    selected = cfg.get("selected") if isinstance(cfg, dict) else None
    if selected:
        what = SELECTION_METRICS.get(selected.get("metric"), selected.get("metric", "score"))
        rows += [
            [f"selected step (best {what})", selected["step"]],
            [f"{what} (selected)", selected["value"]],
        ]
    sel = next((r for r in vals if selected and r["step"] == selected["step"]), None)
    sel = sel or (vals[-1] if vals else {})
    pooled = sel.get("val_r2_by_kind") or {}
    medians = sel.get("val_layer_r2_median_by_kind") or {}
    ratios = sel.get("val_layer_std_ratio_median_by_kind") or {}
    counts = sel.get("val_layers_by_kind") or {}
    for k in sorted(set(pooled) | set(medians)):
        rows.append([f"val R² {k} layers, pooled over values", pooled.get(k)])
        if k in medians:
            rows.append(
                [f"val R² {k} layers, median per layer ({counts.get(k)} layers)", medians[k]]
            )
            rows.append([f"val std ratio {k} layers, median per layer", ratios.get(k)])
    b = cfg.get("backbone", {}) if isinstance(cfg, dict) else {}
    note = (
        f"Backbone `{bdir.name}/` (preset `{cfg.get('preset', '?')}`, d_model {b.get('d_model')}, "
        f"window {b.get('window')}, latent {b.get('latent_dim')} per token of "
        f"{b.get('token_size')} values ({_ratio(b)} bottleneck), "
        f"loss norm `{cfg.get('train', {}).get('loss_norm')}`, "
        f"dtype `{cfg.get('train', {}).get('dtype', 'fp32')}`), "
        f"{cfg.get('n_train_models')} train / {cfg.get('n_val_models')} val models. R² of "
        "reconstructed weights over real (unpadded) values; per kind at the selected step, both "
        "pooled over all values of the kind and as the median over layers (std ratio: "
        "reconstructed std / original std of a layer). A pooled figure can hide weak layers: "
        "norm weights sit near 1 and the rest near 0, so the offset alone explains most variance."
    )
    if any(r.get("val_layer_r2_median_by_kind") for r in vals):
        kinds = sorted({k for r in vals for k in r.get("val_layer_r2_median_by_kind") or {}})
        curve = md_table(
            ["step", *[f"{k} R² (median/layer)" for k in kinds]],
            [
                [r["step"], *[(r.get("val_layer_r2_median_by_kind") or {}).get(k) for k in kinds]]
                for r in vals
            ],
        )
        note += "\n\nValidation curve, median per-layer R² per kind:\n\n" + curve
        note += "\n\nAt the selected step:"
    return write_table(a, "training", ["metric", "value"], rows, note)


def _ratio(b: dict[str, Any]) -> str:
    """Token size over latent size, e.g. ``2.0x`` (``?`` when unknown)."""
    t, z = b.get("token_size"), b.get("latent_dim")
    return f"{t / z:.1f}x" if isinstance(t, int) and isinstance(z, int) and z > 0 else "?"


def table_text(atlas: str | Path | Atlas, name: str) -> str:
    """The markdown of ``ATLAS/results/NAME.md`` (for display in a notebook)."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    path = a.results_dir / f"{name}.md"
    if not path.exists():
        raise WeightAtlasError(f"{path} does not exist; run the stage that writes it first")
    return path.read_text()
