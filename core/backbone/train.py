"""Train the backbone on the atlas' token store: one process, or DDP under torchrun.

    weightatlas train ATLAS --preset ci                          # writes ATLAS/backbone/
    weightatlas train ATLAS --preset demo --set train.steps=3000 --set train.lr=5e-4
    weightatlas train ATLAS --preset ci --set backbone.latent_dim=8 --config run.yaml
    weightatlas train ATLAS --preset ci --out ATLAS/backbones/no-mln --set train.loss_norm=none
    torchrun --nproc_per_node 2 -m core.cli train ATLAS --preset ci  # DDP (gloo on CPU, NCCL on GPU)
    weightatlas bench train --preset demo                        # tokens/s and MFU (JSON)

The run is configured by one tree, ``TrainRunConfig`` (``core.backbone.config``): ``backbone``
(core.backbone.model.BackboneConfig) and ``train`` (TrainConfig), one preset name for both,
dotted overrides (``backbone.latent_dim``, ``train.lr``; a flat key naming a field of exactly
one part is an alias), checked and completed by ``validate_train_config``. Each optimizer step
draws ``grad_accum`` micro-batches of ``batch_size`` windows (one window per row, from
``core.tokens.store.WindowDataset``) from a stream that visits every train model once per epoch in a
seeded order. Row ``i`` of the stream and its augmentations depend only on ``(seed, i)``, so
DDP ranks (each taking every ``world``-th row) see the same global batch as one process, and a
resumed run sees the same data as an uninterrupted one.

Outputs in OUT (default ATLAS/backbone): ``config.json``, ``model.safetensors`` (last good
weights), ``metrics.jsonl`` (train rows every ``log_every`` steps; validation R^2 overall and per
layer kind every ``eval_every``), ``train_state/`` (model, AdamW moments, scheduler, step and RNG
states in safetensors + JSON, no pickle) from which a killed run resumes exactly.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.atlas import (
    Atlas,
    BackboneFiles,
    append_jsonl,
    atomic_write_bytes,
    dumps,
    read_json,
    read_jsonl,
)
from core.backbone.checkpoints import load_checkpoint, save_checkpoint
from core.backbone.config import (
    LAYERS_FILE,
    STATE_DIR,
    TrainConfig,
    TrainRunConfig,
    build_train_config,
    token_size_given,
    validate_train_config,
    with_defaults,
)
from core.backbone.data import Stream, pin_memory_of, size_band_sample
from core.backbone.device import Dist, autocast, compute_dtype, setup_dist
from core.backbone.losses import LayerStats, augment, nt_xent, reconstruction_terms
from core.backbone.model import (
    Backbone,
    BackboneConfig,
    save_backbone,
)
from core.backbone.selection import knn_labels, selection_metric
from core.backbone.validation import Evaluator
from core.backbone.views import CanonicalStore, ViewMaker, store_groups
from core.config import ConfigError, merge, to_dict
from core.errors import WeightAtlasError
from core.models.optim import adamw
from core.safety import printable
from core.tokens.store import TokenStore, WindowDataset

# --------------------------------------------------------------------------- training


def _run_config(
    cfg: TrainRunConfig, preset: str, store: Any, n_train: int, n_val: int
) -> dict[str, Any]:
    """The run's ``config.json``: the resolved config tree (its ``backbone.token_size`` is the
    token table's, the one source of scheme and size) and the data it was trained on."""
    return {
        "preset": preset,
        **to_dict(cfg),
        "n_train_models": n_train,
        "n_val_models": n_val,
    }


