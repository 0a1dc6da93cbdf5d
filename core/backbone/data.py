"""Training data: the stream of token windows the backbone trains on, drawn by token count."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atlas import (
    append_jsonl,
)
from core.config import ConfigError
from core.tokens.store import mix_seeds

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

            span = np.maximum(self.n_tokens[models] - self.ds.ws + 1, 1)
            mix = np.array([mix_seeds(self.seed, epoch, j) for j in range(m_rows)], dtype=np.uint64)
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
        lstats = getattr(self.ds, "layer_stats", None)  # LWLN (loss_norm="layer"): H15
        for i in indices:
            if self.by_tokens:
                m, start = self.window_of(i)
                items.append(self.ds.store.window(self.ids[m], start, self.ds.ws))
                if lstats is not None:
                    mean, std = lstats.window(self.ds.store, self.ids[m], start, self.ds.ws)
                    items[-1].update(layer_mean=mean, layer_std=std)
                continue
            epoch, j = divmod(i, len(self.ds))
            self.ds.set_epoch(epoch)
            items.append(self.ds[int(self.order(epoch)[j])])
        keys = ["tokens", "mask", "positions"]
        keys += ["layer_mean", "layer_std"] if lstats is not None else []
        return {k: torch.stack([it[k] for it in items]) for k in keys}

    def second_rows(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The second contrastive view of each row (``dataset.views``, a
        ``core.backbone.views.ViewMaker``): clean tokens, mask and positions as ``rows``."""
        views = self.ds.views
        lstats = getattr(self.ds, "layer_stats", None)
        items = []
        for i in indices:
            m, start = self.window_of(i)
            w = views.window(i, self.ids[m], start)
            if lstats is not None:
                mean, std = lstats.window(self.ds.store, self.ids[m], int(w["start"]), self.ds.ws)
                w.update(layer_mean=mean, layer_std=std)
            items.append(w)
        keys = ["tokens", "mask", "positions"]
        keys += ["layer_mean", "layer_std"] if lstats is not None else []
        return {k: torch.stack([it[k] for it in items]) for k in keys}

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


def pin_memory_of(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
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
