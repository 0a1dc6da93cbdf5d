"""The ``composition`` ablation (000, 001 Table 2): a backbone trained on the target family only
versus one on the diverse collection subsampled to the same tokens; generation accuracy of each."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.atlas import Atlas, write_json
from core.config import to_dict
from core.errors import WeightAtlasError
from core.experiments.ablations.common import (
    AblationConfig,
    _atlas,
    _target_family,
    composition_prompts,
    generation_accuracy,
    sibling_atlas,
    train_backbone,
)
from core.experiments.report import (
    training_summary,
    write_table,
)
from core.generation.prompts import default_task
from core.tokens.store import read_index
from core.tokens.tokenize import tokenize
from core.zoos.tasks import chance_accuracy


def budget_subsample(
    rows: list[dict[str, Any]], n_tokens: dict[str, int], budget: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Rows from every family, round-robin in seeded order, up to ``budget`` tokens in total.

    Each family's models are shuffled with ``seed``; the round-robin takes one model per
    family per round while it fits, so every family that fits is represented.
    """
    rng = random.Random(seed)
    fams: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        fams[r.get("family") or "unknown"].append(r)
    for lst in fams.values():
        rng.shuffle(lst)
    out: list[dict[str, Any]] = []
    used = 0
    progress = True
    while progress:
        progress = False
        for fam in sorted(fams):
            if fams[fam] and used + n_tokens[fams[fam][-1]["id"]] <= budget:
                r = fams[fam].pop()
                used += n_tokens[r["id"]]
                out.append(r)
                progress = True
    return out


def run_composition(atlas: str | Path | Atlas, cfg: AblationConfig) -> dict[str, Any]:
    """Single-family vs diverse collection at the same token budget, generating the same target.

    ``composition_prompts`` target-family models are held out of both training sets and
    serve as both backbones' sampling prompts. The single-family backbone trains on every
    other model of the target family; the diverse one on the whole collection minus the
    prompts, subsampled round-robin over families to at most the same number of tokens. Both
    train the same steps on every selected model (train and val splits alike: the comparison
    is on generation). Writes ``results/ablation_composition.md`` and ``.json``.
    """
    a = _atlas(atlas)
    index = read_index(a.tokens_dir)
    if not index["models"]:
        raise WeightAtlasError(f"{a.root}: tokenize the atlas before the composition ablation")
    n_tokens = {mid: int(m["n_tokens"]) for mid, m in index["models"].items()}
    rows = [r for r in a.accepted() if r["id"] in n_tokens]
    family = _target_family(a, cfg)
    task = cfg.target_task or default_task(cfg.target_arch)
    prompts, size, single, diverse = _composition_arms(rows, n_tokens, family, task, cfg)
    budget = sum(n_tokens[r["id"]] for r in single)
    prompt_ids = {r["id"] for r in prompts}
    variants = {"single-family": single, "diverse": diverse}
    result: dict[str, Any] = {
        "config": to_dict(cfg),
        "family": family,
        "task": task,
        "prompts": sorted(prompt_ids),
        "budget_tokens": budget,
        "variants": {},
    }
    for name, sel in tqdm(variants.items(), desc="composition ablation", unit="backbone"):
        manifest = [{**r, "split": "train"} for r in sel]
        manifest += [{**r, "split": "test"} for r in prompts]
        sib = sibling_atlas(a, f"comp-{name}", manifest)
        tokenize(sib.root, scheme=index["scheme"], token_size=index["token_size"], progress=False)
        bdir = train_backbone(sib, f"comp-{name}", cfg)
        gen = generation_accuracy(sib, bdir, cfg, f"comp-{name}", sorted(prompt_ids), size)
        fams = {r.get("family") for r in sel}
        result["variants"][name] = {
            "atlas": str(sib.root),
            "backbone": str(bdir),
            "models": len(sel),
            "families": len(fams),
            "target_family_models": sum(1 for r in sel if r.get("family") == family),
            "tokens": sum(n_tokens[r["id"]] for r in sel),
            "train_r2": training_summary(bdir)["train_r2"],
            "generation": gen,
        }
    result["chance"] = chance_accuracy(task)
    write_json(a.results_dir / "ablation_composition.json", result)
    _composition_table(a, result, cfg, len(prompts))
    return result


