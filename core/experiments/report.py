"""Markdown tables and figures for the pipeline report.

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
"""

from __future__ import annotations

import io
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from core.atlas import Atlas, atomic_write_bytes, read_json, read_jsonl
from core.catalog import map_table
from core.errors import WeightAtlasError

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
    """A manifest row's test accuracy (zoo label block first, then card metrics)."""
    labels = row.get("labels") or {}
    metrics = row.get("metrics") or {}
    for src in (labels, metrics):
        for key in ("test_accuracy", "accuracy", "eval_accuracy", "top1"):
            v = src.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                return float(v)
    return None


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
    path = a.tokens_dir / "stats.json"
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
    return list(read_jsonl(Path(backbone_dir) / "metrics.jsonl"))


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


def training_table(atlas: str | Path | Atlas, backbone_dir: str | Path | None = None) -> Path:
    """``results/training.md``: the main backbone's loss and reconstruction R² over training."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    bdir = Path(backbone_dir) if backbone_dir is not None else a.backbone_dir
    s = training_summary(bdir)
    cfg_path = bdir / "config.json"
    cfg = read_json(cfg_path) if cfg_path.exists() else {}
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
        rows += [
            ["selected step (best median per-layer val R², conv + linear)", selected["step"]],
            ["median per-layer val R², conv + linear (selected)", selected["value"]],
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


def save_figure(fig: Any, figures_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``FIGURES/NAME.png`` (atomically) and return the path."""

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    path = Path(figures_dir) / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


# ------------------------------------------------------------------------------ figures


def _plt() -> Any:
    """pyplot (headless machines fall back to Agg; notebooks keep their inline backend)."""
    import matplotlib.pyplot as plt

    return plt


def collection_figure(atlas: str | Path | Atlas) -> Any:
    """Accepted models per family and task (left), test accuracy per family (right)."""
    plt = _plt()
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    rows = a.accepted()
    fams = sorted({r.get("family") or "unknown" for r in rows})
    tasks = sorted({model_task(r) or "unknown" for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    bottom = [0] * len(fams)
    for task in tasks:
        counts = [
            sum(1 for r in rows if (r.get("family") or "unknown") == f and model_task(r) == task)
            for f in fams
        ]
        ax1.bar(fams, counts, bottom=bottom, label=task)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax1.set_ylabel("accepted models")
    ax1.set_title("Collection by family and task")
    ax1.legend(fontsize=7, ncol=2)
    accs = [[model_accuracy(r) for r in rows if (r.get("family") or "unknown") == f] for f in fams]
    ax2.boxplot([[v for v in acc if v is not None] or [0.0] for acc in accs])
    ax2.set_xticks(range(1, len(fams) + 1), fams)
    ax2.set_ylabel("test accuracy")
    ax2.set_title("Accuracy of the collected checkpoints")
    fig.tight_layout()
    return fig


def tokens_figure(atlas: str | Path | Atlas) -> Any:
    """Tokens per family with their padding fraction, and tokens per layer kind."""
    plt = _plt()
    s = token_stats(atlas)
    fams = list(s.get("per_family", {}))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    toks = [s["per_family"][f]["tokens"] for f in fams]
    ax1.bar(fams, toks, color="tab:blue")
    for i, f in enumerate(fams):
        ax1.text(i, toks[i], f"{100 * s['per_family'][f]['padding_fraction']:.1f}% pad",
                 ha="center", va="bottom", fontsize=7)  # fmt: skip
    ax1.set_ylabel("tokens")
    ax1.set_title(f"{s['scheme']} tokens of size {s['token_size']} per family")
    kinds = s.get("tokens_per_kind", {})
    ax2.bar(list(kinds), list(kinds.values()), color="tab:green")
    ax2.set_ylabel("tokens")
    ax2.set_title("Tokens per layer kind")
    fig.tight_layout()
    return fig


def training_figure(backbone_dir: str | Path) -> Any:
    """Training loss and validation R² against the step."""
    plt = _plt()
    rows = read_metrics(backbone_dir)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4))
    for key in ("loss", "rec", "val_rec_loss"):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        if pts:
            ax1.plot(*zip(*pts), label=key)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax1.set_title("Backbone loss")
    for key, colour in (("val_r2", "tab:red"), ("train_r2", "tab:gray")):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        if pts:
            ax2.plot(*zip(*pts), marker="o", color=colour, label=f"{key} (pooled)")
    kinds = sorted({k for r in rows for k in r.get("val_layer_r2_median_by_kind") or {}})
    for k in kinds:
        pts = [
            (r["step"], r["val_layer_r2_median_by_kind"][k])
            for r in rows
            if isinstance((r.get("val_layer_r2_median_by_kind") or {}).get(k), int | float)
        ]
        if pts:
            ax2.plot(*zip(*pts), marker=".", linestyle="--", label=f"val {k}, median/layer")
    ax2.set_ylim(max(-1.0, ax2.get_ylim()[0]), 1.02)
    ax2.legend(fontsize=7)
    ax2.set_xlabel("step")
    ax2.set_ylabel("R² (axis clipped at -1)")
    ax2.set_title("Reconstruction R²: pooled, and median per layer by kind")
    fig.tight_layout()
    return fig


