"""The ``mln`` ablation (001 Table 1, Fig. 6, D.4.1): backbones with each loss normalization
on the atlas' own token store; per-layer-kind W1/std of held-out reconstructions, zero-shot
accuracy of sampled models, and the Fig.-6-like histograms."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.atlas import Atlas, BackboneFiles, read_json
from core.backbone.model import load_config
from core.config import to_dict
from core.embeddings.fidelity import layer_report
from core.errors import WeightAtlasError
from core.experiments.ablations.common import (
    FIG6_KINDS,
    MLN_ARMS,
    MODES,
    REPORT_KINDS,
    AblationConfig,
    _atlas,
    arm_name,
    backbone_path,
    by_kind,
    generation_accuracy,
    heldout_ids,
    heldout_prompts,
    layer_distances,
    mln_budget,
    pca_reference,
    per_model_spread,
    sibling_atlas,
    train_backbone,
    zoo_rows,
)
from core.experiments.report import (
    fmt,
    save_figure,
    training_summary,
)
from core.tokens.store import TokenStore, read_index
from core.tokens.tokenize import tokenize
from core.zoos.tasks import chance_accuracy


def run_mln(atlas: str | Path | Atlas, cfg: AblationConfig) -> dict[str, Any]:
    """Train one backbone per MLN arm; per-layer reconstruction of held-out models, sampling.

    The arms (``MLN_ARMS``) take raw tokens and differ only in the loss normalization, plus our
    default (token_norm + masked). With ``cfg.mln_zoo`` they train on one homogeneous zoo, as
    001 Table 1 (a ResNet-18 zoo). For test-split models of it: per layer kind, the median
    over layers of R², std ratio (reconstructed / original std) and W1/std, with the spread
    over models; a rank-``latent_dim`` PCA of single tokens as the linear reference; and the
    zero-shot test accuracy of models sampled from each arm, prompted by validation/test
    models only. Writes ``results/ablation_mln.md`` and ``results/ablation_mln.json``.
    """
    a = _atlas(atlas)
    base = a
    if cfg.mln_zoo:
        base = sibling_atlas(a, "mln-" + cfg.mln_zoo.replace("/", "-"), zoo_rows(a, cfg.mln_zoo))
        if not base.tokens.exists() or base.tokens.scheme_and_size()[1] is None:
            index = read_index(a.tokens_dir)
            tokenize(base.root, scheme=index["scheme"], token_size=index["token_size"],
                     progress=False)  # fmt: skip
    held = heldout_ids(base, cfg.heldout_models, cfg.seed)
    prompts, size = heldout_prompts(base, cfg, cfg.sample_keep)
    result: dict[str, Any] = {
        "heldout": held,
        "zoo": cfg.mln_zoo,
        "models": len(base.accepted()),
        "train_models": len(base.accepted("train")),
        "config": to_dict(cfg),
        "prompts": prompts,
        "modes": {},
    }
    latent = None
    for mode in tqdm(cfg.modes, desc="MLN ablation", unit="backbone"):
        if mode not in MLN_ARMS:
            raise WeightAtlasError(f"unknown MLN arm {mode!r}; choose from {', '.join(MLN_ARMS)}")
        bdir = train_backbone(base, arm_name(mode), cfg, {**mln_budget(cfg), **MLN_ARMS[mode]})
        latent = load_config(bdir).latent_dim
        layers = layer_distances(base, held, bdir)
        gen = generation_accuracy(base, bdir, cfg, arm_name(mode), prompts, size)
        result["modes"][mode] = {
            "backbone": str(bdir),
            **MLN_ARMS[mode],
            **_layer_summary(layers),
            "val_r2": training_summary(bdir)["val_r2"],
            "generation": gen,
            "layers": layers,
        }
    ref = pca_reference(base, held, latent or 16)
    result["pca_reference"] = {"rank": latent, **_layer_summary(ref)}
    task = next(iter(result["modes"].values()))["generation"]["task"]
    result["chance"] = chance_accuracy(task)
    a.write_result("ablation_mln", result, mln_markdown(result))
    return result


def _layer_summary(layers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "r2_median": by_kind(layers, "r2", "median"),
        "std_ratio_median": by_kind(layers, "std_ratio", "median"),
        "w1_median": by_kind(layers, "w1_over_std", "median"),
        "w1_over_std": by_kind(layers, "w1_over_std"),
        "r2": by_kind(layers, "r2"),
        "spread": {
            key: per_model_spread(layers, key) for key in ("r2", "std_ratio", "w1_over_std")
        },
    }


def _cell(summary: dict[str, Any], key: str, kind: str) -> str:
    med = summary[f"{key}_median"].get(kind)
    spread = summary["spread"][{"w1": "w1_over_std"}.get(key, key)].get(kind)
    if med is None:
        return "n/a"
    return f"{fmt(med)} ({fmt(spread['std'])})" if spread else fmt(med)


def mln_markdown(result: dict[str, Any]) -> str:
    """The MLN ablation's tables: per layer kind median R², std ratio and W1/std, sampling."""
    cfg = result["config"]
    modes = result["modes"]
    kinds = [k for k in REPORT_KINDS if any(k in m["r2_median"] for m in modes.values())]
    ref = result.get("pca_reference")
    where = f"the `{result['zoo']}` zoo" if result.get("zoo") else "the whole atlas"
    skip = (
        " plus a linear token -> latent -> token path learned from a random init"
        if cfg.get("mln_skip")
        else ""
    )
    lines = [
        f"{len(modes)} backbones (`{cfg['backbone_preset']}`, latent {ref and ref['rank']} per "
        f"token{skip}, {cfg['steps']} steps each, seed {cfg['seed']}) trained on {where} "
        f"({result['train_models']} train models of {result['models']}); every arm but the "
        "last takes raw tokens (`token_norm` off) and differs only in the loss normalization. "
        f"Reconstructed: {len(result['heldout'])} test-split models. Per layer kind, the median "
        "over their layers, and in brackets the std over models of each model's median. "
        f"`PCA rank {ref and ref['rank']}`: the best linear bottleneck of that size on single "
        "tokens (no training, no context), for reference.",
        "",
    ]
    arms = [(name, m) for name, m in modes.items()]
    if ref:
        arms.append((f"PCA rank {ref['rank']} (reference)", ref))
    for key, title in (
        ("r2", "R² (higher is better)"),
        ("std_ratio", "std ratio, reconstructed / original (1 is best; below 1: squashed)"),
        ("w1", "W1 / layer std (lower is better)"),
    ):
        lines += [f"Median per-layer {title}:", ""]
        lines += ["| arm | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(_cell(m, key, k) for k in kinds) + " |" for n, m in arms]
        lines.append("")
    lines += [
        f"Sampled models: `{cfg['target_arch']}` for "
        f"`{next(iter(modes.values()))['generation']['task']}`, {cfg['sample_n']} drawn and the "
        f"best {cfg['sample_keep']} by validation accuracy kept, zero-shot test accuracy; "
        f"prompts: {', '.join(result['prompts'] or ['chosen by the sampler'])}. Chance (the "
        f"most frequent test class): {fmt(result['chance'])}.",
        "",
        "| arm | loss | token_norm | val R² (pooled) | sampled acc (mean ± std) | chance |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in modes.items():
        g = m["generation"]
        lines.append(
            f"| {name} | {m['loss_norm']} | {str(m['token_norm']).lower()} | {fmt(m['val_r2'])} "
            f"| {fmt(g['mean'])} ± {fmt(g['std'])} | {fmt(result['chance'])} |"
        )
    return "\n".join(lines) + "\n"


def _pick_layers(layers: list[Any], kinds: tuple[str, ...]) -> dict[str, Any]:
    """The largest layer of each kind (most values, so the histogram is meaningful)."""
    out = {}
    for kind in kinds:
        cands = [e for e in layers if e.kind == kind]
        if cands:
            out[kind] = max(cands, key=lambda e: (math.prod(e.shape), -e.offset))
    return out


ARM_COLORS = {
    "none": "tab:orange",
    "token": "tab:green",
    "layer": "tab:purple",
    "masked": "tab:red",
    "token_norm+masked": "tab:brown",
}


def mln_base(atlas: str | Path | Atlas) -> Atlas:
    """The atlas the MLN arms trained on: the zoo's sibling atlas, or the atlas itself."""
    a = _atlas(atlas)
    path = a.results_dir / "ablation_mln.json"
    zoo = read_json(path).get("zoo") if path.exists() else None
    return Atlas.open(a.root / "ablations" / ("mln-" + zoo.replace("/", "-"))) if zoo else a


def mln_figure(
    atlas: str | Path | Atlas,
    figures_dir: str | Path,
    model_id: str | None = None,
    modes: tuple[str, ...] = MODES,
    name: str = "ablation_mln_histograms",
) -> Path:
    """Fig. 6 of 001: original vs reconstructed value histograms of a conv, norm and linear layer.

    One row per MLN arm (trained by ``run_mln``), one column per layer kind, for one test-split
    model; each panel overlays the original layer's histogram and the reconstruction's.
    """
    import matplotlib.pyplot as plt

    a = _atlas(atlas)
    base = mln_base(a)
    store = TokenStore(base.tokens_dir)
    if model_id is None:
        cands = heldout_ids(base, 64)
        scored = [(len(_pick_layers(store.layers(m), FIG6_KINDS)), m) for m in cands]
        model_id = max(scored, key=lambda t: (t[0], t[1]))[1]
    picked = _pick_layers(store.layers(model_id), FIG6_KINDS)
    if not picked:
        raise WeightAtlasError(f"{model_id} has no conv, norm or linear layer to plot")
    modes = tuple(
        m for m in modes if BackboneFiles(backbone_path(a, arm_name(m))).weights_path.exists()
    )
    if not modes:
        raise WeightAtlasError("no MLN ablation backbones trained yet; run run_mln first")
    fig, axes = plt.subplots(
        len(modes), len(picked), figsize=(3.6 * len(picked), 2.1 * len(modes)), squeeze=False
    )
    for i, mode in enumerate(modes):
        recs = {
            r["name"]: r
            for r in layer_report(base.root, model_id, backbone_path(a, arm_name(mode)))
        }
        for j, (kind, entry) in enumerate(picked.items()):
            ax = axes[i][j]
            rec = recs[entry.name]
            lo = min(min(rec["original"]), min(rec["reconstructed"]))
            hi = max(max(rec["original"]), max(rec["reconstructed"]))
            bins = 30 if hi > lo else 1
            ax.hist(rec["original"], bins=bins, range=(lo, hi), density=True, alpha=0.45,
                    color="tab:blue", label="original")  # fmt: skip
            ax.hist(rec["reconstructed"], bins=bins, range=(lo, hi), density=True, alpha=0.45,
                    color=ARM_COLORS.get(mode, "tab:gray"), label=mode)  # fmt: skip
            r2 = "n/a" if rec["r2"] is None else f"{rec['r2']:.2f}"
            sr = "n/a" if rec.get("std_ratio") is None else f"{rec['std_ratio']:.2f}"
            ax.set_title(f"{mode} | {kind} {entry.name}\nR² {r2}, std ratio {sr}", fontsize=7)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(
        f"001 Fig. 6 on our zoo: original (blue) vs reconstructed weights of {model_id} "
        "(a test-split model)",
        fontsize=9,
    )
    fig.tight_layout()
    path = save_figure(fig, figures_dir, name)
    plt.close(fig)
    return path


def mln_summary_figure(result: dict[str, Any]) -> Any:
    """Median per-layer R² and std ratio per kind for each arm (PCA reference dashed), and the
    sampled models' accuracy against chance."""
    import matplotlib.pyplot as plt

    modes = list(result["modes"])
    kinds = [k for k in REPORT_KINDS if any(k in m["r2_median"] for m in result["modes"].values())]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [2, 2, 1.3]})
    width = 0.8 / len(modes)
    ref = result.get("pca_reference")
    for ax, key, title in (
        (axes[0], "r2_median", "median per-layer R² (held-out models)"),
        (axes[1], "std_ratio_median", "median std ratio (1 = original spread)"),
    ):
        for j, mode in enumerate(modes):
            vals = [result["modes"][mode][key].get(k, float("nan")) for k in kinds]
            ax.bar([i + j * width for i in range(len(kinds))], vals, width=width, label=mode,
                   color=ARM_COLORS.get(mode))  # fmt: skip
        if ref:
            for i, k in enumerate(kinds):
                v = ref[key].get(k)
                if v is not None:
                    ax.hlines(v, i - width / 2, i + width * (len(modes) - 0.5), colors="black",
                              linestyles="dashed", linewidth=1,
                              label=f"PCA rank {ref['rank']}" if i == 0 else None)  # fmt: skip
        ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(kinds))])
        ax.set_xticklabels(kinds)
        ax.set_title(title, fontsize=9)
        if key == "r2_median":
            ax.set_ylim(max(-1.0, ax.get_ylim()[0]), 1.0)
        else:
            ax.axhline(1.0, color="gray", linewidth=0.8)
    axes[0].legend(fontsize=7)
    gens = [result["modes"][m]["generation"] for m in modes]
    axes[2].bar(range(len(modes)), [g["mean"] for g in gens], yerr=[g["std"] for g in gens],
                capsize=4, color=[ARM_COLORS.get(m) for m in modes])  # fmt: skip
    axes[2].axhline(result["chance"], color="black", linestyle="dashed", linewidth=1,
                    label=f"chance {result['chance']:.2f}")  # fmt: skip
    axes[2].set_xticks(range(len(modes)))
    axes[2].set_xticklabels(modes, rotation=30, ha="right", fontsize=7)
    axes[2].set_ylabel("zero-shot test accuracy")
    axes[2].set_title(f"sampled models ({gens[0].get('task')})", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig
