"""Ablations of paper 001 at laptop scale: loss normalization, tokenization, collection composition.

Each ablation trains small backbones with one knob changed and everything else (atlas, step
budget, backbone preset, seed) held fixed, then writes a markdown table into
``ATLAS/results/`` and its raw numbers as JSON next to it:

- ``mln`` (001 Table 1, Fig. 6, D.4.1): backbones with ``none``, ``token`` and ``masked`` loss
  normalization on the atlas' own token store (``ATLAS/backbones/mln-MODE``). For held-out
  (test-split) models: Wasserstein-1 between original and reconstructed values of each layer,
  divided by the layer's std, averaged by layer kind; and the zero-shot accuracy of models
  sampled from each backbone. ``mln_figure`` draws the Fig.-6-like histograms.
- ``tokenization`` (001 D.4.2): the accepted models tokenized ``dense`` and ``sparse`` into
  sibling atlases (``ATLAS/ablations/tok-SCHEME``); tokens, padding fraction, bytes on disk and
  the validation R² of a backbone trained on each (``ATLAS/backbones/tok-SCHEME``).
- ``composition`` (000, 001 Table 2): a backbone trained only on the target architecture's
  family versus one trained on the diverse collection subsampled to the same number of
  tokens (same step budget), both generating models of the target architecture for the same
  task; the generation accuracy of each.

    from core.experiments.ablations import run_ablations
    run_ablations("RUN/atlas", preset="ci")          # all three, resumable
    run_ablations("RUN/atlas", preset="ci", only=("mln",), overrides={"steps": 50})

Backbones already trained to the requested step count are reused, so a re-run after a failure
only trains what is missing.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.atlas import Atlas, append_jsonl, read_json, write_json
from core.backbone.config import build_configs
from core.backbone.train import train
from core.config import build_config, register_presets, to_dict
from core.embeddings.fidelity import layer_report
from core.errors import WeightAtlasError
from core.experiments.report import (
    read_metrics,
    save_figure,
    token_stats,
    training_summary,
    write_table,
)
from core.generation.prompts import default_task, metric_of
from core.generation.sample import sample
from core.generation.targets import resolve_arch
from core.tokens.store import TokenStore, read_index
from core.tokens.tokenize import tokenize

ABLATIONS = ("mln", "tokenization", "composition")
MODES = ("none", "token", "masked")
FIG6_KINDS = ("conv", "norm", "linear")


@dataclass
class AblationConfig:
    """Budget and targets shared by the ablations.

    Attributes:
        backbone_preset: BACKBONE preset of every ablation backbone.
        steps: training steps of every ablation backbone (the equal budget).
        modes: loss normalizations compared in the MLN ablation.
        heldout_models: test-split models reconstructed per MLN backbone.
        schemes: token schemes compared in the tokenization ablation.
        token_size: values per token in the tokenization ablation.
        target_arch: architecture generated in the MLN and composition ablations.
        target_task: task the generated models are evaluated on (None: sample's default).
        sample_n: candidates sampled per backbone.
        sample_keep: candidates kept after selection.
        single_family: the family of the single-family backbone (None: the target's family).
        composition_prompts: target-family models held out of both composition backbones'
            training sets and used as their shared sampling prompts.
        seed: seed of training, subsampling and sampling.
    """

    backbone_preset: str = "ci"
    steps: int = 150
    modes: tuple[str, ...] = MODES
    heldout_models: int = 4
    schemes: tuple[str, ...] = ("dense", "sparse")
    token_size: int = 64
    target_arch: str = "zoo:cnn"
    target_task: str | None = None
    sample_n: int = 8
    sample_keep: int = 3
    single_family: str | None = None
    composition_prompts: int = 2
    seed: int = 0


ABLATION_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(
        backbone_preset="ci",
        steps=200,
        heldout_models=3,
        sample_n=4,
        sample_keep=2,
        composition_prompts=1,
    ),
    # the small ci backbone keeps seven ablation backbones within minutes on a laptop CPU
    "demo": dict(
        backbone_preset="ci",
        steps=600,
        heldout_models=8,
        sample_n=12,
        sample_keep=4,
        composition_prompts=3,
    ),
}
register_presets("ablation", AblationConfig, ABLATION_PRESETS)


def _atlas(atlas: str | Path | Atlas) -> Atlas:
    return atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)


def backbone_path(atlas: str | Path | Atlas, name: str) -> Path:
    """Where the ablation backbone NAME lives: ``ATLAS/backbones/NAME``."""
    return _atlas(atlas).root / "backbones" / name


def trained_steps(backbone_dir: str | Path) -> int:
    """The last step logged in a backbone's metrics.jsonl (0 if none)."""
    steps = [r["step"] for r in read_metrics(backbone_dir) if isinstance(r.get("step"), int)]
    return max(steps, default=0)


def same_run(backbone_dir: str | Path, preset: str, overrides: dict[str, Any]) -> bool:
    """Whether ``backbone_dir`` holds a run of exactly this preset and these overrides."""

    path = Path(backbone_dir) / "config.json"
    if not path.exists():
        return False
    saved = read_json(path)
    bcfg, tcfg = build_configs(preset, overrides)

    def arch(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != "token_size"}  # set from the token store

    return (
        saved.get("preset") == preset
        and saved.get("train") == to_dict(tcfg)
        and arch(saved.get("backbone", {})) == arch(to_dict(bcfg))
    )


def train_backbone(
    atlas: str | Path | Atlas,
    name: str,
    cfg: AblationConfig,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Train the ablation backbone ``ATLAS/backbones/NAME`` on ``atlas``' tokens, or reuse it.

    A finished run with the same preset, budget and overrides is reused, an interrupted one
    resumes, and one with another configuration is trained again from scratch.

    Args:
        atlas: the atlas whose token store is trained on (may be a sibling ablation atlas).
        name: backbone name; its directory is under the *main* atlas when ``atlas`` is a
            sibling (see ``sibling_atlas``), else under ``atlas``.
        cfg: the ablation budget (preset, steps, seed).
        overrides: further training config fields (e.g. the loss normalization).
    """

    a = _atlas(atlas)
    parent = a.info().get("derived_from")
    out = backbone_path(parent if parent else a, name)
    full = {"steps": cfg.steps, "seed": cfg.seed, **(overrides or {})}
    same = same_run(out, cfg.backbone_preset, full)
    if same and (out / "model.safetensors").exists() and trained_steps(out) >= cfg.steps:
        return out
    train(a.root, cfg.backbone_preset, overrides=full, out=out, resume=same)
    return out


def sibling_atlas(atlas: str | Path | Atlas, name: str, rows: list[dict[str, Any]]) -> Atlas:
    """An atlas ``ATLAS/ablations/NAME`` whose manifest is ``rows`` (weights stay in place).

    Paths are made absolute so the sibling reads the parent's ``hub/`` without copying it. An
    existing sibling with the same model ids is reused (its tokens and backbones resume).
    """
    a = _atlas(atlas)
    root = a.root / "ablations" / name
    ids = sorted(r["id"] for r in rows)
    sib = Atlas.create(root)
    if sib.manifest_path.exists() and sorted(r["id"] for r in sib.manifest()) == ids:
        return sib
    if sib.tokens_dir.exists() and any(sib.tokens_dir.iterdir()):
        raise WeightAtlasError(
            f"{root} holds tokens of another model selection; remove it to re-run the ablation"
        )
    fixed = []
    for r in rows:
        p = Path(r["path"])
        fixed.append({**r, "path": str(p if p.is_absolute() else (a.root / p).resolve())})

    sib.manifest_path.unlink(missing_ok=True)
    append_jsonl(sib.manifest_path, fixed)
    info = {k: v for k, v in a.info().items() if k not in ("token_scheme", "token_size")}
    sib.update_info(**info, derived_from=str(a.root.resolve()), ablation=name)
    return sib


def heldout_ids(atlas: str | Path | Atlas, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` tokenized test-split models, spread over families (val split as fallback)."""

    a = _atlas(atlas)
    tokenized = set(TokenStore(a.tokens_dir).ids)
    for split in ("test", "val"):
        rows = [r for r in a.accepted(split) if r["id"] in tokenized]
        if rows:
            break
    else:
        raise WeightAtlasError(f"{a.root}: no tokenized test or val models to hold out")
    by_family: dict[str, list[str]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        by_family[r.get("family") or "unknown"].append(r["id"])
    rng = random.Random(seed)
    for ids in by_family.values():
        rng.shuffle(ids)
    out: list[str] = []
    while len(out) < n and any(by_family.values()):
        for fam in sorted(by_family):
            if by_family[fam] and len(out) < n:
                out.append(by_family[fam].pop())
    return out


def layer_distances(
    atlas: str | Path | Atlas, model_ids: list[str], backbone_dir: str | Path
) -> list[dict[str, Any]]:
    """Per layer of each model: kind (from the token index), W1/std, R² of the reconstruction."""

    a = _atlas(atlas)
    store = TokenStore(a.tokens_dir)
    out = []
    for mid in model_ids:
        kinds = {e.name: e.kind for e in store.layers(mid)}
        for rec in layer_report(a.root, mid, backbone_dir, max_values=0):
            out.append(
                {
                    "model": mid,
                    "layer": rec["name"],
                    "kind": kinds.get(rec["name"], rec["kind"]),
                    "n_values": rec["n_values"],
                    "w1_over_std": rec["w1_over_std"],
                    "r2": rec["r2"],
                }
            )
    return out


def by_kind(records: list[dict[str, Any]], key: str = "w1_over_std") -> dict[str, float]:
    """Mean of ``key`` per layer kind over all records (layers with a defined value)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        v = r.get(key)
        if v is not None and math.isfinite(v):
            groups[r["kind"]].append(float(v))
            groups["all"].append(float(v))
    return {k: statistics.fmean(v) for k, v in sorted(groups.items())}


def generated_test_accuracy(model_dir: str | Path) -> tuple[float, str | None]:
    """Test accuracy and task recorded in a generated model's card (``weightatlas:`` block)."""
    from huggingface_hub import metadata_load

    block = (metadata_load(Path(model_dir) / "README.md") or {}).get("weightatlas") or {}
    acc = block.get("test_accuracy")
    if not isinstance(acc, int | float):
        raise WeightAtlasError(f"{model_dir}/README.md records no test_accuracy")
    return float(acc), block.get("task")


def generation_accuracy(
    atlas: str | Path | Atlas,
    backbone_dir: str | Path,
    cfg: AblationConfig,
    name: str,
    prompts: list[str] | None = None,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Zero-shot test accuracy of models sampled from ``backbone_dir`` for ``cfg.target_arch``.

    ``sample`` draws ``cfg.sample_n`` candidates, keeps the best ``cfg.sample_keep`` by
    validation accuracy and records each kept model's test accuracy in its card.

    Args:
        prompts: atlas model ids to prompt with (default: sample's choice of matching models).
        size: ``(width, depth)`` of the target (default: sample's choice).
    """

    a = _atlas(atlas)
    parent = a.info().get("derived_from")
    out_dir = (Path(parent) if parent else a.root) / "generated" / "ablations" / name
    task = cfg.target_task or default_task(cfg.target_arch)
    paths = sample(
        a.root,
        cfg.target_arch,
        n=cfg.sample_n,
        keep=cfg.sample_keep,
        seed=cfg.seed,
        task=task,
        prompts=prompts,
        width=size[0] if size else None,
        depth=size[1] if size else None,
        backbone_dir=backbone_dir,
        out_dir=out_dir,
    )
    accs = [generated_test_accuracy(p)[0] for p in paths]
    return {
        "task": task,
        "prompts": prompts,
        "models": [str(p) for p in paths],
        "accuracies": accs,
        "mean": statistics.fmean(accs),
        "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
    }


# --------------------------------------------------------------------------------- MLN


def run_mln(atlas: str | Path | Atlas, cfg: AblationConfig) -> dict[str, Any]:
    """Train one backbone per loss normalization; reconstruction distances and sampled accuracy.

    Writes ``results/ablation_mln.md`` and ``results/ablation_mln.json``.
    """
    a = _atlas(atlas)
    held = heldout_ids(a, cfg.heldout_models, cfg.seed)
    result: dict[str, Any] = {"heldout": held, "config": to_dict(cfg), "modes": {}}
    for mode in tqdm(cfg.modes, desc="MLN ablation", unit="backbone"):
        bdir = train_backbone(a, f"mln-{mode}", cfg, {"loss_norm": mode})
        layers = layer_distances(a, held, bdir)
        result["modes"][mode] = {
            "backbone": str(bdir),
            "w1_over_std": by_kind(layers, "w1_over_std"),
            "r2": by_kind(layers, "r2"),
            "val_r2": training_summary(bdir)["val_r2"],
            "generation": generation_accuracy(a, bdir, cfg, f"mln-{mode}"),
            "layers": layers,
        }
    write_json(a.results_dir / "ablation_mln.json", result)
    kinds = sorted({k for m in result["modes"].values() for k in m["w1_over_std"]} - {"all"})
    headers = ["normalization", *[f"W1/std {k}" for k in kinds], "W1/std all", "val R²"]
    headers += ["sampled acc (mean)", "sampled acc (std)"]
    rows = []
    for mode, m in result["modes"].items():
        w = m["w1_over_std"]
        g = m["generation"]
        rows.append(
            [mode, *[w.get(k) for k in kinds], w.get("all"), m["val_r2"], g["mean"], g["std"]]
        )
    note = (
        f"{len(held)} held-out models reconstructed by backbones trained {cfg.steps} steps "
        f"(`{cfg.backbone_preset}`) with each loss normalization; W1/std = Wasserstein-1 "
        "between original and reconstructed values of a layer divided by the layer's std, "
        "averaged per layer kind (lower is better). Sampled acc: zero-shot test accuracy of "
        f"`{cfg.target_arch}` models generated by each backbone"
        + (f" for `{g['task']}`." if g.get("task") else ".")
    )
    write_table(a, "ablation_mln", headers, rows, note)
    return result


def _pick_layers(layers: list[Any], kinds: tuple[str, ...]) -> dict[str, Any]:
    """The largest layer of each kind (most values, so the histogram is meaningful)."""
    out = {}
    for kind in kinds:
        cands = [e for e in layers if e.kind == kind]
        if cands:
            out[kind] = max(cands, key=lambda e: (math.prod(e.shape), -e.offset))
    return out


def mln_figure(
    atlas: str | Path | Atlas,
    figures_dir: str | Path,
    model_id: str | None = None,
    modes: tuple[str, ...] = MODES,
    name: str = "ablation_mln_histograms",
) -> Path:
    """Fig. 6 of 001: original vs reconstructed value histograms of a conv, norm and linear layer.

    One row per normalization mode (trained by ``run_mln``), one column per layer kind; each
    panel overlays the original layer's histogram and the reconstruction's.
    """
    import matplotlib.pyplot as plt

    a = _atlas(atlas)
    store = TokenStore(a.tokens_dir)
    if model_id is None:
        cands = heldout_ids(a, 64)
        scored = [(len(_pick_layers(store.layers(m), FIG6_KINDS)), m) for m in cands]
        model_id = max(scored, key=lambda t: (t[0], t[1]))[1]
    picked = _pick_layers(store.layers(model_id), FIG6_KINDS)
    if not picked:
        raise WeightAtlasError(f"{model_id} has no conv, norm or linear layer to plot")
    modes = tuple(m for m in modes if (backbone_path(a, f"mln-{m}") / "model.safetensors").exists())
    if not modes:
        raise WeightAtlasError("no MLN ablation backbones trained yet; run run_mln first")
    colors = {"none": "tab:orange", "token": "tab:green", "masked": "tab:red"}
    fig, axes = plt.subplots(
        len(modes), len(picked), figsize=(3.6 * len(picked), 2.4 * len(modes)), squeeze=False
    )
    for i, mode in enumerate(modes):
        recs = {
            r["name"]: r for r in layer_report(a.root, model_id, backbone_path(a, f"mln-{mode}"))
        }
        for j, (kind, entry) in enumerate(picked.items()):
            ax = axes[i][j]
            rec = recs[entry.name]
            lo = min(min(rec["original"]), min(rec["reconstructed"]))
            hi = max(max(rec["original"]), max(rec["reconstructed"]))
            bins = 40 if hi > lo else 1
            ax.hist(rec["original"], bins=bins, range=(lo, hi), density=True, alpha=0.45,
                    color="tab:blue", label="original")  # fmt: skip
            ax.hist(rec["reconstructed"], bins=bins, range=(lo, hi), density=True, alpha=0.45,
                    color=colors.get(mode, "tab:gray"), label=f"{mode}")  # fmt: skip
            w1 = rec["w1_over_std"]
            ax.set_title(
                f"{kind}: {entry.name}\n{mode}, W1/std={w1:.2f}" if w1 is not None else kind,
                fontsize=8,
            )
            ax.tick_params(labelsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"Original vs reconstructed weights of {model_id}", fontsize=9)
    fig.tight_layout()
    path = save_figure(fig, figures_dir, name)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ tokenization


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


# ------------------------------------------------------------------------- composition


def _target_family(atlas: Atlas, cfg: AblationConfig) -> str:
    """The family the single-family backbone trains on."""
    if cfg.single_family:
        return cfg.single_family

    target = resolve_arch(cfg.target_arch)
    fam = getattr(target, "family", None)
    if fam:
        return str(fam)
    spec = cfg.target_arch.split(":", 1)[-1]
    families = {r.get("family") for r in atlas.accepted()}
    if spec in families:
        return spec
    raise WeightAtlasError(
        f"cannot tell the family of {cfg.target_arch!r}; set single_family (one of "
        f"{', '.join(sorted(f for f in families if f))})"
    )


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


def composition_prompts(
    rows: list[dict[str, Any]], family: str, task: str, k: int
) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
    """The ``k`` best target-family models on ``task`` sharing one size, and that size.

    Best by validation accuracy (the sampler's own prompt ranking); the size is the one of
    the best model, so all prompts share the target's layer table.
    """

    cands = [
        r for r in rows if r.get("family") == family and (r.get("labels") or {}).get("task") == task
    ]
    if not cands:
        raise WeightAtlasError(f"no {family} models on {task} to prompt the composition ablation")
    cands.sort(key=lambda r: (-metric_of(r), r["id"]))

    def size_of(r: dict[str, Any]) -> tuple[Any, Any]:
        labels = r.get("labels") or {}
        return labels.get("width"), labels.get("depth")

    size = size_of(cands[0])
    same = [r for r in cands if size_of(r) == size][:k]
    ok = all(isinstance(v, int) for v in size)
    return same, (int(size[0]), int(size[1])) if ok else None


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
    write_json(a.results_dir / "ablation_composition.json", result)
    headers = ["collection", "models", "families", f"{family} models", "tokens", "train R²"]
    headers += ["generated acc (mean)", "generated acc (std)"]
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
        ]
        for name, v in result["variants"].items()
    ]
    note = (
        f"Both backbones: `{cfg.backbone_preset}`, {cfg.steps} steps, at most {budget} training "
        f"tokens (all {family} models but the prompts; the diverse collection is subsampled "
        f"round-robin over families to that budget). Both generate `{cfg.target_arch}` for "
        f"`{task}` from the same {len(prompts)} held-out prompt model(s); accuracy is the "
        "zero-shot test accuracy of the kept samples."
    )
    write_table(a, "ablation_composition", headers, table, note)
    return result


# ------------------------------------------------------------------------------ driver


def ablation_config(preset: str | None = "ci", overrides: dict[str, Any] | None = None):
    """The AblationConfig of a preset with overrides (unknown keys raise)."""
    return build_config(AblationConfig, ABLATION_PRESETS, preset, overrides=overrides)


def run_ablations(
    atlas: str | Path,
    preset: str | None = "ci",
    only: tuple[str, ...] | list[str] = ABLATIONS,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the chosen ablations on an atlas (tokenized, main backbone not required).

    Args:
        atlas: the atlas directory.
        preset: an ABLATION_PRESETS name.
        only: which of ``ABLATIONS`` to run, in that order.
        overrides: AblationConfig fields.

    Returns:
        ``{name: result}`` as written to ``results/ablation_NAME.json``.
    """
    unknown = set(only) - set(ABLATIONS)
    if unknown:
        raise WeightAtlasError(f"unknown ablation(s) {sorted(unknown)}; choose from {ABLATIONS}")
    cfg = ablation_config(preset, overrides)
    runners = {"mln": run_mln, "tokenization": run_tokenization, "composition": run_composition}
    return {name: runners[name](atlas, cfg) for name in ABLATIONS if name in only}


# ------------------------------------------------------------------------------ figures


def mln_summary_figure(result: dict[str, Any]) -> Any:
    """W1/std per layer kind (left) and sampled accuracy (right) for each loss normalization."""
    import matplotlib.pyplot as plt

    modes = list(result["modes"])
    kinds = sorted({k for m in result["modes"].values() for k in m["w1_over_std"]})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        w = result["modes"][mode]["w1_over_std"]
        ax1.bar([i + j * width for i in range(len(kinds))], [w.get(k, 0.0) for k in kinds],
                width=width, label=mode)  # fmt: skip
    ax1.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(kinds))])
    ax1.set_xticklabels(kinds)
    ax1.set_ylabel("W1 / layer std (lower is better)")
    ax1.set_title("Reconstruction of held-out models by layer kind")
    ax1.legend(fontsize=8)
    gens = [result["modes"][m]["generation"] for m in modes]
    ax2.bar(modes, [g["mean"] for g in gens], yerr=[g["std"] for g in gens], capsize=4,
            color=["tab:orange", "tab:green", "tab:red"][: len(modes)])  # fmt: skip
    ax2.set_ylabel("zero-shot test accuracy")
    ax2.set_title(f"Sampled models ({gens[0].get('task')})")
    fig.tight_layout()
    return fig


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
    ax.set_ylabel("zero-shot test accuracy")
    task = result["variants"][names[0]]["generation"].get("task")
    ax.set_title(f"Generated {result['config']['target_arch']} for {task}", fontsize=9)
    fig.tight_layout()
    return fig