def map_figure(atlas: str | Path | Atlas, kind: str = "pca", colour: str = "family") -> Any:
    """The 2-D map of the embedded models, coloured by a categorical column."""

    plt = _plt()
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    table = map_table(a.root)
    xy = table.coords[kind]
    values = [str(v) for v in table.columns[colour]]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for v in sorted(set(values)):
        sel = [i for i, x in enumerate(values) if x == v]
        ax.scatter(xy[sel, 0], xy[sel, 1], s=14, label=v)
    ax.set_title(f"{kind.upper()} map of model embeddings by {colour}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def probes_figure(atlas: str | Path | Atlas, name: str = "probes") -> Any:
    """Probe scores of the backbone embedding vs the s(W) baseline per target."""
    plt = _plt()
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    out = read_json(a.results_dir / f"{name}.json")
    feature_sets = list(out["results"])
    targets = list(out["results"][feature_sets[0]])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(feature_sets)
    for j, fs in enumerate(feature_sets):
        vals = [out["results"][fs][t].get("value") for t in targets]
        ax.bar(
            [i + j * width for i in range(len(targets))],
            [v if v is not None else 0.0 for v in vals],
            width=width,
            label=fs,
        )
    ax.set_xticks([i + width * (len(feature_sets) - 1) / 2 for i in range(len(targets))])
    ax.set_xticklabels(targets, fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("R² (regression) / accuracy (classification)")
    ax.set_title("Linear probes: backbone embedding vs s(W)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def generation_figure(atlas: str | Path | Atlas, name: str = "generation") -> Any:
    """Test accuracy against fine-tuning epochs: sampled vs random init, per setting."""
    plt = _plt()
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    out = read_json(a.results_dir / f"{name}.json")
    epochs = sorted(int(e) for e in out["config"]["epochs"])
    settings = [
        s for s in ("in-distribution", "held-out") if any(r["setting"] == s for r in out["table"])
    ]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for row in (r for r in out["table"] if r["setting"] == setting):
            mean = [row[f"epoch{e}_mean"] for e in epochs]
            std = [row[f"epoch{e}_std"] for e in epochs]
            ax.errorbar(epochs, mean, yerr=std, marker="o", capsize=3, label=row["init"])
            task = row["task"]
        ax.set_xlabel("fine-tuning epochs")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{setting}: {out['arch']} on {task}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def table_text(atlas: str | Path | Atlas, name: str) -> str:
    """The markdown of ``ATLAS/results/NAME.md`` (for display in a notebook)."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    path = a.results_dir / f"{name}.md"
    if not path.exists():
        raise WeightAtlasError(f"{path} does not exist; run the stage that writes it first")
    return path.read_text()
