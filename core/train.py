"""Train the backbone on the atlas' token store: one process, or DDP under torchrun.

    weightatlas train ATLAS --preset ci                          # writes ATLAS/backbone/
    weightatlas train ATLAS --preset demo steps=3000 lr=5e-4     # key=value overrides
    weightatlas train ATLAS --preset ci --out ATLAS/backbones/no-mln loss_norm=none
    torchrun --nproc_per_node 2 -m core.train ATLAS --preset ci  # DDP (gloo on CPU, NCCL on GPU)
    weightatlas bench train --preset demo                        # tokens/s and MFU (JSON)

A preset name selects both a BackboneConfig (core.backbone) and a TrainConfig (below);
overrides go to whichever of the two has the key, and unknown keys fail. Each optimizer step
draws ``grad_accum`` micro-batches of ``batch_size`` windows (one window per row, from
``core.store.WindowDataset``) from a stream that visits every train model once per epoch in a
seeded order. Row ``i`` of the stream and its augmentations depend only on ``(seed, i)``, so
DDP ranks (each taking every ``world``-th row) see the same global batch as one process, and a
resumed run sees the same data as an uninterrupted one.

Outputs in OUT (default ATLAS/backbone): ``config.json``, ``model.safetensors`` (last good
weights), ``metrics.jsonl`` (train rows every ``log_every`` steps; validation R^2 overall and per
layer kind every ``eval_every``), ``train_state/`` (model, AdamW moments, scheduler, step and RNG
states in safetensors + JSON, no pickle) from which a killed run resumes exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from core.atlas import (
    Atlas,
    append_jsonl,
    atomic_path,
    atomic_write_bytes,
    dumps,
    read_json,
    read_jsonl,
    write_json,
)
from core.backbone import (
    BACKBONE_PRESETS,
    Backbone,
    BackboneConfig,
    flops_per_token,
    save_backbone,
)
from core.config import ConfigError, build_config, parse_overrides, to_dict
from core.errors import WeightAtlasError
from core.losses import LossNorm, R2Meter, augment, nt_xent, reconstruction_terms


@dataclass
class TrainConfig:
    """How the backbone is trained. ``batch_size`` is global (all ranks) per micro-batch."""

    seed: int = 0
    steps: int = 200  # optimizer steps; 0: derived from ``epochs``
    epochs: int = 0  # passes over the train models (used when steps == 0)
    batch_size: int = 16  # windows per micro-batch, one window per row
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # OneCycleLR peak
    weight_decay: float = 0.0
    pct_start: float = 0.1  # OneCycleLR warm-up fraction
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    gamma: float = 0.05  # weight of the contrastive loss: (1 - gamma) * rec + gamma * con
    temperature: float = 0.1  # NT-Xent temperature
    loss_norm: LossNorm = "masked"  # masked (MLN) | token | none
    mln_eps: float = 1e-5  # variance floor of the per-token standardization
    noise: float = 0.05  # augmentation noise std, relative to each token's std
    mask_frac: float = 0.1  # augmentation: fraction of real values zeroed
    windows_per_model: int = 1  # windows per model per epoch
    log_every: int = 10
    eval_every: int = 100  # validation R^2 every this many steps (and at the end)
    ckpt_every: int = 100
    train_eval_models: int = 8  # train models also scored by R^2 at each evaluation
    device: str = "auto"  # auto: cuda (LOCAL_RANK) if available, else cpu
    amp: bool = True  # bf16 autocast where the device supports it (CUDA)


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(steps=300, batch_size=8, lr=3e-3, pct_start=0.1, eval_every=100, ckpt_every=100),
    "demo": dict(
        steps=2000, batch_size=16, lr=1e-3, weight_decay=1e-4, eval_every=200, ckpt_every=200,
        log_every=20,
    ),
    # paper 001 Table 4: AdamW, lr 2e-5, wd 3e-9, OneCycleLR, batch 64 (x2 accumulation for large)
    "paper-small": dict(
        steps=0, epochs=100, batch_size=64, lr=2e-5, weight_decay=3e-9, pct_start=0.3,
        eval_every=2000, ckpt_every=1000, log_every=50, train_eval_models=16,
    ),
    "paper-large": dict(
        steps=0, epochs=300, batch_size=64, grad_accum=2, lr=2e-5, weight_decay=3e-9,
        pct_start=0.3, eval_every=2000, ckpt_every=1000, log_every=50, train_eval_models=16,
    ),
}  # fmt: skip

STATE_DIR = "train_state"


def build_configs(
    preset: str = "ci", overrides: dict[str, Any] | None = None
) -> tuple[BackboneConfig, TrainConfig]:
    """Backbone and train configs of a preset, with overrides routed by key; unknown keys raise."""
    overrides = dict(overrides or {})
    bkeys = {f.name for f in dataclasses.fields(BackboneConfig)}
    tkeys = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - bkeys - tkeys)
    if unknown:
        raise ConfigError(
            f"unknown train key(s): {', '.join(unknown)}; valid keys: "
            f"{', '.join(sorted(bkeys | tkeys))}"
        )
    if preset not in BACKBONE_PRESETS or preset not in TRAIN_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(TRAIN_PRESETS)}")
    bover = {k: v for k, v in overrides.items() if k in bkeys}
    tover = {k: v for k, v in overrides.items() if k in tkeys}
    bcfg = build_config(BackboneConfig, BACKBONE_PRESETS, preset, overrides=bover)
    tcfg = build_config(TrainConfig, TRAIN_PRESETS, preset, overrides=tover)
    if tcfg.steps <= 0 and tcfg.epochs <= 0:
        raise ConfigError("set steps > 0 or epochs > 0")
    if tcfg.batch_size < 1 or tcfg.grad_accum < 1:
        raise ConfigError("batch_size and grad_accum must be >= 1")
    return bcfg, tcfg


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """Where this process sits: rank, world size, device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over ranks (a copy; no gradient)."""
        t = t.detach().clone()
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_dist(device: str) -> Dist:
    """Join the torchrun process group if WORLD_SIZE > 1; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


