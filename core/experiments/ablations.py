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

import numpy as np
from tqdm import tqdm

from core.atlas import Atlas, BackboneFiles, append_jsonl, atomic_write_bytes, read_json, write_json
from core.backbone.config import build_configs, with_defaults
from core.backbone.model import load_config
from core.backbone.train import train
from core.collection.specs import resolve_arch
from core.config import build_config, register_presets, to_dict
from core.embeddings.fidelity import layer_report, wasserstein1
from core.errors import WeightAtlasError
from core.experiments.report import (
    fmt,
    read_metrics,
    save_figure,
    token_stats,
    training_summary,
    write_table,
)
from core.generation.prompts import default_task, metric_of
from core.generation.sample import sample
from core.tokens.store import TokenStore, read_index
from core.tokens.tokenize import tokenize
from core.zoos.tasks import chance_accuracy

ABLATIONS = ("mln", "tokenization", "composition")


MLN_ARMS: dict[str, dict[str, Any]] = {
    "none": {"loss_norm": "none", "token_norm": False},  # plain MSE (SANE without LWLN)
    "token": {"loss_norm": "token", "token_norm": False},  # per token, padding included
    "layer": {"loss_norm": "layer", "token_norm": False},  # LWLN: per layer over the zoo
    "masked": {"loss_norm": "masked", "token_norm": False},  # MLN (001 Eq. 1)
    "token_norm+masked": {"loss_norm": "masked", "token_norm": True},  # our default
}
MODES = tuple(MLN_ARMS)


def arm_name(mode: str) -> str:
    """The backbone (and generated-models) directory name of an MLN arm: ``mln-ARM``, with
    ``+`` spelled ``-`` (``mln-token_norm-masked``)."""
    return "mln-" + mode.replace("+", "-")


FIG6_KINDS = ("conv", "norm", "linear")


REPORT_KINDS = ("conv", "linear", "norm", "bias")


@dataclass
class AblationConfig:
    """Budget and targets shared by the ablations.

    Attributes:
        backbone_preset: BACKBONE preset of every ablation backbone.
        steps: training steps of every ablation backbone (the equal budget).
        latent_dim: latent size per token of every ablation backbone (None: the preset's).
        modes: arms of the MLN ablation (``MLN_ARMS`` names).
        mln_latent_dim: latent size per token of the MLN arms (None: ``latent_dim``).
        mln_skip: give the MLN arms the backbone's linear token -> latent -> token path
            (``skip``) learned from a random init (``skip_init="random"``), so that each arm's
            loss shapes it (with the PCA init every raw-token arm would start from one code).
        mln_zoo: ``FAMILY/TASK`` of a homogeneous zoo (its ``zoo`` label, or every model of
            that family and task) to train the MLN arms on, as 001 Table 1 trains on one
            ResNet-18 zoo; None: the whole atlas.
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
    latent_dim: int | None = None  # latent per token of every ablation backbone (None: preset's)
    modes: tuple[str, ...] = MODES
    mln_latent_dim: int | None = None  # latent per token of the MLN arms (None: latent_dim)
    mln_skip: bool = False  # MLN arms: + a linear path, randomly initialised (skip_init=random)
    mln_zoo: str | None = None  # run the MLN ablation on this homogeneous zoo (FAMILY/TASK)
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
        mln_skip=True,  # as demo (below), at the ci latent
        heldout_models=3,
        sample_n=4,
        sample_keep=2,
        composition_prompts=1,
    ),
    # the small ci backbone keeps seven ablation backbones within minutes on a laptop CPU
    # tokenization / composition: the ci backbone with a 2x bottleneck (latent 32 per token of
    # 64, like 001's 230 -> 128). MLN arms: the cnn/digits10 zoo's conv/linear tokens are white
    # (any linear code of latent L keeps median per-layer R^2 ~= L / 64), so a 2x squeeze caps
    # near 0.5 (trained arms reached 0.46 at best); latent 56 plus a linear path learned from a
    # random init reaches val conv R^2 0.87 in the best arms (token, layer; at step 200 of 600;
    # held-out conv/linear 0.87/0.89 for token), while without the path the blocks alone reach
    # 0.55-0.65 and overfit (80 train models). With the PCA start instead, step 0 stays the kept
    # checkpoint of every raw-token arm (the arms would be identical)
    # ~30-60 s per MLN backbone on one busy core
    "demo": dict(
        backbone_preset="ci",
        steps=600,
        latent_dim=32,
        mln_latent_dim=56,
        mln_skip=True,
        mln_zoo="cnn/digits10",
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

    path = BackboneFiles(Path(backbone_dir)).config_path
    if not path.exists():
        return False
    saved = with_defaults(read_json(path))  # fields added since: their defaults
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
    if cfg.latent_dim is not None:
        full.setdefault("latent_dim", cfg.latent_dim)
    same = same_run(out, cfg.backbone_preset, full)
    if same and BackboneFiles(out).weights_path.exists() and trained_steps(out) >= cfg.steps:
        return out
    train(a.root, cfg.backbone_preset, overrides=full, out=out, resume=same)
    return out


def mln_budget(cfg: AblationConfig) -> dict[str, Any]:
    """The training overrides every MLN arm shares (latent size, linear path)."""
    out: dict[str, Any] = {}
    if cfg.mln_latent_dim is not None:
        out["latent_dim"] = cfg.mln_latent_dim
    if cfg.mln_skip:
        out.update(skip=True, skip_init="random")
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
    """Per layer of each model: kind (from the token index), W1/std, R² and std ratio of the
    reconstruction."""
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
                    "std_ratio": rec.get("std_ratio"),
                }
            )
    return out


def pca_reference(
    atlas: str | Path | Atlas, model_ids: list[str], rank: int
) -> list[dict[str, Any]]:
    """``layer_distances`` of the best rank-``rank`` linear autoencoder of single tokens.

    The principal directions of the atlas' training tokens (uncentred SVD of raw tokens,
    padding zero) project each held-out token onto ``rank`` dimensions and back: what a
    linear bottleneck of the ablation backbones' latent size can keep of each layer without
    context. The MLN arms are read against it.
    """
    a = _atlas(atlas)
    store = TokenStore(a.tokens_dir)
    train = [r["id"] for r in a.accepted("train") if r["id"] in store]
    x = np.concatenate([store.get(m).tokens.numpy() for m in train]).astype(np.float64)
    _, _, vh = np.linalg.svd(x, full_matrices=False)
    basis = vh[:rank]
    out = []
    for mid in model_ids:
        tok = store.get(mid)
        t, mask = tok.tokens.numpy().astype(np.float64), tok.mask.numpy()
        rec = (t @ basis.T) @ basis
        for e in store.layers(mid):
            rows = slice(e.offset, e.offset + e.count)
            o, r = t[rows][mask[rows]], rec[rows][mask[rows]]
            std = float(o.std())
            out.append(
                {
                    "model": mid,
                    "layer": e.name,
                    "kind": e.kind,
                    "n_values": int(o.size),
                    "w1_over_std": wasserstein1(o, r) / std if std > 0 else None,
                    "r2": float(1 - np.mean((o - r) ** 2) / o.var()) if std > 0 else None,
                    "std_ratio": float(r.std()) / std if std > 0 else None,
                }
            )
    return out


def by_kind(
    records: list[dict[str, Any]], key: str = "w1_over_std", stat: str = "mean"
) -> dict[str, float]:
    """``stat`` (mean or median) of ``key`` per layer kind over all records with a defined
    value, and over all of them as ``all``."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        v = r.get(key)
        if v is not None and math.isfinite(v):
            groups[r["kind"]].append(float(v))
            groups["all"].append(float(v))
    agg = statistics.fmean if stat == "mean" else statistics.median
    return {k: agg(v) for k, v in sorted(groups.items())}


