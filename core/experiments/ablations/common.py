"""What the ablations share: the config and its presets, the loss-normalization arms, training
and reusing ablation backbones, sibling atlases, held-out models, per-layer distances and the
accuracy of generated models."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atlas import Atlas, BackboneFiles, GeneratedCard, TokenTable, append_jsonl, read_json
from core.backbone.config import build_configs, with_defaults
from core.backbone.train import train
from core.collection.specs import resolve_arch
from core.config import register_presets, to_dict
from core.embeddings.fidelity import layer_report, wasserstein1
from core.errors import WeightAtlasError
from core.experiments.report import (
    read_metrics,
)
from core.generation.prompts import default_task, metric_of
from core.generation.sample import sample
from core.tokens.store import TokenStore

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
    token_size: int = TokenTable.DEFAULT_TOKEN_SIZE
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
    accs = [GeneratedCard(p).test_accuracy()[0] for p in paths]
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
