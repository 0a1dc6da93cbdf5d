"""Report figures (matplotlib, saved as PNG into the run's figures directory): the
collection, tokens, training, map, probes and generation figures.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from core.atlas import (
    Atlas,
    atomic_write_bytes,
    read_json,
)
from core.catalog import map_table
from core.experiments.report.tables import (
    model_accuracy,
    model_task,
    read_metrics,
    token_stats,
)
from core.zoos.tasks import chance_accuracy


def save_figure(fig: Any, figures_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``FIGURES/NAME.png`` (atomically) and return the path."""

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    path = Path(figures_dir) / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


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