def per_model_spread(records: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """Per layer kind: mean and std over models of each model's median ``key`` (the spread an
    arm's figure has from one held-out model to the next)."""
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        v = r.get(key)
        if v is not None and math.isfinite(v):
            per[r["kind"]][r["model"]].append(float(v))
    out = {}
    for kind, models in sorted(per.items()):
        meds = [statistics.median(v) for v in models.values()]
        out[kind] = {
            "mean": statistics.fmean(meds),
            "std": statistics.pstdev(meds) if len(meds) > 1 else 0.0,
            "models": len(meds),
        }
    return out


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
    over = {"n": cfg.sample_n, "keep": cfg.sample_keep, "seed": cfg.seed, "task": task}
    if size:
        over.update(width=size[0], depth=size[1])
    paths = sample(
        a.root, cfg.target_arch, "ci", over, prompts=prompts, backbone_dir=backbone_dir,
        out_dir=out_dir,
    )  # fmt: skip
    accs = [generated_test_accuracy(p)[0] for p in paths]
    return {
        "task": task,
        "prompts": prompts,
        "models": [str(p) for p in paths],
        "accuracies": accs,
        "mean": statistics.fmean(accs),
        "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
    }


def zoo_rows(atlas: Atlas, zoo: str) -> list[dict[str, Any]]:
    """Accepted models of the homogeneous zoo ``FAMILY/TASK``: those labelled ``zoo: zoo``,
    else every model of that family and task."""
    rows = atlas.accepted()
    labelled = [r for r in rows if (r.get("labels") or {}).get("zoo") == zoo]
    if labelled:
        return labelled
    family, _, task = zoo.partition("/")
    same = [
        r
        for r in rows
        if (r.get("labels") or {}).get("family", r.get("family")) == family
        and (r.get("labels") or {}).get("task") == task
    ]
    if not same:
        raise WeightAtlasError(f"{atlas.root}: no accepted model of the zoo {zoo!r}")
    return same


def heldout_prompts(
    atlas: Atlas, cfg: AblationConfig, k: int
) -> tuple[list[str] | None, tuple[int, int] | None]:
    """Up to ``k`` validation/test models of the target family and task to prompt with (the
    best of one size), so that no prompt is a model the backbone trained on; ``(None, None)``
    when there is none (sample then picks its own)."""
    task = cfg.target_task or default_task(cfg.target_arch)
    rows = [r for r in atlas.accepted() if r.get("split") in ("val", "test")]
    try:
        prompts, size = composition_prompts(rows, _target_family(atlas, cfg), task, k)
    except WeightAtlasError:
        return None, None
    return [r["id"] for r in prompts], size


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
        if not base.tokens.exists() or not base.info().get("token_size"):
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
    write_json(a.results_dir / "ablation_mln.json", result)
    atomic_write_bytes(a.results_dir / "ablation_mln.md", mln_markdown(result).encode())
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
        f"`{task}` from the same {len(prompts)} held-out prompt model(s) (validation/test "
        "models, in neither training set); accuracy is the zero-shot test accuracy of the kept "
        "samples; chance: the most frequent test class."
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
    if result.get("chance") is not None:
        ax.axhline(result["chance"], color="black", linestyle="dashed", linewidth=1,
                   label=f"chance {result['chance']:.2f}")  # fmt: skip
        ax.legend(fontsize=7)
    ax.set_ylabel("zero-shot test accuracy")
    task = result["variants"][names[0]]["generation"].get("task")
    ax.set_title(f"Generated {result['config']['target_arch']} for {task}", fontsize=9)
    fig.tight_layout()
    return fig
