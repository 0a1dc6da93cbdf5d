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

from core.atlas import (
    Atlas,
    BackboneFiles,
    atomic_write_bytes,
    read_json,
    read_jsonl,
    write_json,
)
from core.catalog import map_table
from core.errors import WeightAtlasError
from core.manifest import as_row
from core.zoos.tasks import chance_accuracy

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
    """Probe R² inside each homogeneous zoo (grouped K-fold mean ± std) per feature set, with
    the mean predictor; the pooled probe when the atlas has no zoo."""
    plt = _plt()
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    out = read_json(a.results_dir / f"{name}.json")
    panels = [(k, z["results"]) for k, z in (out.get("zoos") or {}).items()]
    if not panels:
        panels = [("pooled over the collection", out["results"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 3.8), squeeze=False)
    for ax, (title, results) in zip(axes[0], panels):
        sets = list(results)
        targets = [t for t in results[sets[0]] if results[sets[0]][t].get("metric") == "r2"]
        width = 0.8 / len(sets)
        for j, fs in enumerate(sets):
            m = [results[fs][t].get("cv_mean") for t in targets]
            sd = [results[fs][t].get("cv_std") or 0.0 for t in targets]
            ax.bar([i + j * width for i in range(len(targets))],
                   [v if v is not None else 0.0 for v in m], yerr=sd, width=width, capsize=2,
                   label=fs)  # fmt: skip
        for i, t in enumerate(targets):
            b = results[sets[0]][t].get("cv_baseline_mean")
            if b is not None:
                ax.hlines(b, i - width / 2, i + width * (len(sets) - 0.5), colors="black",
                          linestyles="dashed", linewidth=1,
                          label="mean predictor" if i == 0 else None)  # fmt: skip
        ax.set_xticks([i + width * (len(sets) - 1) / 2 for i in range(len(targets))])
        ax.set_xticklabels(targets, fontsize=8)
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_ylim(max(-1.0, ax.get_ylim()[0]), 1.05)
        ax.set_ylabel("R², grouped K-fold by run")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Linear probes inside one zoo: embedding vs s(W) vs weights W", fontsize=10)
    fig.tight_layout()
    return fig


def generation_figure(atlas: str | Path | Atlas, name: str = "generation") -> Any:
    """Test accuracy against fine-tuning epochs: sampled vs random init, per setting, with the
    task's chance level (most frequent test class) dashed."""
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
        chance = chance_accuracy(task)
        ax.axhline(chance, color="black", linestyle="dashed", linewidth=1,
                   label=f"chance {chance:.2f}")  # fmt: skip
        ax.set_xlabel("fine-tuning epochs")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{setting}: {out['arch']} on {task}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


AT_CHANCE_MARGIN = 0.02  # an arm within max(its std, this) of chance is "at chance"


def at_chance(mean: float, std: float, chance: float) -> bool:
    """Whether an accuracy ``mean ± std`` cannot be told from chance."""
    return mean - chance <= max(std, AT_CHANCE_MARGIN)


def compare(
    a: tuple[float, float],
    b: tuple[float, float],
    chance: float | None = None,
    higher_is_better: bool = True,
) -> tuple[str, str]:
    """Verdict on the claim "a is better than b" from ``(mean, spread)`` of each arm.

    ``inconclusive`` when both arms sit at chance or when the intervals mean ± spread overlap;
    else ``agree`` (a better) or ``disagree`` (b better).

    Returns:
        ``(outcome, effect text)``, e.g. ``("agree", "+0.120 (spreads 0.030, 0.020)")``.
    """
    (ma, sa), (mb, sb) = a, b
    effect = ma - mb
    text = f"{effect:+.3f} (spreads {sa:.3f}, {sb:.3f})"
    if chance is not None and at_chance(ma, sa, chance) and at_chance(mb, sb, chance):
        return "inconclusive", text + f"; both at chance ({chance:.3f})"
    if abs(effect) <= sa + sb:
        return "inconclusive", text + "; spreads overlap"
    better = effect > 0 if higher_is_better else effect < 0
    return ("agree" if better else "disagree"), text


def table_text(atlas: str | Path | Atlas, name: str) -> str:
    """The markdown of ``ATLAS/results/NAME.md`` (for display in a notebook)."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    path = a.results_dir / f"{name}.md"
    if not path.exists():
        raise WeightAtlasError(f"{path} does not exist; run the stage that writes it first")
    return path.read_text()


def _line(outcome: str, what: str, text: str) -> str:
    return f"- **{outcome}**: {what}: {text}"


# Thresholds of the verdict rules (issue 25: a verdict says only what its numbers support).
PROBE_MIN_R2 = 0.5  # parity "agrees" only where both probes reach this R² (003: ~0.95 on MNIST)
# 001 Table 12: sampled ResNet-18s fall to random guessing below ~45 M training tokens
GENERATION_TOKEN_FLOOR = 45_000_000
TABLE5_EPOCH = 2  # 003 Table 5 compares sampled and prompt models after 2 fine-tuning epochs
NOT_TESTABLE = "not testable"


def probe_verdict(
    target: str,
    emb: dict[str, Any],
    sw: dict[str, Any],
    step: int | None,
    noise: dict[str, Any] | None = None,
    min_r2: float = PROBE_MIN_R2,
) -> tuple[str, str]:
    """One probe verdict on 003 Table 9's parity claim: the embedding predicts ``target``
    about as well as s(W) inside one zoo.

    Args:
        target: ``test_accuracy``, ``epoch`` or ``generalization_gap``.
        emb, sw: the two probes' results (``cv_mean``, ``cv_std``, ``cv_baseline_mean``,
            ``cv_baseline_std``: grouped K-fold R² and the mean predictor's).
        step: the kept backbone step (``probes.json`` ``backbone_step``); 0 is the initial,
            untrained code, which is not SANE, and None says nothing: both are not testable.
        noise: the zoo's ``target_noise``; a generalization gap whose spread is at most the
            test accuracy's standard error is noise at this test size: not testable.
        min_r2: parity agrees only where both R² reach it; two weak probes are inconclusive.

    Returns:
        ``(outcome, reason)``.
    """
    em, es = emb["cv_mean"], emb["cv_std"]
    wm, ws = sw["cv_mean"], sw["cv_std"]
    base, bsd = emb.get("cv_baseline_mean") or 0.0, emb.get("cv_baseline_std") or 0.0
    untestable = []
    if step is None:
        untestable.append("the probes do not record which backbone step made the embedding")
    elif step == 0:
        untestable.append(
            "the kept backbone is step 0, an untrained code: this tests no learned "
            "representation, so it says nothing about SANE"
        )
    if target == "generalization_gap" and noise:
        se, sd = noise.get("test_accuracy_se"), noise.get("generalization_gap_std")
        if se is not None and sd is not None and sd <= se:
            untestable.append(
                f"the gap's spread over models ({sd:.4f}) is at most the test accuracy's "
                f"standard error ({se:.4f} on {noise.get('n_test_examples')} test examples): "
                "the target is noise at this test size"
            )
    if untestable:
        return NOT_TESTABLE, "; ".join(untestable)
    trained = f"backbone trained, kept step {step}"
    if em - base <= es + bsd and wm - base <= ws + bsd:
        return (
            "inconclusive",
            f"both within the spread of the mean predictor ({base:.3f}); {trained}",
        )
    if em - base <= es + bsd:
        return "disagree", f"the embedding has no signal (mean predictor {base:.3f}); {trained}"
    if abs(em - wm) <= es + ws:
        if min(em, wm) < min_r2:
            return "inconclusive", (
                f"spreads overlap but the probes are weak (R² below {min_r2}; 003 has both "
                f"near 0.95 on MNIST); {trained}"
            )
        return "agree", f"comparable: spreads overlap, both R² >= {min_r2}; {trained}"
    if em > wm:
        return "agree", f"the embedding is ahead of s(W); {trained}"
    return "disagree", (
        f"s(W) is ahead beyond the spreads (003: s(W) ahead on its CIFAR-10 and STL zoos, at "
        f"parity on MNIST and SVHN); {trained}"
    )


def probe_verdicts(out: dict[str, Any]) -> list[str]:
    """003 Table 9: embeddings predict test accuracy, epoch and generalization gap about as well
    as s(W) inside one zoo. Per zoo and target: embedding vs s(W) (grouped K-fold mean ± std),
    by the rules of ``probe_verdict``; each line names the backbone step it tested, and the gap
    line the test accuracy's standard error beside the gap's spread."""
    lines = []
    step = out.get("backbone_step")
    for key, z in (out.get("zoos") or {}).items():
        noise = z.get("noise") or {}
        for target in ("test_accuracy", "epoch", "generalization_gap"):
            e = z["results"].get("embedding", {}).get(target, {})
            w = z["results"].get("s(W)", {}).get(target, {})
            if e.get("cv_mean") is None or w.get("cv_mean") is None:
                continue
            em, es, wm, ws = e["cv_mean"], e["cv_std"], w["cv_mean"], w["cv_std"]
            effect = (
                f"embedding {em:.3f} ± {es:.3f} vs s(W) {wm:.3f} ± {ws:.3f} (effect {em - wm:+.3f})"
            )
            both = z["results"].get("embedding+s(W)", {}).get(target, {})
            if both.get("cv_mean") is not None:
                effect += f"; embedding+s(W) {both['cv_mean']:.3f} ± {both['cv_std']:.3f}"
            if target == "generalization_gap" and noise.get("test_accuracy_se") is not None:
                effect += (
                    f"; gap std {fmt(noise.get('generalization_gap_std'), 4)} vs test-accuracy "
                    f"SE {noise['test_accuracy_se']:.4f} ({noise.get('n_test_examples')} test "
                    "examples)"
                )
            outcome, why = probe_verdict(target, e, w, step, noise)
            lines.append(_line(outcome, f"{key}, {target}", f"{effect}; {why}"))
    return lines


MAP_QUALITY_MARGIN = 0.05  # issue 25: the embedding no worse than s(W) by more than this


def map_quality_verdicts(out: dict[str, Any]) -> list[str]:
    """The map's purpose (DESIGN, issue 25): nearby models share family, task and quality, no
    worse than the weights' plain statistics s(W). Per figure and space (embedding, UMAP, PCA):
    **agree** when it is within ``MAP_QUALITY_MARGIN`` of s(W) or ahead, and above the
    feature-free reference (majority / mean predictor); **disagree** otherwise. Single numbers
    (one leave-one-run-out pass, no spread), so the margin is the only tolerance."""
    from core.embeddings.map_quality import FIGURES, REFERENCE_TITLES

    lines = []
    sw = out["spaces"].get("s(W)") or {}
    names = {"embedding": "embedding", "umap": "2-D UMAP", "pca": "2-D PCA"}
    for fig in FIGURES:
        ref = out["reference"].get(fig)
        for space, name in names.items():
            v = (out["spaces"].get(space) or {}).get(fig)
            w = sw.get(fig)
            if v is None or w is None or ref is None:
                continue
            text = (
                f"{v:.3f} vs s(W) {w:.3f} (effect {v - w:+.3f}), {REFERENCE_TITLES[fig]} {ref:.3f}"
            )
            if v <= ref:
                outcome, why = "disagree", "no better than the predictor that ignores the weights"
            elif v < w - MAP_QUALITY_MARGIN:
                outcome, why = "disagree", f"behind s(W) by more than {MAP_QUALITY_MARGIN}"
            else:
                outcome, why = "agree", f"within {MAP_QUALITY_MARGIN} of s(W) or ahead"
            lines.append(_line(outcome, f"{fig.replace('_', ' ')}, {name}", f"{text}; {why}"))
    return lines


def prompt_verdicts(
    setting: str,
    task: str,
    sampled: dict[str, Any],
    prompts: dict[str, Any],
    epochs: list[int],
    chance: float | None,
) -> list[str]:
    """Sampled models against their own prompts, like for like.

    A prompt is comparable with a draw only when both carry batch-norm statistics estimated
    the same way (``prompts["prompt_batchnorm"] == "re-estimated"``: rebuilt from its tokens
    with batch norm re-estimated on the train split, as every draw); else the line is not
    testable. Two lines: zero-shot (epoch 0: would a perfect backbone reproduce the prompts?)
    and 003 Table 5's comparison, after ``TABLE5_EPOCH`` fine-tuning epochs (the nearest epoch
    >= 1 the run has), for fresh prompts on a held-out task.
    """
    accs = [v for v in prompts.get("prompt_val_accuracy") or [] if v is not None]
    if not accs:
        return []
    p = (statistics.fmean(accs), statistics.pstdev(accs) if len(accs) > 1 else 0.0)
    n = len(accs)
    like = prompts.get("prompt_batchnorm") == "re-estimated"
    unlike = (
        "batch-norm statistics differ between the arms (draws re-estimated on the train split, "
        "prompts scored with their own running statistics)"
    )
    e0 = epochs[0]
    lines = []
    what = (
        f"{setting} ({task}), epoch {e0}: sampled models reach their {n} prompts: sampled test "
        f"{sampled[f'epoch{e0}_mean']:.3f} ± {sampled[f'epoch{e0}_std']:.3f} vs prompts' "
        f"validation accuracy {p[0]:.3f} ± {p[1]:.3f}"
    )
    if like:
        outcome, text = compare((sampled[f"epoch{e0}_mean"], sampled[f"epoch{e0}_std"]), p, chance)
        lines.append(_line(outcome, what, f"effect {text}; batch norm re-estimated in both"))
    else:
        lines.append(_line(NOT_TESTABLE, what, unlike))
    if setting != "held-out" or prompts.get("source") != "fresh":
        return lines
    later = [e for e in epochs if e >= 1]
    e5 = min(later, key=lambda e: (abs(e - TABLE5_EPOCH), e)) if later else None
    claim = (
        f"held-out ({task}), Table 5: sampled models beat their {n} prompt examples after "
        f"{TABLE5_EPOCH} fine-tuning epochs"
    )
    if e5 is None:
        lines.append(_line(NOT_TESTABLE, claim, "no fine-tuning epoch was run"))
    elif not like:
        lines.append(_line(NOT_TESTABLE, claim, unlike))
    else:
        s = (sampled[f"epoch{e5}_mean"], sampled[f"epoch{e5}_std"])
        outcome, text = compare(s, p, chance)
        lines.append(_line(
            outcome,
            f"{claim} (here epoch {e5}): sampled test {s[0]:.3f} ± {s[1]:.3f} vs prompts' "
            f"validation accuracy {p[0]:.3f} ± {p[1]:.3f}",
            f"effect {text}",
        ))  # fmt: skip
    return lines


def generation_verdicts(out: dict[str, Any]) -> list[str]:
    """003 Tables 3-5 / 001 C.2: sampled models start above random init and stay ahead during
    fine-tuning. Per setting and fine-tuning budget: sampled vs random init; then sampled vs
    their own prompts, like for like (``prompt_verdicts``)."""
    lines = []
    epochs = sorted(int(e) for e in out["config"]["epochs"])
    for setting in ("in-distribution", "held-out"):
        rows = {r["init"]: r for r in out["table"] if r["setting"] == setting}
        if "sampled" not in rows or "random" not in rows:
            continue
        task = rows["sampled"]["task"]
        chance = chance_accuracy(task)
        for e in epochs:
            s, r = rows["sampled"], rows["random"]
            outcome, text = compare(
                (s[f"epoch{e}_mean"], s[f"epoch{e}_std"]),
                (r[f"epoch{e}_mean"], r[f"epoch{e}_std"]),
                chance,
            )
            what = (
                f"{setting} ({task}), epoch {e}: sampled {s[f'epoch{e}_mean']:.3f} ± "
                f"{s[f'epoch{e}_std']:.3f} vs random init {r[f'epoch{e}_mean']:.3f} ± "
                f"{r[f'epoch{e}_std']:.3f}, chance {chance:.3f}"
            )
            lines.append(_line(outcome, what, f"effect {text}"))
        prompts = (out.get("prompts") or {}).get(setting) or {}
        lines += prompt_verdicts(setting, task, rows["sampled"], prompts, epochs, chance)
    return lines


def _arm(mln: dict[str, Any], arm: str, key: str, kind: str) -> tuple[float, float] | None:
    s = (mln["modes"].get(arm) or {}).get("spread", {}).get(key, {}).get(kind)
    return (s["mean"], s["std"]) if s else None


MAD_TO_STD = 1.4826  # median absolute deviation x this = std for a normal distribution


def robust_spread(values: Sequence[float]) -> tuple[float, float]:
    """``(median, 1.4826 x median absolute deviation)``: a centre and spread that a few
    outlying values do not drive (for normal data, the mean and the std)."""
    if not values:
        raise ValueError("robust_spread needs at least one value")
    m = statistics.median(values)
    return m, MAD_TO_STD * statistics.median(abs(v - m) for v in values)


def robust_arm(mln: dict[str, Any], arm: str, key: str, kind: str) -> tuple[float, float] | None:
    """An MLN arm's per-model medians of ``key`` over its ``kind`` layers (from the per-layer
    records ``modes[arm]["layers"]``), summarized by ``robust_spread``; None without records."""
    per: dict[str, list[float]] = defaultdict(list)
    for r in (mln["modes"].get(arm) or {}).get("layers") or []:
        v = r.get(key)
        if r.get("kind") == kind and isinstance(v, int | float) and math.isfinite(v):
            per[r["model"]].append(float(v))
    if not per:
        return None
    return robust_spread([statistics.median(v) for v in per.values()])


SIGN_TEST_ALPHA = 0.05  # paired comparisons: a majority counts when the sign test rejects 50/50


def sign_test(wins: int, n: int) -> float:
    """Two-sided exact sign-test p-value of ``wins`` of ``n`` paired comparisons (ties left
    out before counting): the chance of a split at least this uneven under 50/50."""
    if n == 0:
        return 1.0
    k = min(wins, n - wins)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_layers(
    mln: dict[str, Any], a: str, b: str, key: str, kind: str, suffix: str = ""
) -> list[tuple[float, float]]:
    """``(arm a, arm b)`` values of ``key`` for every held-out (model, layer) both arms
    reconstructed, over ``kind`` layers whose name ends with ``suffix``."""

    def table(arm: str) -> dict[tuple[str, str], float]:
        out = {}
        for r in (mln["modes"].get(arm) or {}).get("layers") or []:
            v = r.get(key)
            if r.get("kind") == kind and str(r.get("layer", "")).endswith(suffix):
                if isinstance(v, int | float) and math.isfinite(v):
                    out[(r["model"], r["layer"])] = float(v)
        return out

    ta, tb = table(a), table(b)
    return [(ta[k], tb[k]) for k in sorted(set(ta) & set(tb))]


def paired_verdict(
    pairs: list[tuple[float, float]], lower_is_better: bool = True, alpha: float = SIGN_TEST_ALPHA
) -> tuple[str, str]:
    """Verdict on "the first arm is better" from paired values: the median of each arm, the
    median paired difference and an exact sign test (robust: a few outlying layers move
    neither). ``agree`` / ``disagree`` when the sign test rejects an even split at ``alpha``,
    else ``inconclusive``."""
    diffs = [x - y for x, y in pairs if x != y]
    better = sum((d < 0) if lower_is_better else (d > 0) for d in diffs)
    p = sign_test(better, len(diffs))
    med_a = statistics.median(x for x, _ in pairs)
    med_b = statistics.median(y for _, y in pairs)
    med_d = statistics.median(x - y for x, y in pairs)
    text = (
        f"medians {med_a:.3f} vs {med_b:.3f}, median paired difference {med_d:+.3f}; first arm "
        f"better in {better} of {len(diffs)} pairs (sign test p = {p:.2g})"
    )
    if p >= alpha:
        return "inconclusive", text
    return ("agree" if better > len(diffs) - better else "disagree"), text


def w1_arm(mln: dict[str, Any], arm: str, kind: str) -> tuple[tuple[float, float], str] | None:
    """An arm's W1/std for ``kind`` layers and how it was summarized: the median over
    held-out models with a MAD spread where the per-layer records exist (a few outlying models
    drove the means of norm layers: token 2.34 ± 1.27 vs masked 0.59 ± 0.24, medians 0.55 vs
    0.52), else the mean ± std over models."""
    r = robust_arm(mln, arm, "w1_over_std", kind)
    if r is not None:
        return r, "median ± MAD"
    m = _arm(mln, arm, "w1_over_std", kind)
    return (m, "mean ± std") if m else None


def mln_verdicts(mln: dict[str, Any]) -> list[str]:
    """001 Fig. 6 / D.4.1 and §4.1 / Table 1, from the per-model spreads of the MLN ablation.

    Fig. 6 compares none, token and masked; LWLN is Table 1's baseline, which MLN is claimed to
    replace with comparable results (a parity claim: overlapping spreads agree).
    """
    lines = []
    modes = mln["modes"]

    def fmt2(v: tuple[float, float]) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    kinds = ("conv", "linear", "norm", "bias")
    for kind in kinds:  # narrow layers squashed to their mean without normalization?
        none, masked = _arm(mln, "none", "std_ratio", kind), _arm(mln, "masked", "std_ratio", kind)
        if none and masked:
            outcome, text = compare(masked, none)
            lines.append(_line(
                outcome,
                f"Fig. 6: without normalization {kind} layers are squashed (std ratio, 1 = "
                f"original spread: none {fmt2(none)} vs masked {fmt2(masked)})",
                f"effect masked - none {text}",
            ))  # fmt: skip
    # W1/std lines: per-model medians with MAD spreads (``w1_arm``), robust to outliers. The
    # padding claim compares the same layers paired, batch-norm weights (near 1, where padding
    # zeros pull a token's statistics) apart from batch-norm biases (near 0)
    tok, masked = (w1_arm(mln, a, "norm") for a in ("token", "masked"))
    split = {
        part: paired_layers(mln, "masked", "token", "w1_over_std", "norm", suffix)
        for part, suffix in (("weights", ".weight"), ("biases", ".bias"))
    }
    if any(split.values()):
        for part, pairs in split.items():
            if not pairs:
                continue
            outcome, text = paired_verdict(pairs)
            lines.append(_line(
                outcome,
                f"Fig. 6: normalizing with padding biases norm layers, batch-norm {part} (W1/std "
                f"of the same held-out layers, masked vs token)",
                text,
            ))  # fmt: skip
    elif tok and masked:
        outcome, text = compare(masked[0], tok[0], higher_is_better=False)
        lines.append(_line(
            outcome,
            f"Fig. 6: normalizing with padding biases norm layers (W1/std over held-out models, "
            f"{masked[1]}: token {fmt2(tok[0])} vs masked {fmt2(masked[0])})",
            f"effect masked - token {text}",
        ))  # fmt: skip
    for kind in kinds:
        masked = w1_arm(mln, "masked", kind)
        others = {a: w1_arm(mln, a, kind) for a in ("none", "token")}
        others = {a: v for a, v in others.items() if v}
        if masked and others:
            best = min(others, key=lambda a: others[a][0][0])
            outcome, text = compare(masked[0], others[best][0], higher_is_better=False)
            lines.append(_line(
                outcome,
                f"Fig. 6: MLN matches the {kind} distributions closest (W1/std, {masked[1]}: "
                f"masked {fmt2(masked[0])} vs the better of none/token, {best}, "
                f"{fmt2(others[best][0])})",
                f"effect {text}",
            ))  # fmt: skip
    for kind in kinds:
        masked, layer = (w1_arm(mln, a, kind) for a in ("masked", "layer"))
        if masked and layer:
            (mm, ms), (lm, ls) = masked[0], layer[0]
            effect = mm - lm
            if abs(effect) <= ms + ls:
                outcome, why = "agree", "comparable: spreads overlap"
            else:
                outcome, why = (
                    ("agree", "MLN closer") if effect < 0 else ("disagree", "LWLN closer")
                )
            lines.append(_line(
                outcome,
                f"§4.1: MLN replaces LWLN with comparable {kind} reconstructions (W1/std, "
                f"{masked[1]}: masked {fmt2(masked[0])} vs layer {fmt2(layer[0])})",
                f"effect masked - layer {effect:+.3f}; {why}",
            ))  # fmt: skip
    g = {a: modes[a]["generation"] for a in ("masked", "layer") if a in modes}
    if len(g) == 2:
        outcome, text = compare(
            (g["masked"]["mean"], g["masked"]["std"]),
            (g["layer"]["mean"], g["layer"]["std"]),
            mln.get("chance"),
        )
        lines.append(_line(
            outcome,
            f"Table 1: MLN generates better models than LWLN (001: 2 of 3 data sets) — sampled "
            f"MLN {g['masked']['mean']:.3f} ± {g['masked']['std']:.3f} vs LWLN "
            f"{g['layer']['mean']:.3f} ± {g['layer']['std']:.3f}, chance {mln.get('chance', 0):.3f}",
            f"effect MLN - LWLN {text}",
        ))  # fmt: skip
    return lines


def tokenization_verdicts(tok: dict[str, Any]) -> list[str]:
    """001 D.4.2: dense has far less padding and ~20 % less disk; similar reconstruction R²."""
    s = tok.get("schemes", {})
    if "dense" not in s or "sparse" not in s:
        return []
    d, p = s["dense"], s["sparse"]
    pad = "agree" if d["padding_fraction"] < p["padding_fraction"] else "disagree"
    disk = 1 - d["disk_bytes"] / p["disk_bytes"]
    return [
        _line(
            pad,
            "dense has less padding",
            f"{100 * d['padding_fraction']:.2f} % vs "
            f"{100 * p['padding_fraction']:.2f} % (001: 0.01 % vs 20 %)",
        ),  # fmt: skip
        _line(
            "agree" if disk > 0 else "disagree",
            "dense uses less disk",
            f"{100 * disk:.0f} % less (001: ~20 %)",
        ),  # fmt: skip
        _line(
            "inconclusive",
            "similar reconstruction R²",
            f"val R² dense {fmt(d['best_val_r2'])} "
            f"vs sparse {fmt(p['best_val_r2'])}: one backbone per scheme, no spread",
        ),  # fmt: skip
    ]


def composition_verdicts(comp: dict[str, Any], floor: int = GENERATION_TOKEN_FLOOR) -> list[str]:
    """001 Table 2 / 000: a diverse collection generates better target models than one family.

    001 Table 12 puts a floor under the claim: below ~45 M training tokens (``floor``) sampled
    ResNet-18s fall to random guessing. Both arms at chance with fewer training tokens than the
    floor is what Table 12 predicts whatever the composition: not testable at this scale.
    """
    v = comp.get("variants", {})
    if "diverse" not in v or "single-family" not in v:
        return []
    d, s = v["diverse"]["generation"], v["single-family"]["generation"]
    chance = comp.get("chance")
    outcome, text = compare((d["mean"], d["std"]), (s["mean"], s["std"]), chance)
    tokens = [
        t for t in (v[k].get("tokens") for k in ("diverse", "single-family")) if t is not None
    ] or ([comp["budget_tokens"]] if comp.get("budget_tokens") is not None else [])
    below = bool(tokens) and max(tokens) < floor
    both_at_chance = (
        chance is not None
        and at_chance(d["mean"], d["std"], chance)
        and at_chance(s["mean"], s["std"], chance)
    )
    what = (
        f"diverse {d['mean']:.3f} ± {d['std']:.3f} vs single-family {s['mean']:.3f} ± "
        f"{s['std']:.3f} (chance {fmt(chance)})"
    )
    if below and both_at_chance:
        return [_line(
            NOT_TESTABLE,
            what,
            f"effect {text}; not testable at this scale: each arm trained on at most "
            f"{max(tokens):,} tokens, and 001 Table 12 has sampled models at chance below "
            f"~{floor / 1e6:.0f} M",
        )]  # fmt: skip
    note = f"; below 001 Table 12's ~{floor / 1e6:.0f} M-token floor" if below else ""
    return [_line(outcome, what, f"effect {text}{note}")]


def _mean_sd(values: Sequence[float] | None) -> tuple[float, float] | None:
    vals = [float(v) for v in values or [] if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return statistics.fmean(vals), statistics.pstdev(vals) if len(vals) > 1 else 0.0


def modality_verdicts(mod: dict[str, Any]) -> list[str]:
    """001 §4.4.1 / Fig. 4: a backbone trained on vision models only generates models of a new
    modality (GPT-2) that converge faster than training from scratch.

    From ``experiment_modality.json``: the ``images-only`` arm's generated models after the
    run's fine-tuning epochs against random init with the same epochs and seeds, by test loss
    (001's main curve) and by test accuracy; each line names how much of the held-out sequence
    models that backbone reconstructs. Then the experiment's own question (no claim of 001's):
    does the arm that saw the modality reconstruct its held-out models better?
    """
    arms = mod.get("arms") or {}
    img = arms.get("images-only")
    if not img:
        return []
    g = img.get("generation") or {}
    epochs = (mod.get("config") or {}).get("finetune_epochs")
    chance = g.get("chance_accuracy")
    target = (mod.get("config") or {}).get("target_arch", "the target")
    task = mod.get("target_task")
    r2 = (img.get("heldout_sequence") or {}).get("r2_weights")
    context = f"held-out sequence weight R² of this backbone {fmt(r2)}"
    lines = []
    pairs = (
        ("test loss", "finetuned_test_losses", "random_finetuned_test_losses", False),
        ("test accuracy", "finetuned_test_accuracies", "random_finetuned_test_accuracies", True),
    )
    for name, gen_key, rnd_key, higher in pairs:
        gen, rnd = _mean_sd(g.get(gen_key)), _mean_sd(g.get(rnd_key))
        if gen is None or rnd is None:
            continue
        outcome, text = compare(gen, rnd, chance if higher else None, higher_is_better=higher)
        lines.append(_line(
            outcome,
            f"§4.4.1 / Fig. 4: an images-only backbone generates {target} ({task}) that beats "
            f"scratch after {epochs} fine-tuning epoch(s), by {name}: generated "
            f"{gen[0]:.3f} ± {gen[1]:.3f} vs random init {rnd[0]:.3f} ± {rnd[1]:.3f}"
            + (f", chance {chance:.3f}" if higher and chance is not None else ""),
            f"effect {text}; {context}",
        ))  # fmt: skip
    both = arms.get("both")
    if both:
        a = _mean_sd(list(((both.get("heldout_sequence") or {}).get("per_model") or {}).values()))
        b = _mean_sd(list(((img.get("heldout_sequence") or {}).get("per_model") or {}).values()))
        if a and b:
            outcome, text = compare(a, b)
            lines.append(_line(
                outcome,
                "this experiment's question (not 001's): the backbone that saw sequence models "
                f"reconstructs held-out ones better (per-model weight R², both {a[0]:.3f} ± "
                f"{a[1]:.3f} vs images-only {b[0]:.3f} ± {b[1]:.3f})",
                f"effect {text}",
            ))  # fmt: skip
    return lines


# ------------------------------------------------------------ model trees (issue 26)
def lineage_table(atlas: str | Path | Atlas) -> Path:
    """Write ``results/lineage.md``: recovered trees vs declared lineage, MoTHer beside ours
    where a zoo truth was scored into the lineage info, and the task probes within/across
    trees (``core.trees``)."""
    from core.trees.probes import FEATURES
    from core.trees.table import STATUSES, LineageTable

    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    info = LineageTable(a.root).info()
    st = info["status"]
    rows = [[s, st.get(s, 0), STATUSES[s]] for s in STATUSES]
    note = (
        f"`weightatlas lineage`: {info['models']} models, {info['trees']} trees of 2+ models, "
        f"{info['edges']} parent edges recovered from the weights in "
        f"{info['fingerprint_seconds'] + info['recover_seconds']:.1f} s "
        f"({info['pairs_compared']} model pairs compared on fixed samples). Declared "
        "`base_model` vs the weights, per model:"
    )
    text = note + "\n\n" + md_table(["status", "models", "meaning"], rows) + "\n"
    score = info.get("score")
    if score:
        ours, mother = score["ours"], score.get("mother") or {}
        srows = [
            ["tree membership ARI", ours["ari"], mother.get("ari")],
            ["parent edge accuracy (directed)", ours["edge_accuracy"], mother.get("edge_accuracy")],
            ["roots found as roots", ours["root_accuracy"], mother.get("root_accuracy")],
        ]
        text += (
            f"\nAgainst the zoo's ground truth ({score['tree_models']} tree models, "
            f"{ours['edges']} true parent edges): planted wrong or missing declarations found "
            f"{score['planted_found']} of {score['planted']}, false alarms "
            f"{len(score['false_alarms'])}.\n\n"
            + md_table(["", "ours (per-tensor deltas)", "MoTHer"], srows)
            + "\n"
        )
    probes = (info.get("probes") or {}).get("pooled") or {}
    if probes:
        prow = [
            [f, probes.get(f"within/{f}"), probes.get(f"across/{f}")]
            for f in (*FEATURES, "majority")
        ]
        fams = info["probes"]["families"]
        sizes = ", ".join(f"{k} {v['models']} ({v['trees']} trees)" for k, v in fams.items())
        text += (
            "\nTask probes (ProbeX's claim): which task a fine-tune was trained on, from its "
            f"weights; logistic regression, pooled over families ({sizes} fine-tunes). Within "
            "trees: leave one model out; across trees: leave its whole tree out.\n\n"
            + md_table(["features", "within trees", "across trees"], prow)
            + "\n"
        )
    path = a.results_dir / "lineage.md"
    atomic_write_bytes(path, text.encode())
    write_json(a.results_dir / "lineage.json", info)
    return path


def lineage_verdicts(out: dict[str, Any]) -> list[str]:
    """Flags and the probes against the majority rate."""
    st = out.get("status") or {}
    lines = [
        _line(
            "info",
            "declarations",
            f"{st.get('missing', 0)} missing and {st.get('contradicts', 0)} contradicted "
            f"declarations flagged, {st.get('agrees', 0)} agree",
        )
    ]
    probes = out.get("probes") or {}
    pooled = probes.get("pooled") or {}
    tasks = max((f.get("tasks", 1) for f in (probes.get("families") or {}).values()), default=1)
    for setting in ("within", "across"):
        maj = pooled.get(f"{setting}/majority")
        if maj is not None:  # leave-one-out majority can fall below chance; compare with both
            maj = max(maj, 1.0 / tasks)
        best = max(
            (
                (v, k.split("/", 1)[1])
                for k, v in pooled.items()
                if k.startswith(setting + "/") and not k.endswith("/majority")
            ),
            default=None,
        )
        if best is not None and maj is not None:
            verdict = "holds" if best[0] > maj + 0.1 else "not shown"
            lines.append(
                _line(
                    verdict,
                    f"task probe {setting} trees",
                    f"best {best[1]} {best[0]:.3f} vs max(majority, chance) {maj:.3f}",
                )
            )
    return lines


VERDICTS: dict[str, tuple[str, Any]] = {
    "map_quality.md": ("map_quality.json", map_quality_verdicts),
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