# --------------------------------------------------------------------------- data


class Stream:
    """The infinite stream of training windows: epoch e visits every item once, seeded order.

    Row ``i`` is item ``perm_e[i mod M]`` of epoch ``e = i // M``; its window depends on
    ``(seed, e, item)`` only (``WindowDataset.set_epoch``), so any rank can fetch any row.
    """

    def __init__(self, dataset: Any, seed: int):
        self.ds = dataset
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(len(self.ds), generator=g)}
        return self._perms[epoch]

    def rows(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Stack rows of the stream: tokens (b, T, D), mask (b, T, D), positions (b, T, 3)."""
        items = []
        for i in indices:
            epoch, j = divmod(i, len(self.ds))
            self.ds.set_epoch(epoch)
            items.append(self.ds[int(self.order(epoch)[j])])
        return {k: torch.stack([it[k] for it in items]) for k in ("tokens", "mask", "positions")}


def _pin(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    return t.to(dev, non_blocking=True)


class Evaluator:
    """Reconstruction R^2 (overall, per layer kind) and MLN loss over whole models' tokens.

    Each model is cut into consecutive windows (``TokenStore.iter_chunks``); each token carries
    the kind of its layer from the store's layer table. Ranks share the windows and sum.
    """

    def __init__(self, store: Any, ids: list[str], window: int, kinds: list[str]):
        self.store, self.ids, self.window = store, ids, window
        self.kinds = kinds
        self._kind_cache: dict[str, torch.Tensor] = {}
        self.chunks = [(m, s) for m in ids for s in range(0, store.n_tokens(m), window)]

    def kind_ids(self, model_id: str, start: int) -> torch.Tensor:
        """(T,) index into ``self.kinds`` of every token of a window (-1 past the end)."""
        if model_id not in self._kind_cache:
            per_token = torch.full((self.store.n_tokens(model_id),), -1, dtype=torch.long)
            for e in self.store.layers(model_id):
                per_token[e.offset : e.offset + e.count] = self.kinds.index(e.kind)
            self._kind_cache = {model_id: per_token}
        out = torch.full((self.window,), -1, dtype=torch.long)
        part = self._kind_cache[model_id][start : start + self.window]
        out[: len(part)] = part
        return out

    @torch.no_grad()
    def run(self, model: Backbone, d: Dist, batch: int, tcfg: TrainConfig) -> dict[str, Any]:
        meter, rec = R2Meter(), torch.zeros(2, dtype=torch.float64)
        mine = self.chunks[d.rank :: d.world]
        for b in range(0, len(mine), batch):
            ws = [self.store.window(m, s, self.window) for m, s in mine[b : b + batch]]
            x = _pin(torch.stack([w["tokens"] for w in ws]), d.device)
            mask = _pin(torch.stack([w["mask"] for w in ws]), d.device)
            pos = _pin(torch.stack([w["positions"] for w in ws]), d.device)
            kid = _pin(torch.stack([self.kind_ids(m, s) for m, s in mine[b : b + batch]]), d.device)
            with _autocast(d.device, tcfg.amp):
                pred = model.decode(model.encode(x, pos), pos).float()
            meter.update(pred, x, mask, {k: kid == i for i, k in enumerate(self.kinds)})
            s, n = reconstruction_terms(pred, x, mask, tcfg.loss_norm, tcfg.mln_eps)
            rec += torch.stack([s.double().cpu(), n.double().cpu()])
        names = ["all", *self.kinds]
        sums = torch.stack([meter.sums.get(k, torch.zeros(4, dtype=torch.float64)) for k in names])
        sums, rec = d.all_sum(sums), d.all_sum(rec)
        meter.sums = dict(zip(names, sums, strict=True))
        r2 = meter.compute()
        return {
            "r2": r2.pop("all", None),
            "r2_by_kind": r2,
            "rec_loss": float(rec[0] / rec[1].clamp_min(1.0)),
            "models": len(self.ids),
            "tokens": sum(self.store.n_tokens(m) for m in self.ids),
        }


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    enabled = amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# --------------------------------------------------------------------------- checkpoints


def _rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device):
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    out: Path,
    model: Backbone,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    config: dict[str, Any],
    device: torch.device,
) -> None:
    """Write weights + resume state (safetensors + JSON) atomically, then point latest at it."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for idx, st in osd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val.detach().contiguous()
            else:
                scalars[f"{idx}.{key}"] = val
    rng_t, rng_meta = _rng_state(device)
    tensors.update(rng_t)
    meta = {
        "step": step,
        "config": config,
        "param_groups": osd["param_groups"],
        "optim_scalars": scalars,
        "scheduler": sched.state_dict(),
        "rng": rng_meta,
    }
    name = f"step-{step:08d}"
    sdir = out / STATE_DIR / name
    with atomic_path(sdir / "state.safetensors") as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp))
    write_json(sdir / "state.json", meta)
    save_backbone(model, out, {**config, "step": step})
    write_json(out / STATE_DIR / "latest.json", {"step": step, "dir": name})
    for old in (out / STATE_DIR).glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    out: Path,
    model: Backbone,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> int:
    """Restore a run from ``out/train_state``; returns the step it had finished."""
    latest = read_json(out / STATE_DIR / "latest.json")
    sdir = out / STATE_DIR / latest["dir"]
    tensors = load_file(sdir / "state.safetensors", device="cpu")
    meta = read_json(sdir / "state.json")
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    )
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for k, v in meta["optim_scalars"].items():
        idx, key = k.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    groups = [{**g, "betas": tuple(g["betas"])} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
    sched.load_state_dict(meta["scheduler"])
    _set_rng_state(tensors, meta["rng"], device)
    return int(meta["step"])


# --------------------------------------------------------------------------- training


def _run_config(
    bcfg: BackboneConfig, tcfg: TrainConfig, preset: str, store: Any, n_train: int, n_val: int
) -> dict[str, Any]:
    return {
        "preset": preset,
        "backbone": to_dict(bcfg),
        "train": to_dict(tcfg),
        "scheme": store.scheme,
        "token_size": store.token_size,
        "n_train_models": n_train,
        "n_val_models": n_val,
    }


def _total_steps(tcfg: TrainConfig, n_items: int) -> int:
    if tcfg.steps > 0:
        return tcfg.steps
    per_step = tcfg.batch_size * tcfg.grad_accum
    return max(1, -(-tcfg.epochs * n_items // per_step))


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
        overrides: BackboneConfig / TrainConfig fields, e.g. ``{"steps": 500}``.
        out: output dir (default ``ATLAS/backbone``; ablations: ``ATLAS/backbones/NAME``).
        resume: continue from ``out/train_state`` if present; False starts over.

    Returns:
        Summary: steps, final train loss, last validation metrics, seconds, output dir.
    """
    from core.store import TokenStore, WindowDataset

    atlas = Atlas.open(atlas)
    overrides = dict(overrides or {})
    bcfg, tcfg = build_configs(preset, overrides)
    store = TokenStore(atlas.tokens_dir)
    if not store.ids:
        raise WeightAtlasError(f"{atlas.tokens_dir} holds no tokenized model")
    if "token_size" in overrides and bcfg.token_size != store.token_size:
        raise WeightAtlasError(
            f"token_size={bcfg.token_size} but the store has {store.token_size}; "
            "re-tokenize or drop the override"
        )
    bcfg = dataclasses.replace(bcfg, token_size=store.token_size)
    train_ids = [r["id"] for r in atlas.accepted("train") if r["id"] in store]
    val_ids = [r["id"] for r in atlas.accepted("val") if r["id"] in store]
    if not train_ids:
        raise WeightAtlasError(f"{atlas.root}: no tokenized model in the train split")
    out = Path(out) if out is not None else atlas.backbone_dir
    d = setup_dist(tcfg.device)
    if tcfg.batch_size < d.world:
        raise ConfigError(f"batch_size={tcfg.batch_size} is smaller than the {d.world} ranks")
    config = _run_config(bcfg, tcfg, preset, store, len(train_ids), len(val_ids))
    dataset = WindowDataset(store, train_ids, bcfg.window, tcfg.seed, tcfg.windows_per_model)
    kinds = _kinds(store, train_ids + val_ids)
    val = Evaluator(store, val_ids, bcfg.window, kinds) if val_ids else None
    train_eval = None
    if tcfg.train_eval_models > 0:
        train_eval = Evaluator(store, train_ids[: tcfg.train_eval_models], bcfg.window, kinds)
    return fit(bcfg, tcfg, config, dataset, val, train_eval, out, resume, d)


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
    """The training loop behind ``train`` (datasets and evaluators already built)."""
    torch.manual_seed(tcfg.seed)
    random.seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    model = Backbone(bcfg).to(d.device)
    steps = _total_steps(tcfg, len(dataset))
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    if steps < 3:
        raise ConfigError(f"train for at least 3 steps (OneCycleLR), got {steps}")
    warmup = max(tcfg.pct_start, 2 / steps)  # >= 2 warm-up steps: OneCycleLR divides by it
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=tcfg.lr, total_steps=steps, pct_start=warmup
    )
    metrics_path = out / "metrics.jsonl"
    step = _restore(out, config, resume, model, opt, sched, d)
    ddp = model
    if d.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    stream = Stream(dataset, tcfg.seed)
    B, A = tcfg.batch_size, tcfg.grad_accum
    T = bcfg.window
    last_val: dict[str, Any] = {}
    t0, seen_tokens, window_t0, window_steps = time.time(), 0, time.time(), 0
    bar = tqdm(total=steps, initial=step, disable=not d.main, desc="train", unit="step")
    logged: dict[str, float] = {}
    while step < steps:
        model.train()
        acc = torch.zeros(3, dtype=torch.float64)  # rec, con, loss (global, summed over micro)
        for micro in range(A):
            b = step * A + micro  # global micro-batch index
            rows = list(range(b * B, (b + 1) * B))
            batch = stream.rows(rows[d.rank :: d.world])
            x, mask = _pin(batch["tokens"], d.device), _pin(batch["mask"], d.device)
            pos = _pin(batch["positions"], d.device)
            views = _views(x, mask, tcfg, b, rows, d)
            with _autocast(d.device, tcfg.amp):
                _, recon, proj = ddp(views, torch.cat([pos, pos]), factored=True)
            s, n = reconstruction_terms(
                recon, torch.cat([x, x]), torch.cat([mask, mask]), tcfg.loss_norm, tcfg.mln_eps
            )
            n_global = d.all_sum(n).clamp_min(1.0)
            p1, p2 = proj.float().chunk(2)
            if d.world > 1:
                p1, p2 = _gather(p1), _gather(p2)
            con = nt_xent(p1, p2, tcfg.temperature) if tcfg.gamma > 0 else s.new_zeros(())
            rec = s * d.world / n_global  # DDP averages gradients: sum over ranks / N
            loss = (1 - tcfg.gamma) * rec + tcfg.gamma * con
            sync = micro == A - 1 or d.world == 1
            if sync:
                (loss / A).backward()
            else:
                with ddp.no_sync():
                    (loss / A).backward()
            rec_g = d.all_sum(s.detach()) / n_global
            acc += torch.stack(
                [
                    rec_g.double().cpu(),
                    con.detach().double().cpu(),
                    torch.zeros((), dtype=torch.float64),
                ]
            )
        acc /= A
        acc[2] = (1 - tcfg.gamma) * acc[0] + tcfg.gamma * acc[1]
        if not torch.isfinite(acc).all():
            _stop_nonfinite(out, step, acc, d)
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            if tcfg.grad_clip > 0
            else torch.zeros(())
        )
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        step += 1
        seen_tokens += 2 * B * A * T
        window_steps += 1
        bar.update(1)
        logged = {"loss": float(acc[2]), "rec": float(acc[0]), "con": float(acc[1])}
        if d.main and (step % tcfg.log_every == 0 or step == steps):
            dt = time.time() - window_t0
            row = {
                "step": step,
                "epoch": step * A * B / len(dataset),
                **logged,
                "lr": sched.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens_per_s": 2 * B * A * T * window_steps / max(dt, 1e-9),
                "seconds": time.time() - t0,
            }
            append_jsonl(metrics_path, [row])
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            window_t0, window_steps = time.time(), 0
        if step % tcfg.eval_every == 0 or step == steps:
            last_val = _evaluate(model, val, train_eval, d, tcfg, step, metrics_path)
            if d.main and last_val.get("val_r2") is not None:
                bar.set_postfix(loss=f"{logged['loss']:.4f}", val_r2=f"{last_val['val_r2']:.3f}")
        if step % tcfg.ckpt_every == 0 or step == steps:
            if d.main:
                save_checkpoint(out, model, opt, sched, step, config, d.device)
            d.barrier()
    bar.close()
    summary = {
        "out": str(out),
        "steps": step,
        **logged,
        **last_val,
        "seconds": time.time() - t0,
        "tokens_seen": seen_tokens,
    }
    if d.main and not last_val:
        rows = [r for r in read_jsonl(metrics_path) if "val_r2" in r or "train_r2" in r]
        summary.update({k: v for k, v in (rows[-1] if rows else {}).items() if k != "step"})
    return summary


def _views(
    x: torch.Tensor, mask: torch.Tensor, tcfg: TrainConfig, b: int, rows: list[int], d: Dist
) -> torch.Tensor:
    """Two augmented views (2b, T, D) of this rank's rows; draws depend on (seed, b) only."""
    g = torch.Generator(device=d.device).manual_seed(tcfg.seed * 7_919 + b * 104_729 + 1)
    shape = (2, len(rows), *x.shape[1:])  # draws for the whole global batch, both views
    eps = torch.randn(shape, generator=g, device=d.device)[:, d.rank :: d.world]
    u = torch.rand(shape, generator=g, device=d.device)[:, d.rank :: d.world]
    v1 = augment(x, mask, tcfg.noise, tcfg.mask_frac, eps[0], u[0])
    v2 = augment(x, mask, tcfg.noise, tcfg.mask_frac, eps[1], u[1])
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
) -> dict[str, Any]:
    model.eval()
    row: dict[str, Any] = {"step": step}
    for name, ev in (("val", val), ("train", train_eval)):
        if ev is None:
            continue
        res = ev.run(model, d, tcfg.batch_size, tcfg)
        row.update({f"{name}_{k}": v for k, v in res.items()})
    model.train()
    if d.main and len(row) > 1:
        append_jsonl(metrics_path, [row])
    return row


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
) -> int:
    """Resume from ``out`` (same config only) or start fresh; trims metrics to the checkpoint."""
    latest = out / STATE_DIR / "latest.json"
    metrics = out / "metrics.jsonl"
    if resume and latest.exists():
        saved = read_json(out / "config.json")
        saved = {k: v for k, v in saved.items() if k != "step"}
        if dumps(saved) != dumps(config):
            diff = [k for k in set(saved) | set(config) if saved.get(k) != config.get(k)]
            raise WeightAtlasError(
                f"{out} holds a run with a different configuration ({', '.join(sorted(diff))}); "
                "use another --out, or --fresh to start over"
            )
        step = load_checkpoint(out, model, opt, sched, d.device)
        if d.main:
            rows = [r for r in read_jsonl(metrics) if r.get("step", 0) <= step]
            atomic_write_bytes(metrics, "".join(dumps(r) + "\n" for r in rows).encode())
        d.barrier()
        return step
    if d.main:
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)
        metrics.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
    d.barrier()
    return 0