def _composition_arms(
    rows: list[Any], n_tokens: dict[str, int], family: str, task: str, cfg: AblationConfig
) -> tuple[list[Any], Any, list[Any], list[Any]]:
    """The prompts (target-family validation/test models when there are any) and both arms'
    training sets: every other target-family model, and the whole pool subsampled round-robin
    over families to the same token budget.

    Returns:
        ``(prompts, their size, single-family rows, diverse rows)``.
    """
    heldout_rows = [r for r in rows if r.get("split") in ("val", "test")]
    try:  # prompts the backbones never train on, from validation/test models when there are any
        prompts, size = composition_prompts(heldout_rows, family, task, cfg.composition_prompts)
    except WeightAtlasError:
        prompts, size = composition_prompts(rows, family, task, cfg.composition_prompts)
    prompt_ids = {r["id"] for r in prompts}
    pool = [r for r in rows if r["id"] not in prompt_ids and r.get("split") != "test"]
    single = [r for r in pool if r.get("family") == family]
    if not single:
        raise WeightAtlasError(
            f"no {family} models left to train on besides the {len(prompts)} prompt(s); "
            "lower composition_prompts or collect more"
        )
    budget = sum(n_tokens[r["id"]] for r in single)
    diverse = budget_subsample(pool, n_tokens, budget, cfg.seed)
    return prompts, size, single, diverse


def _composition_table(
    a: Atlas, result: dict[str, Any], cfg: AblationConfig, n_prompts: int
) -> None:
    """Write ``results/ablation_composition.md`` from the ablation's result."""
    family, task, budget = result["family"], result["task"], result["budget_tokens"]
    headers = ["collection", "models", "families", f"{family} models", "tokens", "train R²"]
    headers += ["generated acc (mean)", "generated acc (std)", "chance"]
    table = [
        [
            name,
            v["models"],
            v["families"],
            v["target_family_models"],
            v["tokens"],
            v["train_r2"],
            v["generation"]["mean"],
            v["generation"]["std"],
            result["chance"],
        ]
        for name, v in result["variants"].items()
    ]
    note = (
        f"Both backbones: `{cfg.backbone_preset}`, {cfg.steps} steps, at most {budget} training "
        f"tokens (all {family} models but the prompts; the diverse collection is subsampled "
        f"round-robin over families to that budget). Both generate `{cfg.target_arch}` for "
        f"`{task}` from the same {n_prompts} held-out prompt model(s) (validation/test "
        "models, in neither training set); accuracy is the zero-shot test accuracy of the kept "
        "samples; chance: the most frequent test class."
    )
    write_table(a, "ablation_composition", headers, table, note)


def composition_figure(result: dict[str, Any]) -> Any:
    """Generated accuracy of each kept sample, single-family vs diverse collection."""
    import matplotlib.pyplot as plt

    names = list(result["variants"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, name in enumerate(names):
        g = result["variants"][name]["generation"]
        ax.bar(i, g["mean"], yerr=g["std"], capsize=4, alpha=0.6)
        ax.scatter([i] * len(g["accuracies"]), g["accuracies"], color="black", s=12, zorder=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    if result.get("chance") is not None:
        ax.axhline(result["chance"], color="black", linestyle="dashed", linewidth=1,
                   label=f"chance {result['chance']:.2f}")  # fmt: skip
        ax.legend(fontsize=7)
    ax.set_ylabel("zero-shot test accuracy")
    task = result["variants"][names[0]]["generation"].get("task")
    ax.set_title(f"Generated {result['config']['target_arch']} for {task}", fontsize=9)
    fig.tight_layout()
    return fig