def _total_steps(tcfg: TrainConfig, n_items: int) -> int:
    """Optimizer steps to train: ``steps``, else ``epochs`` over ``n_items`` (at least 3)."""
    steps = tcfg.steps
    if steps <= 0:
        per_step = tcfg.batch_size * tcfg.grad_accum
        steps = max(1, -(-tcfg.epochs * n_items // per_step))
    if steps < 3:
        raise ConfigError(f"train for at least 3 steps (OneCycleLR), got {steps}")
    return steps


def _kinds(store: Any, ids: list[str]) -> list[str]:
    return sorted({e.kind for m in ids for e in store.layers(m)})


def train(
    atlas: str | Path,
    preset: str = "ci",
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train (or resume training) the backbone on an atlas' token store.

    Args:
        atlas: the atlas root (collected and tokenized).
        preset: ``ci``, ``demo``, ``paper-small`` or ``paper-large`` (both configs).
        overrides: TrainRunConfig keys, e.g. ``{"train.steps": 500, "backbone.latent_dim": 8}``
            (flat ``steps`` is an alias of ``train.steps``).
        out: output dir (default ``ATLAS/backbone``; ablations: ``ATLAS/backbones/NAME``).
        resume: continue from ``out/train_state`` if present; False starts over.

    Returns:
        Summary: steps, final train loss, last validation metrics, seconds, output dir.
    """

    atlas = Atlas.open(atlas)
    overrides = dict(overrides or {})
    cfg = build_train_config(preset, overrides)
    store = TokenStore(atlas.tokens_dir)
    if not store.ids:
        raise WeightAtlasError(f"{atlas.tokens_dir} holds no tokenized model")
    # duplicates (``duplicate_of``, found by the tokenize stage) are left out of training
    train_ids = [
        r["id"] for r in atlas.accepted("train") if r["id"] in store and not r.get("duplicate_of")
    ]
    val_ids = [
        r["id"] for r in atlas.accepted("val") if r["id"] in store and not r.get("duplicate_of")
    ]
    if not train_ids:
        raise WeightAtlasError(f"{atlas.root}: no tokenized model in the train split")
    out = Path(out) if out is not None else atlas.backbone_dir
    d = setup_dist(cfg.train.device)
    cfg = validate_train_config(
        cfg, store.token_size, token_size_given=token_size_given(overrides), world=d.world
    )
    bcfg, tcfg = cfg.backbone, cfg.train
    untrained = families_left_out(atlas, store, set(train_ids))
    if d.main:  # within seconds of the start, before the run's preparation (PCA, step-0 scores)
        tqdm.write(
            f"train: {len(train_ids)} training and {len(val_ids)} validation models; preparing",
            file=sys.stderr,
        )
        for fam, n in untrained.items():
            tqdm.write(printable(split_warning(fam, n)), file=sys.stderr)
    # unit groups, read once: the canonical form (train and val) and the permutation views
    groups = (
        store_groups(atlas, store, train_ids + val_ids) if tcfg.canonical or tcfg.permute else {}
    )
    if tcfg.canonical:
        store = CanonicalStore(store, groups)
    dataset = WindowDataset(store, train_ids, bcfg.window, tcfg.seed, tcfg.windows_per_model)
    if tcfg.scale_tokens and not bcfg.token_norm:  # derived from the data, recorded in config
        cfg = merge(cfg, {"backbone.token_scale": token_rms(_sample_tokens(dataset, tcfg.seed))})
        bcfg = cfg.backbone
    config = _run_config(cfg, preset, store, len(train_ids), len(val_ids))
    kinds = _kinds(store, train_ids + val_ids)
    val = Evaluator(store, val_ids, bcfg.window, kinds) if val_ids else None
    train_eval = None
    if tcfg.train_eval_models > 0:
        scored = size_band_sample(  # every size band is scored, not only the first ids
            train_ids, [store.n_tokens(i) for i in train_ids], tcfg.train_eval_models
        )
        train_eval = Evaluator(store, scored, bcfg.window, kinds)
    if tcfg.loss_norm == "layer":  # LWLN: per-layer statistics over the training models (H15)
        dataset.layer_stats = LayerStats.from_store(store, train_ids, tcfg.mln_eps)
        for ev in (val, train_eval):
            if ev is not None:
                ev.layer_stats = dataset.layer_stats
    if tcfg.permute or tcfg.positive != "same":  # the second view: core.backbone.views
        dataset.views = ViewMaker(
            store,
            groups if tcfg.permute else {},
            bcfg.window,
            tcfg.seed,
            tcfg.positive,
            tcfg.permute,
        )
    if tcfg.select == "rec+knn" and val is not None:  # the embedding's use, on val models only
        val.knn_labels = knn_labels(atlas, val_ids)
    summary = fit(bcfg, tcfg, config, dataset, val, train_eval, out, resume, d)
    summary["families_not_trained"] = untrained
    return summary


def families_left_out(atlas: Atlas, store: TokenStore, train_ids: set[str]) -> dict[str, int]:
    """Families with tokenized accepted models of which none is in the train split.

    Returns:
        family -> how many of its models the split put in val/test (the backbone never sees
        that family's weights while training: a 70/15/15 split of a few models can do that).
    """
    trained: set[str] = set()
    other: dict[str, int] = {}
    for r in atlas.accepted():
        if r["id"] not in store or r.get("duplicate_of"):
            continue
        fam = str(r.get("family") or "unknown")
        if r["id"] in train_ids:
            trained.add(fam)
        else:
            other[fam] = other.get(fam, 0) + 1
    return {f: n for f, n in sorted(other.items()) if f not in trained}


def split_warning(family: str, n: int) -> str:
    """The one-line warning for a family that the split left out of training."""
    return (
        f"warning: family {family!r} is not in the train split ({n} model(s) in val/test only); "
        "the backbone does not train on it: collect more of it or change split_fractions"
    )


def fit(
    bcfg: BackboneConfig,
    tcfg: TrainConfig,
    config: dict[str, Any],
    dataset: Any,
    val: Evaluator | None,
    train_eval: Evaluator | None,
    out: Path,
    resume: bool,
    d: Dist,
) -> dict[str, Any]:
    """The training loop behind ``train`` (datasets and evaluators already built).

    After each validation, ``model.safetensors`` (and ``val_layers.jsonl``) are replaced when
    the median per-layer R^2 of conv and linear layers (``SELECT_METRIC``) beats the best so
    far; with ``patience`` > 0, training stops after that many validations without a new best.
    A ``skip`` backbone starts as the tokens' linear code (``init_skip_pca``): a fresh run
    validates it at step 0, and it stays the kept checkpoint unless training beats it.
    """
    _seed_everything(tcfg.seed)
    model = Backbone(bcfg).to(d.device)
    steps = _total_steps(tcfg, len(dataset))
    # the bar is up before the preparation (optimizer, PCA, step-0 scores), saying what runs
    bar = tqdm(total=steps, disable=not d.main, desc="train", unit="step")
    bar.set_postfix_str("setting up the optimizer")
    opt, sched = _optimizer_and_schedule(model, tcfg, steps)
    metrics_path = BackboneFiles(out).metrics_path
    pca = _init_skip_pca(model, bcfg, dataset, tcfg.seed, bar)
    step, best = _restore(out, config, resume, model, opt, sched, d)
    bar.n = step
    metric = selection_metric(tcfg)
    if step == 0 and pca and val is not None:  # the linear code the run starts from
        bar.set_postfix_str("scoring the starting point (step 0)")
        best = _score_start(model, val, train_eval, d, tcfg, metrics_path, out, config, best)
    cdtype = compute_dtype(tcfg.dtype, d.device)
    stopped_early = False
    ddp = _distributed(model, d)
    stream = Stream(dataset, tcfg.seed, tcfg.sample_alpha)
    B, A = tcfg.batch_size, tcfg.grad_accum
    clock = _Clock(tokens_per_step=2 * B * A * bcfg.window)
    last_val: dict[str, Any] = {}
    bar.set_postfix_str("")
    bar.refresh()
    logged: dict[str, float] = {}
    while step < steps:
        model.train()
        acc = _accumulate_step(ddp, stream, hasattr(dataset, "views"), tcfg, d, cdtype, step)
        if not torch.isfinite(acc).all():
            _stop_nonfinite(out, step, acc, d)
        grad_norm = _optimizer_step(model, opt, sched, tcfg)
        step += 1
        clock.tick()
        bar.update(1)
        logged = {"loss": float(acc[2]), "rec": float(acc[0]), "con": float(acc[1])}
        if d.main and (step % tcfg.log_every == 0 or step == steps):
            row = {"step": step, "epoch": step * A * B / len(dataset), **logged}
            _log_step(metrics_path, row, sched.get_last_lr()[0], float(grad_norm), clock)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if step % tcfg.eval_every == 0 or step == steps:
            evals = (val, train_eval, stream)
            last_val, best, stopped_early = _validate(
                model, evals, d, tcfg, step, out, config, best
            )
            if d.main and last_val.get(metric) is not None:
                scores = {"sel": f"{last_val[metric]:.3f}", "best": f"{best['value']:.3f}"}
                bar.set_postfix(loss=f"{logged['loss']:.4f}", **scores)
        if step % tcfg.ckpt_every == 0 or step == steps or stopped_early:
            if d.main:
                save_checkpoint(out, model, opt, sched, step, config, d.device, best)
            d.barrier()
        if stopped_early:
            break
    bar.close()
    summary = {"out": str(out), "steps": step, **logged, **last_val, "seconds": clock.seconds()}
    summary.update(tokens_seen=clock.seen_tokens, dtype=str(cdtype).removeprefix("torch."))
    summary.update(best=best, stopped_early=stopped_early)
    if d.main and not last_val:
        summary.update(_last_scores(metrics_path))
    return summary


@dataclasses.dataclass
class _Clock:
    """Wall time and tokens seen since training started, and steps since the last logged row."""

    tokens_per_step: int
    t0: float = dataclasses.field(default_factory=time.time)
    window_t0: float = dataclasses.field(default_factory=time.time)
    window_steps: int = 0
    seen_tokens: int = 0

    def tick(self) -> None:
        """Count one optimizer step."""
        self.seen_tokens += self.tokens_per_step
        self.window_steps += 1

    def seconds(self) -> float:
        """Seconds since training started."""
        return time.time() - self.t0

    def window_rate(self) -> float:
        """Tokens per second since the last call (or the start); starts a new window."""
        rate = self.tokens_per_step * self.window_steps / max(time.time() - self.window_t0, 1e-9)
        self.window_t0, self.window_steps = time.time(), 0
        return rate


def _optimizer_and_schedule(
    model: torch.nn.Module, tcfg: TrainConfig, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW and its one-cycle schedule over ``steps`` (at least 2 warm-up steps)."""
    opt = make_optimizer(model, tcfg)
    warmup = max(tcfg.pct_start, 2 / steps)  # >= 2 warm-up steps: OneCycleLR divides by it
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=tcfg.lr, total_steps=steps, pct_start=warmup
    )
    return opt, sched


def _score_start(
    model: Backbone,
    val: Evaluator,
    train_eval: Evaluator | None,
    d: Dist,
    tcfg: TrainConfig,
    metrics_path: Path,
    out: Path,
    config: dict[str, Any],
    best: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Validate the starting point (step 0); when scored, it is the best that training must beat."""
    metric = selection_metric(tcfg)
    start, layers = _evaluate(model, val, train_eval, d, tcfg, 0, metrics_path)
    if start.get(metric) is None:
        return best
    best = {"metric": metric, "value": start[metric], "step": 0}
    best["bad_evals"] = 0
    if d.main:
        _save_best(out, model, config, best, layers)
    return best


def _distributed(model: Backbone, d: Dist) -> Any:
    """``model`` wrapped in DistributedDataParallel when more than one rank trains."""
    if d.world <= 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[d.device.index] if d.device.type == "cuda" else None
    )


def _accumulate_step(
    ddp: Any,
    stream: Stream,
    two_views: bool,
    tcfg: TrainConfig,
    d: Dist,
    cdtype: torch.dtype,
    step: int,
) -> torch.Tensor:
    """Forward and backward over the step's ``grad_accum`` micro-batches.

    Returns:
        float64 (rec, con, loss) of the step, averaged over micro-batches (global over ranks).
    """
    B, A = tcfg.batch_size, tcfg.grad_accum
    acc = torch.zeros(3, dtype=torch.float64)  # rec, con, loss (global, summed over micro)
    for micro in range(A):
        b = step * A + micro  # global micro-batch index
        rows = list(range(b * B, (b + 1) * B))
        mine = rows[d.rank :: d.world]
        batch = stream.rows(mine)
        second = stream.second_rows(mine) if two_views else batch
        pair = {k: torch.cat([batch[k], second[k]]) for k in batch}  # view 1, then view 2
        x, mask = (
            pin_memory_of(pair["tokens"], d.device),
            pin_memory_of(pair["mask"], d.device),
        )
        pos = pin_memory_of(pair["positions"], d.device)
        views = _views(x, mask, tcfg, b, rows, d)
        ls = None  # LWLN: each view's tokens' layer statistics
        if "layer_std" in pair:
            ls = tuple(pin_memory_of(pair[k], d.device) for k in ("layer_mean", "layer_std"))
        s, n, p1, p2 = forward_terms(ddp, views, pos, x, mask, tcfg, d.device, cdtype, ls)
        n_global = d.all_sum(n).clamp_min(1.0)
        if d.world > 1:
            p1, p2 = _gather(p1), _gather(p2)
        con = nt_xent(p1, p2, tcfg.temperature) if tcfg.gamma > 0 else s.new_zeros(())
        rec = s * d.world / n_global  # DDP averages gradients: sum over ranks / N
        loss = (1 - tcfg.gamma) * rec + tcfg.gamma * con
        if micro == A - 1 or d.world == 1:
            (loss / A).backward()
        else:
            with ddp.no_sync():
                (loss / A).backward()
        rec_g = d.all_sum(s.detach()) / n_global
        zero = torch.zeros((), dtype=torch.float64)
        acc += torch.stack([rec_g.double().cpu(), con.detach().double().cpu(), zero])
    acc /= A
    acc[2] = (1 - tcfg.gamma) * acc[0] + tcfg.gamma * acc[1]
    return acc


def _optimizer_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    tcfg: TrainConfig,
) -> torch.Tensor:
    """Clip the gradients (``grad_clip`` > 0), step the optimizer and the schedule.

    Returns:
        the gradient norm before clipping (0 without clipping).
    """
    grad_norm = (
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        if tcfg.grad_clip > 0
        else torch.zeros(())
    )
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
    return grad_norm


def _init_skip_pca(
    model: Backbone, bcfg: BackboneConfig, dataset: Any, seed: int, bar: tqdm
) -> bool:
    """Start the linear path as the training tokens' PCA (``skip_init`` "pca"; resume
    overwrites it).

    Returns:
        True when it did (the run then scores its starting point).
    """
    if not (bcfg.skip and bcfg.skip_init == "pca"):
        return False
    bar.set_postfix_str("PCA of the training tokens")
    model.init_skip_pca(_sample_tokens(dataset, seed))
    return True


def _log_step(
    metrics_path: Path, row: dict[str, Any], lr: float, grad_norm: float, clock: _Clock
) -> None:
    """Append the step's row (step, epoch, losses) with lr, gradient norm and throughput."""
    row = {**row, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": clock.window_rate()}
    append_jsonl(metrics_path, [{**row, "seconds": clock.seconds()}])


def _seed_everything(seed: int) -> None:
    """Seed torch, ``random`` and numpy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _validate(
    model: Backbone,
    evals: tuple[Evaluator | None, Evaluator | None, Stream],
    d: Dist,
    tcfg: TrainConfig,
    step: int,
    out: Path,
    config: dict[str, Any],
    best: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """Score the model at ``step`` (val, train-eval, token coverage) and keep it when it is best.

    Args:
        evals: the val and train-eval evaluators (None: not scored) and the training stream.

    Returns:
        (the scores, the best so far, whether patience ran out).
    """
    val, train_eval, stream = evals
    metrics_path = BackboneFiles(out).metrics_path
    scores, layers = _evaluate(model, val, train_eval, d, tcfg, step, metrics_path)
    n_windows = step * tcfg.grad_accum * tcfg.batch_size
    scores = {**scores, **_coverage(stream, out, metrics_path, n_windows, step, d)}
    metric = selection_metric(tcfg)
    if scores.get(metric) is None:
        return scores, best, False
    best, improved, stop = _select(best, metric, scores[metric], step, tcfg.patience)
    if d.main and improved:
        _save_best(out, model, config, best, layers)
    return scores, best, stop


def _coverage(
    stream: Stream, out: Path, metrics_path: Path, n_windows: int, step: int, d: Dist
) -> dict[str, Any]:
    """H16: the fraction of tokens seen after ``n_windows``, logged and written by rank 0."""
    cov = stream.coverage_summary(n_windows)
    if d.main and cov:
        append_jsonl(metrics_path, [{"step": step, **cov}])
        stream.write_coverage(out / "coverage.jsonl", n_windows, step)
    return cov


def _select(
    best: dict[str, Any] | None, metric: str, score: float, step: int, patience: int
) -> tuple[dict[str, Any], bool, bool]:
    """The best so far after a validation scoring ``score``.

    Returns:
        (best, improved: this step is the new best (the caller saves it), stop: without a new
        best, ``bad_evals`` reached ``patience`` (> 0)).
    """
    if best is None or score > best["value"]:
        return {"metric": metric, "value": score, "step": step, "bad_evals": 0}, True, False
    best = {**best, "bad_evals": best["bad_evals"] + 1}
    return best, False, 0 < patience <= best["bad_evals"]


def _last_scores(metrics_path: Path) -> dict[str, Any]:
    """The last validation row of ``metrics.jsonl`` without its step (``{}`` if none)."""
    rows = [r for r in read_jsonl(metrics_path) if "val_r2" in r or "train_r2" in r]
    return {k: v for k, v in (rows[-1] if rows else {}).items() if k != "step"}


def forward_terms(
    model: Any,
    views: torch.Tensor,
    pos: torch.Tensor,
    x: torch.Tensor,
    mask: torch.Tensor,
    tcfg: TrainConfig,
    device: torch.device,
    dtype: torch.dtype,
    layer_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward half of a training step, shared by ``fit`` and ``step_fn``.

    Args:
        model: the backbone (or its DDP wrapper).
        views: (2B, T, D) the augmented views: view 1 of every window, then view 2.
        pos: (2B, T, 3) their positions; x: (2B, T, D) their clean tokens (each view
            reconstructs its own clean window); mask: (2B, T, D) real values of ``x``.
        dtype: the autocast dtype (float32: none).
        layer_stats: LWLN's per-token layer mean and std of both views, (2B, T, 1) each.

    Returns:
        ``(sum of squared normalized errors, values counted, projections of view 1 and 2)``.
    """
    with autocast(device, dtype):
        _, recon, proj = model(views, pos, factored=True)
    s, n = reconstruction_terms(recon, x, mask, tcfg.loss_norm, tcfg.mln_eps, layer_stats)
    p1, p2 = proj.float().chunk(2)
    return s, n, p1, p2


def make_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the fp32 master weights (``core.models.optim.adamw``: fused on CPU and CUDA)."""
    return adamw(model.parameters(), tcfg.lr, tcfg.weight_decay)


def step_fn(
    bcfg: BackboneConfig, tcfg: TrainConfig, device: torch.device, dtype: torch.dtype, B: int
) -> Any:
    """One training step as ``fit`` runs it (two views, MLN + NT-Xent, backward, clipping,
    ``make_optimizer``'s AdamW) on fixed random windows, as a closure for timing
    (``weightatlas bench train``). The model is seeded, so every dtype starts from the same
    weights; the closure returns the step's loss."""
    T, D = bcfg.window, bcfg.token_size
    torch.manual_seed(0)
    model = Backbone(bcfg).to(device)
    opt = make_optimizer(model, tcfg)
    x = torch.randn(B, T, D, device=device) * 0.1
    mask = torch.ones(B, T, D, dtype=torch.bool, device=device)
    n = torch.arange(T)
    pos = torch.stack([n, torch.zeros_like(n), n], -1).expand(B, T, 3).to(device)
    noise = 0.01 * torch.randn(B, T, D, device=device)

    x2, pos2, mask2 = torch.cat([x, x]), torch.cat([pos, pos]), torch.cat([mask, mask])

    def step() -> float:
        views = torch.cat([x, x + noise])
        s, cnt, p1, p2 = forward_terms(model, views, pos2, x2, mask2, tcfg, device, dtype)
        loss = (1 - tcfg.gamma) * s / cnt + tcfg.gamma * nt_xent(p1, p2, tcfg.temperature)
        loss.backward()
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def token_rms(tokens: torch.Tensor) -> float:
    """Root mean square of the nonzero values of ``tokens`` (padding is zero), 1.0 if none."""
    real = tokens[tokens != 0].double()
    return float(real.pow(2).mean().sqrt()) if len(real) else 1.0


def _sample_tokens(dataset: Any, seed: int, limit: int = 200_000) -> torch.Tensor:
    """Real (non-padding) tokens of the training models, at most ``limit``, seeded subsample."""
    store = dataset.store
    parts = []
    for m in dataset.ids:
        tok = store.get(m)
        t = torch.as_tensor(tok.tokens, dtype=torch.float32)
        mask = torch.as_tensor(tok.mask, dtype=torch.bool)
        parts.append(t.masked_fill(~mask, 0.0)[mask.any(-1)])
    x = torch.cat(parts)
    if len(x) > limit:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(len(x), generator=g)[:limit]]
    return x


def _save_best(
    out: Path,
    model: Backbone,
    config: dict[str, Any],
    best: dict[str, Any],
    layers: list[dict[str, Any]] | None,
) -> None:
    """The selected weights as the backbone (``config.json`` names step and score), and their
    per-layer validation rows in ``val_layers.jsonl``."""
    sel = {k: best[k] for k in ("metric", "value", "step")}
    save_backbone(model, out, {**config, "step": best["step"], "selected": sel})
    if layers is not None:
        atomic_write_bytes(
            out / LAYERS_FILE,
            "".join(dumps({"step": best["step"], **r}) + "\n" for r in layers).encode(),
        )


def _views(
    x: torch.Tensor, mask: torch.Tensor, tcfg: TrainConfig, b: int, rows: list[int], d: Dist
) -> torch.Tensor:
    """The augmented views (2b, T, D) of this rank's clean views ``x`` (2b, T, D: view 1 of
    every row, then view 2); noise and masking draws depend on (seed, b) only."""
    g = torch.Generator(device=d.device).manual_seed(tcfg.seed * 7_919 + b * 104_729 + 1)
    shape = (2, len(rows), *x.shape[1:])  # draws for the whole global batch, both views
    eps = torch.randn(shape, generator=g, device=d.device)[:, d.rank :: d.world]
    u = torch.rand(shape, generator=g, device=d.device)[:, d.rank :: d.world]
    mult = tcfg.noise_mode == "multiplicative"
    x1, x2 = x.chunk(2)
    m1, m2 = mask.chunk(2)
    v1 = augment(x1, m1, tcfg.noise, tcfg.mask_frac, eps[0], u[0], mult)
    v2 = augment(x2, m2, tcfg.noise, tcfg.mask_frac, eps[1], u[1], mult)
    return torch.cat([v1, v2])


def _gather(p: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``p`` (differentiable), in rank order."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(p))


def _evaluate(
    model: Backbone,
    val: Evaluator | None,
    train_eval: Evaluator | None,
    d: Dist,
    tcfg: TrainConfig,
    step: int,
    metrics_path: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """One metrics row (val_* and train_* figures) and the validation's per-layer rows."""
    model.eval()
    row: dict[str, Any] = {"step": step}
    layers = None
    for name, ev in (("val", val), ("train", train_eval)):
        if ev is None:
            continue
        res = ev.run(model, d, tcfg.batch_size, tcfg, with_layers=name == "val")
        layers = res.pop("layers", layers)
        row.update({f"{name}_{k}": v for k, v in res.items()})
    model.train()
    if d.main and len(row) > 1:
        append_jsonl(metrics_path, [row])
    return row, layers


def _stop_nonfinite(out: Path, step: int, acc: torch.Tensor, d: Dist) -> None:
    latest = out / STATE_DIR / "latest.json"
    kept = (
        f"the last good checkpoint (step {read_json(latest)['step']}) is kept in {out}"
        if latest.exists()
        else "no checkpoint was written yet"
    )
    raise WeightAtlasError(
        f"non-finite loss at step {step + 1} (rec={float(acc[0])}, con={float(acc[1])}); "
        f"training stopped and {kept}; lower lr or raise mln_eps, then re-run to resume"
    )


def _restore(
    out: Path,
    config: dict[str, Any],
    resume: bool,
    model: Backbone,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    d: Dist,
) -> tuple[int, dict[str, Any] | None]:
    """Resume from ``out`` (same config only) or start fresh; trims metrics to the checkpoint.

    Returns the step to continue from and the best selection so far (None: none yet).
    """
    latest = out / STATE_DIR / "latest.json"
    metrics = BackboneFiles(out).metrics_path
    if resume and latest.exists():
        saved = read_json(out / STATE_DIR / read_json(latest)["dir"] / "state.json")["config"]
        saved = with_defaults(saved)
        if dumps(saved) != dumps(config):
            diff = [k for k in set(saved) | set(config) if saved.get(k) != config.get(k)]
            raise WeightAtlasError(
                f"{out} holds a run with a different configuration ({', '.join(sorted(diff))}); "
                "use another --out, or --fresh to start over"
            )
        step, best = load_checkpoint(out, model, opt, sched, d.device)
        if d.main:
            rows = [r for r in read_jsonl(metrics) if r.get("step", 0) <= step]
            atomic_write_bytes(metrics, "".join(dumps(r) + "\n" for r in rows).encode())
        d.barrier()
        return step, best
    if d.main:
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
        metrics.unlink(missing_ok=True)
        (out / LAYERS_FILE).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    d.barrier()
    return 0, None
