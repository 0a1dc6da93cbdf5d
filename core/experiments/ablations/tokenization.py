"""The ``tokenization`` ablation (001 D.4.2): dense versus sparse token schemes in sibling
atlases; tokens, padding, bytes on disk and the validation R² of a backbone trained on each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.atlas import Atlas, write_json
from core.config import to_dict
from core.experiments.ablations.common import (
    AblationConfig,
    _atlas,
    sibling_atlas,
    train_backbone,
)
from core.experiments.report import (
    read_metrics,
    token_stats,
    training_summary,
    write_table,
)
from core.tokens.tokenize import tokenize


def run_tokenization(atlas: str | Path | Atlas, cfg: AblationConfig) -> dict[str, Any]:
    """Dense vs sparse: tokens, padding, disk bytes and validation R² of one backbone each.

    Writes ``results/ablation_tokenization.md`` and ``results/ablation_tokenization.json``.
    """

    a = _atlas(atlas)
    rows_in = a.accepted()
    result: dict[str, Any] = {"config": to_dict(cfg), "schemes": {}}
    for scheme in tqdm(cfg.schemes, desc="tokenization ablation", unit="scheme"):
        sib = sibling_atlas(a, f"tok-{scheme}", rows_in)
        tokenize(sib.root, scheme=scheme, token_size=cfg.token_size, progress=False)
        stats = token_stats(sib)
        bdir = train_backbone(sib, f"tok-{scheme}", cfg)
        summ = training_summary(bdir)
        result["schemes"][scheme] = {
            "atlas": str(sib.root),
            "backbone": str(bdir),
            "models": stats["models"],
            "tokens": stats["tokens"],
            "padding_fraction": stats["padding_fraction"],
            "disk_bytes": stats["disk_bytes"],
            "val_r2": summ["val_r2"],
            "best_val_r2": summ["best_val_r2"],
            "val_r2_curve": [[r["step"], r["val_r2"]] for r in read_metrics(bdir) if "val_r2" in r],
        }
    write_json(a.results_dir / "ablation_tokenization.json", result)
    headers = [
        "scheme",
        "models",
        "tokens",
        "padding",
        "disk MiB",
        "val R² (last)",
        "val R² (best)",
    ]
    rows = [
        [
            s,
            r["models"],
            r["tokens"],
            r["padding_fraction"],
            r["disk_bytes"] / 2**20,
            r["val_r2"],
            r["best_val_r2"],
        ]
        for s, r in result["schemes"].items()
    ]
    note = (
        f"The same {len(rows_in)} accepted models tokenized with token size {cfg.token_size}; "
        f"one `{cfg.backbone_preset}` backbone trained {cfg.steps} steps on each store; "
        "R² of reconstructed tokens on the validation models (higher is better)."
    )
    write_table(a, "ablation_tokenization", headers, rows, note)
    return result


def tokenization_figure(result: dict[str, Any]) -> Any:
    """Validation R² over training (left); padding fraction and disk MiB (right) per scheme."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    schemes = list(result["schemes"])
    for s in schemes:
        curve = result["schemes"][s]["val_r2_curve"]
        if curve:
            ax1.plot(*zip(*curve), marker="o", label=s)
    ax1.set_xlabel("step")
    ax1.set_ylabel("validation R²")
    ax1.set_title("Reconstruction R² on validation models")
    ax1.legend(fontsize=8)
    pad = [100 * result["schemes"][s]["padding_fraction"] for s in schemes]
    mib = [result["schemes"][s]["disk_bytes"] / 2**20 for s in schemes]
    x = range(len(schemes))
    ax2.bar([i - 0.2 for i in x], pad, width=0.4, label="padding %", color="tab:purple")
    ax3 = ax2.twinx()
    ax3.bar([i + 0.2 for i in x], mib, width=0.4, label="disk MiB", color="tab:cyan")
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(schemes)
    ax2.set_ylabel("padding %")
    ax3.set_ylabel("disk MiB")
    ax2.set_title("Padding and storage")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig
