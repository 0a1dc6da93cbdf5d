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
from typing import Any, Literal

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

Precision = Literal["auto", "fp32", "bf16"]


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
    # H16: windows drawn per model in proportion to n_tokens**sample_alpha (0: uniform per
    # model, the paper's one window per model; 1: uniform per token); see ``Stream``
    sample_alpha: float = 0.5
    log_every: int = 10
    eval_every: int = 100  # validation R^2 every this many steps (and at the end)
    ckpt_every: int = 100
    train_eval_models: int = 8  # train models also scored by R^2 at each evaluation
    device: str = "auto"  # auto: cuda (LOCAL_RANK) if available, else cpu
    # compute dtype of forward/backward; weights, AdamW moments and losses stay fp32.
    # auto: bf16 autocast where the device runs it fast (CUDA with bf16; CPUs with AMX or
    # AVX-512 BF16, see ``bf16_is_fast``), else fp32
    dtype: Precision = "auto"
    # stop after this many evaluations without a better selection score (0: never stop early)
    patience: int = 0


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(steps=300, batch_size=8, lr=3e-3, pct_start=0.1, eval_every=100, ckpt_every=100),
    # 4,096 tokens per step (2 views x 32 windows x 64 tokens): enough rows for the matrix units
    "demo": dict(
        steps=300, batch_size=32, lr=1e-3, weight_decay=1e-4, eval_every=100, ckpt_every=100,
        log_every=20,
    ),
    # the demo backbone over a whole annealed schedule (~15-20 min on 2 busy CPU cores), the
    # best median per-layer val R^2 kept; the pipeline's `demo-long` preset and assets/demo use
    # it. A first run (1,600 steps, patience 3, eval every 100) peaked at step 300 (conv+linear
    # 0.996) and was stopped at step 600 with the one-cycle lr still near its peak.
    "demo-long": dict(
        steps=600, batch_size=32, lr=1e-3, weight_decay=1e-4, eval_every=50, ckpt_every=50,
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
LAYERS_FILE = "val_layers.jsonl"  # per-layer validation R^2 / std ratio of the selected weights
SELECT_METRIC = "val_layer_r2_median_conv_linear"


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
    """The infinite stream of training windows, drawn by token count (issue 16).

    An epoch is ``M = len(dataset)`` rows (models x ``windows_per_model``). Model ``m`` with
    ``n_m`` tokens gets the share ``p_m = n_m**alpha / sum_k n_k**alpha`` of the rows:

    - ``alpha = 0``: uniform per model, every model equally often (paper 001: one window per
      model); a model 1000x larger than the rest then has 1/1000 of its tokens seen as often.
    - ``alpha = 1``: uniform per token: a model is drawn in proportion to its size, so every
      token is equally likely to be seen (the small models then get few windows).
    - in between (default ``TrainConfig.sample_alpha = 0.5``) trades the two, like temperature
      sampling of languages in multilingual corpora.

    Each epoch the models are shuffled and the rows dealt by systematic sampling of the
    cumulative ``M * p_m`` with one random offset: model ``m`` gets ``floor(M p_m)`` or
    ``ceil(M p_m)`` rows, exactly ``M p_m`` in expectation, and the rows are shuffled. Row ``j`` of
    epoch ``e`` starts its window at a hash of ``(seed, e, j)``, uniform over ``[0, n_m - T]``, so
    any rank computes any row (and a resumed run replays the same rows) without coordination.
    ``coverage`` replays rows to count, per model, the fraction of its tokens inside at least one
    window drawn so far.
    """

    def __init__(self, dataset: Any, seed: int, alpha: float = 0.0):
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"sample_alpha must be in [0, 1], got {alpha}")
        self.ds = dataset
        self.seed = seed
        self.alpha = float(alpha)
        self._perms: dict[int, torch.Tensor] = {}
        self._plan: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.by_tokens = hasattr(dataset, "store") and hasattr(dataset, "ids")
        if self.by_tokens:
            self.ids = list(dataset.ids)
            self.n_tokens = np.array([dataset.store.n_tokens(i) for i in self.ids], np.int64)
            w = np.maximum(self.n_tokens, 1).astype(np.float64) ** self.alpha
            self.share = w / w.sum()
            total = int(self.n_tokens.sum())
            self._block = max(1, -(-total // 2**27))  # coverage granularity: <= 128 M flags
            self._seen = [np.zeros(-(-max(int(n), 1) // self._block), bool) for n in self.n_tokens]
            self._windows = np.zeros(len(self.ids), np.int64)
            self._covered_upto = 0

    def order(self, epoch: int) -> torch.Tensor:
        """Item order of ``epoch`` (datasets without a token store: each item once)."""
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(len(self.ds), generator=g)}
        return self._perms[epoch]

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(model index (M,), window start (M,))`` of every row of ``epoch``."""
        if epoch not in self._plan:
            m_rows = len(self.ds)
            rng = np.random.default_rng([self.seed, epoch, 16])
            perm = rng.permutation(len(self.ids))
            cum = np.cumsum(self.share[perm]) * m_rows
            hits = np.floor(cum + rng.random()).astype(np.int64)
            counts = np.diff(np.concatenate([[0], hits]))
            counts[-1] += m_rows - counts.sum()  # float round-off only
            models = rng.permutation(np.repeat(perm, counts))
            from core.store import _mix

            span = np.maximum(self.n_tokens[models] - self.ds.ws + 1, 1)
            mix = np.array([_mix(self.seed, epoch, j) for j in range(m_rows)], dtype=np.uint64)
            starts = (mix % span.astype(np.uint64)).astype(np.int64)
            self._plan = {epoch: (models, starts)}
        return self._plan[epoch]

    def window_of(self, i: int) -> tuple[int, int]:
        """``(model index, window start)`` of stream row ``i``."""
        epoch, j = divmod(i, len(self.ds))
        models, starts = self.epoch_plan(epoch)
        return int(models[j]), int(starts[j])

    def rows(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Stack rows of the stream: tokens (b, T, D), mask (b, T, D), positions (b, T, 3)."""
        items = []
        for i in indices:
            if self.by_tokens:
                m, start = self.window_of(i)
                items.append(self.ds.store.window(self.ids[m], start, self.ds.ws))
                continue
            epoch, j = divmod(i, len(self.ds))
            self.ds.set_epoch(epoch)
            items.append(self.ds[int(self.order(epoch)[j])])
        return {k: torch.stack([it[k] for it in items]) for k in ("tokens", "mask", "positions")}

    def _advance(self, n_rows: int) -> None:
        """Replay rows ``[covered, n_rows)`` into the coverage flags (all ranks' rows)."""
        if n_rows < self._covered_upto:  # a restart: count again from the beginning
            for s in self._seen:
                s[:] = False
            self._windows[:] = 0
            self._covered_upto = 0
        ws, b = self.ds.ws, self._block
        for i in range(self._covered_upto, n_rows):
            m, start = self.window_of(i)
            end = min(start + ws, int(self.n_tokens[m]))
            self._seen[m][start // b : -(-end // b)] = True
            self._windows[m] += 1
        self._covered_upto = n_rows

    def coverage(self, n_rows: int) -> dict[str, float]:
        """Model id -> fraction of its tokens inside at least one of the first ``n_rows`` rows."""
        if not self.by_tokens:
            return {}
        self._advance(n_rows)
        return {i: float(s.mean()) for i, s in zip(self.ids, self._seen, strict=True)}

    def coverage_summary(self, n_rows: int) -> dict[str, float]:
        """Flat metrics: token-weighted and per-model coverage, and the median per size band.

        Bands are decades of tokens per model (``coverage_band_1e3``: models with 1,000-9,999
        tokens).
        """
        cov = self.coverage(n_rows)
        if not cov:
            return {}
        c = np.array([cov[i] for i in self.ids])
        out = {
            "coverage_tokens": float((c * self.n_tokens).sum() / max(self.n_tokens.sum(), 1)),
            "coverage_model_min": float(c.min()),
            "coverage_model_median": float(np.median(c)),
        }
        bands = np.floor(np.log10(np.maximum(self.n_tokens, 1))).astype(int)
        for band in sorted(set(bands.tolist())):
            out[f"coverage_band_1e{band}"] = float(np.median(c[bands == band]))
        return out

    def write_coverage(self, path: Path, n_rows: int, step: int) -> None:
        """Write per-model coverage after ``n_rows`` rows to ``path`` (JSONL, atomically)."""
        cov = self.coverage(n_rows)
        rows = [
            {
                "id": i,
                "step": step,
                "n_tokens": int(self.n_tokens[k]),
                "share": float(self.share[k]),
                "windows": int(self._windows[k]),
                "coverage": cov[i],
            }
            for k, i in enumerate(self.ids)
        ]
        tmp = path.with_name(f".{path.name}.new")
        tmp.unlink(missing_ok=True)
        append_jsonl(tmp, rows)
        os.replace(tmp, path)


def size_band_sample(ids: list[str], n_tokens: list[int], n: int) -> list[str]:
    """Up to ``n`` ids spread over size bands (decades of tokens), largest band first.

    Used to pick the train models scored during training, so every size band is validated.
    """
    bands: dict[int, list[str]] = {}
    for i, t in zip(ids, n_tokens, strict=True):
        bands.setdefault(int(np.floor(np.log10(max(t, 1)))), []).append(i)
    queues = [bands[b] for b in sorted(bands, reverse=True)]
    out: list[str] = []
    k = 0
    while len(out) < min(n, len(ids)):
        for q in queues:
            if k < len(q) and len(out) < n:
                out.append(q[k])
        k += 1
    return out


def _pin(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    return t.to(dev, non_blocking=True)


SELECT_KINDS = ("conv", "linear")  # the best checkpoint maximizes their median per-layer R^2


def layer_table(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer R^2 and std ratio from summed statistics.

    Args:
        stats: (n_layers, 6) float64 sums over each layer's real values:
            n, sum y, sum y^2, sum yhat, sum yhat^2, sum (y - yhat)^2.

    Returns:
        r2 (n_layers,) = 1 - SSE / SST, and std_ratio (n_layers,) = std(yhat) / std(y);
        NaN where a layer has fewer than two values or no variance.
    """
    n, sy, syy, sp, spp, sse = stats.unbind(-1)
    nn_ = n.clamp_min(1.0)
    sst = syy - sy * sy / nn_
    var_p = (spp - sp * sp / nn_).clamp_min(0.0)
    ok = (n > 1) & (sst > 1e-12 * syy.clamp_min(1e-300))
    nan = torch.full_like(n, float("nan"))
    r2 = torch.where(ok, 1.0 - sse / sst.clamp_min(1e-300), nan)
    ratio = torch.where(ok, (var_p / sst.clamp_min(1e-300)).sqrt(), nan)
    return r2, ratio


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if v == v]  # drop NaN
    return float(np.median(vals)) if vals else None


class Evaluator:
    """Reconstruction R^2 and MLN loss over whole models' tokens: pooled over all values
    (overall, per layer kind) and per layer (median per kind of R^2 and of the std ratio).

    Each model is cut into consecutive windows (``TokenStore.iter_chunks``); each token carries
    its layer (a row of ``self.layers``) and that layer's kind from the store's layer table.
    Ranks share the windows and sum.
    """

    def __init__(self, store: Any, ids: list[str], window: int, kinds: list[str]):
        self.store, self.ids, self.window = store, ids, window
        self.kinds = kinds
        self.layers: list[tuple[str, str, str]] = []  # (model id, layer name, kind)
        self._first: dict[str, int] = {}
        for m in ids:
            self._first[m] = len(self.layers)
            self.layers += [(m, e.name, e.kind) for e in store.layers(m)]
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.chunks = [(m, s) for m in ids for s in range(0, store.n_tokens(m), window)]

    def _per_token(self, model_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        if model_id not in self._cache:
            n = self.store.n_tokens(model_id)
            kind = torch.full((n,), -1, dtype=torch.long)
            layer = torch.full((n,), -1, dtype=torch.long)
            for j, e in enumerate(self.store.layers(model_id)):
                kind[e.offset : e.offset + e.count] = self.kinds.index(e.kind)
                layer[e.offset : e.offset + e.count] = self._first[model_id] + j
            self._cache = {model_id: (kind, layer)}
        return self._cache[model_id]

    def _ids(self, model_id: str, start: int, which: int) -> torch.Tensor:
        out = torch.full((self.window,), -1, dtype=torch.long)
        part = self._per_token(model_id)[which][start : start + self.window]
        out[: len(part)] = part
        return out

    def kind_ids(self, model_id: str, start: int) -> torch.Tensor:
        """(T,) index into ``self.kinds`` of every token of a window (-1 past the end)."""
        return self._ids(model_id, start, 0)

    def layer_ids(self, model_id: str, start: int) -> torch.Tensor:
        """(T,) index into ``self.layers`` of every token of a window (-1 past the end)."""
        return self._ids(model_id, start, 1)

    def _by_band(self, lstats: torch.Tensor) -> dict[str, Any]:
        """Pooled R^2 per size band (decades of tokens per model, as ``coverage_band_1eK``):
        ``r2_band_1eK`` (None without variance) and ``models_band_1eK`` (issue 16)."""
        band = {m: int(np.floor(np.log10(max(self.store.n_tokens(m), 1)))) for m in self.ids}
        out: dict[str, Any] = {}
        for b in sorted(set(band.values())):
            rows = [j for j, (m, _, _) in enumerate(self.layers) if band[m] == b]
            r2, _ = layer_table(lstats[rows].sum(0, keepdim=True))
            out[f"r2_band_1e{b}"] = None if r2[0] != r2[0] else float(r2[0])
            out[f"models_band_1e{b}"] = sum(1 for v in band.values() if v == b)
        return out

    @torch.no_grad()
    def run(
        self,
        model: Backbone,
        d: Dist,
        batch: int,
        tcfg: TrainConfig,
        with_layers: bool = False,
    ) -> dict[str, Any]:
        """Score the models; ``with_layers`` also returns the per-layer rows under ``layers``."""
        meter, rec = R2Meter(), torch.zeros(2, dtype=torch.float64)
        lstats = torch.zeros(len(self.layers) + 1, 6, dtype=torch.float64)  # last row: padding
        cdtype = compute_dtype(tcfg.dtype, d.device)
        mine = self.chunks[d.rank :: d.world]
        for b in range(0, len(mine), batch):
            part = mine[b : b + batch]
            ws = [self.store.window(m, s, self.window) for m, s in part]
            x = _pin(torch.stack([w["tokens"] for w in ws]), d.device)
            mask = _pin(torch.stack([w["mask"] for w in ws]), d.device)
            pos = _pin(torch.stack([w["positions"] for w in ws]), d.device)
            kid = _pin(torch.stack([self.kind_ids(m, s) for m, s in part]), d.device)
            with _autocast(d.device, cdtype):
                pred = model.decode(model.encode(x, pos), pos).float()
            meter.update(pred, x, mask, {k: kid == i for i, k in enumerate(self.kinds)})
            s, n = reconstruction_terms(pred, x, mask, tcfg.loss_norm, tcfg.mln_eps)
            rec += torch.stack([s.double().cpu(), n.double().cpu()])
            y, p, w = x.double().cpu(), pred.double().cpu(), mask.double().cpu()
            per_tok = torch.stack(
                [w, w * y, w * y * y, w * p, w * p * p, w * (y - p) ** 2], -1
            ).sum(2)  # (b, T, 6)
            lid = torch.stack([self.layer_ids(m, s) for m, s in part])
            lid = torch.where(lid < 0, len(self.layers), lid)
            lstats.index_add_(0, lid.flatten(), per_tok.flatten(0, 1))
        names = ["all", *self.kinds]
        sums = torch.stack([meter.sums.get(k, torch.zeros(4, dtype=torch.float64)) for k in names])
        sums, rec, lstats = d.all_sum(sums), d.all_sum(rec), d.all_sum(lstats)
        meter.sums = dict(zip(names, sums, strict=True))
        r2 = meter.compute()
        lr2, lratio = layer_table(lstats[:-1].cpu())
        by_kind_r2: dict[str, list[float]] = {}
        by_kind_ratio: dict[str, list[float]] = {}
        for (_, _, kind), a, c in zip(self.layers, lr2.tolist(), lratio.tolist(), strict=True):
            by_kind_r2.setdefault(kind, []).append(a)
            by_kind_ratio.setdefault(kind, []).append(c)
        select = [v for k in SELECT_KINDS for v in by_kind_r2.get(k, [])]
        out: dict[str, Any] = {
            "r2": r2.pop("all", None),
            "r2_by_kind": r2,
            "layer_r2_median_by_kind": {k: _median(v) for k, v in sorted(by_kind_r2.items())},
            "layer_std_ratio_median_by_kind": {
                k: _median(v) for k, v in sorted(by_kind_ratio.items())
            },
            "layers_by_kind": {k: len(v) for k, v in sorted(by_kind_r2.items())},
            "layer_r2_median_conv_linear": _median(select) if select else _median(lr2.tolist()),
            "rec_loss": float(rec[0] / rec[1].clamp_min(1.0)),
            "models": len(self.ids),
            "tokens": sum(self.store.n_tokens(m) for m in self.ids),
            **self._by_band(lstats[:-1].cpu()),
        }
        if with_layers:
            out["layers"] = [
                {
                    "model": m,
                    "layer": name,
                    "kind": kind,
                    "values": int(st[0]),
                    "r2": None if a != a else a,
                    "std_ratio": None if c != c else c,
                }
                for (m, name, kind), st, a, c in zip(
                    self.layers, lstats[:-1].tolist(), lr2.tolist(), lratio.tolist(), strict=True
                )
            ]
        return out


def cpu_bf16_flags(cpuinfo: str | None = None) -> set[str]:
    """The bf16 matrix/vector features (``amx_bf16``, ``avx512_bf16``) this CPU advertises.

    Read from the ``flags`` line of ``/proc/cpuinfo`` (or the given text); elsewhere (macOS,
    Windows) from torch's own CPU probes where it has them; empty when unknown.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return {f for f in line.split(":", 1)[-1].split() if f in ("amx_bf16", "avx512_bf16")}
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    cpu = getattr(torch._C, "_cpu", None)
    return {f for f, fn in probes.items() if cpu is not None and getattr(cpu, fn, lambda: False)()}


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matmuls beat fp32 on ``device``: CUDA with bf16, or a CPU with AMX /
    AVX-512 BF16 (without them, CPU bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags())
    return False


def compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of a ``TrainConfig.dtype`` on ``device`` (float32: no autocast)."""
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"dtype=bf16 but {device} has no bf16 support; use dtype=auto")
        return torch.bfloat16
    if dtype == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    raise ConfigError(f"dtype: {dtype!r} is not one of auto, fp32, bf16")


def _autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    """bf16 autocast on ``device`` (weights stay fp32), or a disabled context for float32."""
    enabled = dtype != torch.float32
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
    best: dict[str, Any] | None = None,
) -> None:
    """Write the resume state (safetensors + JSON) atomically, then point latest at it.

    ``model.safetensors`` gets the current weights only while no validation has selected a best
    checkpoint (``best`` is None); after that it holds the best (see ``fit``).
    """
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
        "best": best,
    }
    name = f"step-{step:08d}"
    sdir = out / STATE_DIR / name
    with atomic_path(sdir / "state.safetensors") as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp))
    write_json(sdir / "state.json", meta)
    if best is None:
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
) -> tuple[int, dict[str, Any] | None]:
    """Restore a run from ``out/train_state``; returns the step it had finished and its best."""
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
    return int(meta["step"]), meta.get("best")


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
    d = setup_dist(tcfg.device)
    if tcfg.batch_size < d.world:
        raise ConfigError(f"batch_size={tcfg.batch_size} is smaller than the {d.world} ranks")
    config = _run_config(bcfg, tcfg, preset, store, len(train_ids), len(val_ids))
    dataset = WindowDataset(store, train_ids, bcfg.window, tcfg.seed, tcfg.windows_per_model)
    kinds = _kinds(store, train_ids + val_ids)
    val = Evaluator(store, val_ids, bcfg.window, kinds) if val_ids else None
    train_eval = None
    if tcfg.train_eval_models > 0:
        scored = size_band_sample(  # every size band is scored, not only the first ids
            train_ids, [store.n_tokens(i) for i in train_ids], tcfg.train_eval_models
        )
        train_eval = Evaluator(store, scored, bcfg.window, kinds)
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
    """The training loop behind ``train`` (datasets and evaluators already built).

    After each validation, ``model.safetensors`` (and ``val_layers.jsonl``) are replaced when
    the median per-layer R^2 of conv and linear layers (``SELECT_METRIC``) beats the best so
    far; with ``patience`` > 0, training stops after that many validations without a new best.
    """
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
    if bcfg.skip:  # the linear path starts as the training tokens' PCA (resume overwrites it)
        model.init_skip_pca(_sample_tokens(dataset, tcfg.seed))
    step, best = _restore(out, config, resume, model, opt, sched, d)
    cdtype = compute_dtype(tcfg.dtype, d.device)
    stopped_early = False
    ddp = model
    if d.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    stream = Stream(dataset, tcfg.seed, tcfg.sample_alpha)
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
            with _autocast(d.device, cdtype):
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
            last_val, layers = _evaluate(model, val, train_eval, d, tcfg, step, metrics_path)
            cov = stream.coverage_summary(step * A * B)  # H16: fraction of tokens seen
            if d.main and cov:
                append_jsonl(metrics_path, [{"step": step, **cov}])
                stream.write_coverage(out / "coverage.jsonl", step * A * B, step)
            last_val = {**last_val, **cov}
            score = last_val.get(SELECT_METRIC)
            if score is not None:
                if best is None or score > best["value"]:
                    best = {"metric": SELECT_METRIC, "value": score, "step": step, "bad_evals": 0}
                    if d.main:
                        _save_best(out, model, config, best, layers)
                else:
                    best = {**best, "bad_evals": best["bad_evals"] + 1}
                    stopped_early = 0 < tcfg.patience <= best["bad_evals"]
                if d.main:
                    bar.set_postfix(
                        loss=f"{logged['loss']:.4f}",
                        sel=f"{score:.3f}",
                        best=f"{best['value']:.3f}",
                    )
        if step % tcfg.ckpt_every == 0 or step == steps or stopped_early:
            if d.main:
                save_checkpoint(out, model, opt, sched, step, config, d.device, best)
            d.barrier()
        if stopped_early:
            break
    bar.close()
    summary = {
        "out": str(out),
        "steps": step,
        **logged,
        **last_val,
        "seconds": time.time() - t0,
        "tokens_seen": seen_tokens,
        "dtype": str(cdtype).removeprefix("torch."),
        "best": best,
        "stopped_early": stopped_early,
    }
    if d.main and not last_val:
        rows = [r for r in read_jsonl(metrics_path) if "val_r2" in r or "train_r2" in r]
        summary.update({k: v for k, v in (rows[-1] if rows else {}).items() if k != "step"})
    return summary


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
    metrics = out / "metrics.jsonl"
    if resume and latest.exists():
        saved = read_json(out / STATE_DIR / read_json(latest)["dir"] / "state.json")["config"]
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


def _matmul_flops(
    device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int], repeat: int
) -> float:
    """Best FLOP/s of an (m, k) @ (k, n) matmul on ``device`` in ``dtype``."""
    m, k, n = shape
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * m * k * n / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_fn(
    bcfg: BackboneConfig, tcfg: TrainConfig, device: torch.device, dtype: torch.dtype, B: int
) -> Any:
    """One training step (two views, MLN + NT-Xent, backward, AdamW) on fixed random windows,
    as a closure for timing; the model is seeded, so every dtype starts from the same weights."""
    T, D = bcfg.window, bcfg.token_size
    torch.manual_seed(0)
    model = Backbone(bcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    x = torch.randn(B, T, D, device=device) * 0.1
    mask = torch.ones(B, T, D, dtype=torch.bool, device=device)
    pos = (
        torch.stack([torch.arange(T), torch.zeros(T, dtype=torch.long), torch.arange(T)], -1)
        .expand(B, T, 3)
        .to(device)
    )
    noise = 0.01 * torch.randn(B, T, D, device=device)

    def step() -> float:
        views = torch.cat([x, x + noise])
        with _autocast(device, dtype):
            _, recon, proj = model(views, torch.cat([pos, pos]), factored=True)
        s, n = reconstruction_terms(recon, torch.cat([x, x]), torch.cat([mask, mask]))
        p1, p2 = proj.float().chunk(2)
        loss = (1 - tcfg.gamma) * s / n + tcfg.gamma * nt_xent(p1, p2, tcfg.temperature)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    """Training throughput of a preset, fp32 path vs the default (``dtype=auto``) path.

    In one run on one device: the fp32 and bf16 matmul peaks (best of an n x n matmul; also
    the model's own MLP matmul shape), and tokens/s of a full training step (two views, forward
    + backward + AdamW) in fp32 and in the default dtype, all interleaved per repetition so
    that a busy machine slows each alike, best of ``--repeat``. Model FLOPs are counted
    analytically (``core.backbone.flops_per_token``); MFU is against the larger of the peaks. ``--n`` sets the windows per step (default: the preset's batch);
    ``--threads`` pins the intra-op threads (default: all cores). On CUDA, peak memory too.
    """
    preset = args.preset or "ci"
    bcfg, tcfg = build_configs(preset)
    device = torch.device(args.device)
    threads = getattr(args, "threads", None) or os.cpu_count() or 1
    if device.type == "cpu":
        torch.set_num_threads(threads)
    default = compute_dtype(tcfg.dtype, device)
    B = args.n or tcfg.batch_size
    T = bcfg.window
    tokens = 2 * B * T  # two views per window
    repeat = max(1, args.repeat)
    iters = 8 if device.type == "cuda" else 3
    n_mm = 8192 if device.type == "cuda" else 2048
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    # the MLP's first matmul as the model runs it: (tokens, C) @ (C, hidden)
    model_shape = (tokens, bcfg.d_model, int(bcfg.mlp_ratio * bcfg.d_model))
    peaks = dict.fromkeys(dtypes, 0.0)
    at_shape = dict.fromkeys(dtypes, 0.0)
    paths = {"fp32": torch.float32}
    if default != torch.float32:
        paths["default"] = default
    steps = {name: train_step_fn(bcfg, tcfg, device, dt, B) for name, dt in paths.items()}
    losses = {name: fn() for name, fn in steps.items()}  # warm-up (and a sanity value)
    best = dict.fromkeys(paths, float("inf"))
    peak_mem = {}
    for _ in range(repeat):  # peaks and steps interleaved: a busy machine slows all alike
        for name, dt in dtypes.items():
            peaks[name] = max(peaks[name], _matmul_flops(device, dt, (n_mm,) * 3, 1))
            at_shape[name] = max(at_shape[name], _matmul_flops(device, dt, model_shape, 1))
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            _sync(device)
            best[name] = min(best[name], (time.perf_counter() - t) / iters)
            if device.type == "cuda":
                peak_mem[name] = torch.cuda.max_memory_allocated(device) / 1e9
    if "default" not in paths:
        best["default"], losses["default"] = best["fp32"], losses["fp32"]
        peak_mem["default"] = peak_mem.get("fp32")
    flops_tok = flops_per_token(bcfg, T)
    peak = max(peaks.values())
    best_dtype = max(peaks, key=peaks.get)
    out: dict[str, Any] = {
        "preset": preset,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_bf16_flags": sorted(cpu_bf16_flags()) if device.type == "cpu" else None,
        "threads": torch.get_num_threads(),
        "default_dtype": "bf16-autocast" if default == torch.bfloat16 else "fp32",
        "params": sum(p.numel() for p in Backbone(bcfg).parameters()),
        "d_model": bcfg.d_model,
        "n_layers": bcfg.n_layers,
        "batch_windows": B,
        "window": T,
        "token_size": bcfg.token_size,
        "tokens_per_step": tokens,
        "gflops_per_token": flops_tok / 1e9,
        "matmul_n": n_mm,
        "fp32_matmul_tflops_per_s": peaks["fp32"] / 1e12,
        "bf16_matmul_tflops_per_s": peaks["bf16"] / 1e12,
        "best_dtype": best_dtype,
        "model_matmul_shape": list(model_shape),
        "fp32_model_shape_matmul_tflops_per_s": at_shape["fp32"] / 1e12,
        "bf16_model_shape_matmul_tflops_per_s": at_shape["bf16"] / 1e12,
        "repeat": repeat,
        "iters_per_repeat": iters,
    }
    for name in ("fp32", "default"):
        tps = tokens / best[name]
        out[name] = {
            "seconds_per_step": best[name],
            "tokens_per_s": tps,
            "model_tflops_per_s": flops_tok * tps / 1e12,
            "mfu": flops_tok * tps / peak,
            "mfu_vs_own_dtype_peak": flops_tok
            * tps
            / (peaks["fp32"] if name == "fp32" or default == torch.float32 else peaks["bf16"]),
            "first_loss": losses[name],
        }
        if device.type == "cuda":
            out[name]["peak_memory_gb"] = peak_mem.get(name)
    out["speedup_default_vs_fp32"] = out["default"]["tokens_per_s"] / out["fp32"]["tokens_per_s"]
    # flat keys of the default path (what earlier versions of this bench reported)
    out["tokens_per_s"] = out["default"]["tokens_per_s"]
    out["mfu"] = out["default"]["mfu"]
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


if __name__ == "__main__":
    sys.exit(main())