# --------------------------------------------------------------------------- CLI


class _IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides follow options (``ATLAS --preset P steps=9``).

    Plain argparse binds all positionals at the first one, so overrides after an option are
    "unrecognized"; intermixed parsing (Python's own) collects them.
    """

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def train_summary_text(summary: dict[str, Any], atlas: str | Path, preset: str) -> str:
    """A few lines on a finished training run: steps, time, models, validation R², where."""
    out = Path(str(summary.get("out", "")))
    cfg = read_json(out / "config.json") if (out / "config.json").exists() else {}
    n_train, n_val = cfg.get("n_train_models"), cfg.get("n_val_models")
    lines = [
        f"train: {summary.get('steps', '?')} steps in {summary.get('seconds', 0):.0f} s "
        f"(preset {preset}) on {n_train if n_train is not None else '?'} training models"
        + (" (stopped early)" if summary.get("stopped_early") else "")
    ]
    if isinstance(summary.get("val_r2"), int | float):
        lines.append(
            f"validation R² {summary['val_r2']:.3f} on {summary.get('val_models', n_val)} "
            "held-out models"
            + (
                f"; training R² {summary['train_r2']:.3f} on a sample of "
                f"{summary.get('train_models', '?')} training models"
                if isinstance(summary.get("train_r2"), int | float)
                else ""
            )
        )
    if preset == "ci":
        lines.append("note: preset ci is a smoke test; use --preset demo or larger for a map")
    lines.append(f"backbone written to {out}")
    lines.append(f"next: weightatlas embed {atlas}")
    return "\n".join(lines)


def add_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas train``."""
    p.__class__ = _IntermixedParser
    from core.cli import add_json_flag, add_set_flag

    p.add_argument("atlas", help="atlas directory (collected and tokenized)")
    p.add_argument(
        "--preset",
        default="ci",
        choices=sorted(TRAIN_PRESETS),
        help="backbone size and training budget: ci is a smoke test (minutes), demo the demo "
        "atlas' backbone, paper-small/paper-large the papers' (default: ci)",
    )
    p.add_argument("--out", default=None, help="output dir (default ATLAS/backbone)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="BackboneConfig/TrainConfig overrides, e.g. steps=500 lr=1e-3",
    )
    add_set_flag(p, "BackboneConfig/TrainConfig")
    add_json_flag(p)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas train``; prints a short summary (``--json``: the summary dict) on rank 0."""
    from core.cli import emit, overrides_of

    summary = train(
        args.atlas,
        args.preset,
        parse_overrides(overrides_of(args)),
        out=args.out,
        resume=not args.fresh,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        emit(args, summary, train_summary_text(summary, args.atlas, args.preset))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m core.train ATLAS ...`` (what torchrun launches): the train CLI alone."""
    from core.errors import USER_ERRORS

    parser = argparse.ArgumentParser(prog="weightatlas train", description=__doc__.split("\n")[0])
    add_cli(parser)
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except USER_ERRORS as e:
        print(f"weightatlas train: error: {e}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- bench


def _matmul_flops(device: torch.device, dtype: torch.dtype, n: int, repeat: int) -> float:
    """Best FLOP/s of an n x n matmul on ``device`` (the MFU baseline)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeat + 1):
        _sync(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Training throughput of a preset: tokens/s (forward + backward + AdamW) and MFU.

    Model FLOPs are counted analytically (``core.backbone.flops_per_token``); the baseline is
    the best large-matmul FLOP/s measured in the same run on the same device and dtype (bf16 on
    CUDA, fp32 on CPU). ``--n`` sets the batch (windows per step).
    """
    preset = args.preset or "ci"
    bcfg, tcfg = build_configs(preset)
    device = torch.device(args.device)
    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    B = args.n or tcfg.batch_size
    T, D = bcfg.window, bcfg.token_size
    torch.manual_seed(0)
    model = Backbone(bcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)
    x = torch.randn(B, T, D, device=device) * 0.1
    mask = torch.ones(B, T, D, dtype=torch.bool, device=device)
    pos = (
        torch.stack([torch.arange(T), torch.zeros(T, dtype=torch.long), torch.arange(T)], -1)
        .expand(B, T, 3)
        .to(device)
    )

    def step() -> None:
        views = torch.cat([x, x + 0.01 * torch.randn_like(x)])
        with _autocast(device, amp):
            _, recon, proj = model(views, torch.cat([pos, pos]), factored=True)
        s, n = reconstruction_terms(recon, torch.cat([x, x]), torch.cat([mask, mask]))
        p1, p2 = proj.float().chunk(2)
        loss = (1 - tcfg.gamma) * s / n + tcfg.gamma * nt_xent(p1, p2, tcfg.temperature)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step()  # warm-up
    iters = max(2, 8 if device.type == "cuda" else 3)
    best = float("inf")
    for _ in range(args.repeat):
        _sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        best = min(best, (time.perf_counter() - t) / iters)
    tokens = 2 * B * T  # two views per window
    tokens_per_s = tokens / best
    model_flops = flops_per_token(bcfg, T) * tokens_per_s
    mm_dtype = torch.bfloat16 if amp else torch.float32
    base = _matmul_flops(device, mm_dtype, 8192 if device.type == "cuda" else 2048, args.repeat)
    out = {
        "preset": preset,
        "device": str(device),
        "dtype": "bf16-autocast" if amp else "fp32",
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "batch_windows": B,
        "window": T,
        "token_size": D,
        "tokens_per_step": tokens,
        "seconds_per_step": best,
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_s": model_flops / 1e12,
        "baseline_matmul_tflops_per_s": base / 1e12,
        "mfu": model_flops / base,
    }
    if device.type == "cuda":
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return out


if __name__ == "__main__":
    sys.exit(main())
