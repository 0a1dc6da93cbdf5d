"""Validation during training: pooled and per-layer R² and std ratios on held-out models."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.backbone.config import TrainConfig
from core.backbone.data import SELECT_KINDS, _median, layer_table, pin_memory_of
from core.backbone.device import Dist, autocast, compute_dtype
from core.backbone.losses import R2Meter, reconstruction_terms
from core.backbone.model import (
    Backbone,
)


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
        self.layer_stats: Any = None  # core.backbone.losses.LayerStats for loss_norm="layer"
        # core.backbone.selection.knn_labels of ``ids``: also score the pooled embeddings
        self.knn_labels: dict[str, list[Any]] | None = None
        self.layers: list[tuple[str, str, str]] = []  # (model id, layer name, kind)
        self._first: dict[str, int] = {}
        for m in ids:
            self._first[m] = len(self.layers)
            self.layers += [(m, e.name, e.kind) for e in store.layers(m)]
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.chunks = [(m, s) for m in ids for s in range(0, store.n_tokens(m), window)]
        self.fast = True  # cached windows and per-kind sums from per-layer sums (``run``)
        self.cache_bytes = 1 << 30  # keep the windows between runs when they need at most this
        self._windows: list[dict[str, Any]] = []
        self._windows_key: tuple[Any, ...] | None = None

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

    def _knn(self, zsums: torch.Tensor, d: Dist, tcfg: TrainConfig) -> dict[str, Any]:
        """The selection's k-NN figures of the pooled embeddings (``core.backbone.selection``)."""
        from core.backbone.selection import knn_figures, pooled_from_sums

        assert self.knn_labels is not None
        zsums = d.all_sum(zsums)
        owner = torch.tensor([self.ids.index(m) for m, _, _ in self.layers], dtype=torch.long)
        vectors = pooled_from_sums(zsums[:-1], owner, len(self.ids))
        return knn_figures(vectors, self.knn_labels, tcfg.select_k)

    def _read_batch(self, part: list[tuple[str, int]], device: torch.device) -> dict[str, Any]:
        """The stacked windows of ``part`` (chunks) on ``device``: tokens, mask, positions,
        kind and layer ids (padding tokens' layer id points at the padding row)."""
        ws = [self.store.window(m, s, self.window) for m, s in part]
        lid = torch.stack([self.layer_ids(m, s) for m, s in part])
        return {
            "x": pin_memory_of(torch.stack([w["tokens"] for w in ws]), device),
            "mask": pin_memory_of(torch.stack([w["mask"] for w in ws]), device),
            "pos": pin_memory_of(torch.stack([w["positions"] for w in ws]), device),
            "kid": pin_memory_of(torch.stack([self.kind_ids(m, s) for m, s in part]), device),
            "lid": torch.where(lid < 0, len(self.layers), lid),
            "part": part,
        }

    def _batches(self, model: Backbone, d: Dist, batch: int) -> tuple[list[dict[str, Any]], bool]:
        """The rank's windows in batches of ``batch``, read once and kept (with their position
        code for ``model``'s width) when they fit ``cache_bytes``, else read on each call.

        Returns:
            (the batches, whether they hold the position code ``code``).
        """
        mine = self.chunks[d.rank :: d.world]
        starts = range(0, len(mine), batch)
        C = model.cfg.d_model
        per_window = self.window * (self.store.token_size * 5 + 3 * 8 + 16 + 4 * C)
        if len(mine) * per_window > self.cache_bytes:
            return [self._read_batch(mine[b : b + batch], d.device) for b in starts], False
        key = (d.rank, d.world, batch, str(d.device), C, model.cfg.pos_base)
        if self._windows_key != key:
            from core.backbone.model import sinusoidal_3d

            self._windows = [self._read_batch(mine[b : b + batch], d.device) for b in starts]
            for bt in self._windows:  # the code each encode / decode call would compute
                bt["code"] = sinusoidal_3d(bt["pos"], C, model.cfg.pos_base)
            self._windows_key = key
        return self._windows, True

    @torch.no_grad()
    def run(
        self,
        model: Backbone,
        d: Dist,
        batch: int,
        tcfg: TrainConfig,
        with_layers: bool = False,
    ) -> dict[str, Any]:
        """Score the models; ``with_layers`` also returns the per-layer rows under ``layers``.

        With ``fast`` (the default) the windows and their position code are read once and
        kept between calls (``cache_bytes``), and the pooled R^2 sums per layer kind are
        added up from the per-layer sums instead of a second pass over the values
        (``R2Meter``); ``fast=False`` is the reference path (``tests/test_train.py`` checks that
        both agree, ``weightatlas bench train`` times both)."""
        rec = torch.zeros(2, dtype=torch.float64)
        meter = R2Meter()
        lstats = torch.zeros(len(self.layers) + 1, 6, dtype=torch.float64)  # last row: padding
        cdtype = compute_dtype(tcfg.dtype, d.device)
        # per layer: tokens, sum z, sum z^2 (the k-NN selection's pooled embeddings)
        zsums = torch.zeros(len(self.layers) + 1, 1 + 2 * model.cfg.latent_dim, dtype=torch.float64)
        if self.fast:
            batches, coded = self._batches(model, d, batch)
        else:
            mine = self.chunks[d.rank :: d.world]
            parts = (mine[b : b + batch] for b in range(0, len(mine), batch))
            batches, coded = (self._read_batch(p, d.device) for p in parts), False
        for bt in batches:
            part, x, mask, pos, lid = bt["part"], bt["x"], bt["mask"], bt["pos"], bt["lid"]
            code = bt["code"] if coded else None
            with autocast(d.device, cdtype):
                z = model.encode(x, pos, code)
                pred = model.decode(z, pos, code).float()
            if not self.fast:
                kid = bt["kid"]
                meter.update(pred, x, mask, {k: kid == i for i, k in enumerate(self.kinds)})
            ls = None
            if self.layer_stats is not None:  # LWLN
                pairs = [self.layer_stats.window(self.store, m, s, self.window) for m, s in part]
                ls = tuple(pin_memory_of(torch.stack(t), d.device) for t in zip(*pairs))
            s, n = reconstruction_terms(pred, x, mask, tcfg.loss_norm, tcfg.mln_eps, ls)
            rec += torch.stack([s.double().cpu(), n.double().cpu()])
            y, p, w = x.double().cpu(), pred.double().cpu(), mask.double().cpu()
            per_tok = torch.stack(
                [w, w * y, w * y * y, w * p, w * p * p, w * (y - p) ** 2], -1
            ).sum(2)  # (b, T, 6)
            lstats.index_add_(0, lid.flatten(), per_tok.flatten(0, 1))
            if self.knn_labels is not None:
                zd = z.detach().double().cpu().flatten(0, 1)  # (b T, L)
                feats = torch.cat([torch.ones(len(zd), 1, dtype=torch.float64), zd, zd * zd], 1)
                zsums.index_add_(0, lid.flatten(), feats)
        names = ["all", *self.kinds]
        if self.fast:  # [n, sum y, sum y^2, sse] of every kind from its layers' sums
            meter.sums = self._kind_sums(lstats)
        sums = torch.stack([meter.sums.get(k, torch.zeros(4, dtype=torch.float64)) for k in names])
        sums, rec, lstats = d.all_sum(sums), d.all_sum(rec), d.all_sum(lstats)
        meter.sums = dict(zip(names, sums, strict=True))
        r2 = meter.compute()
        lr2, lratio = layer_table(lstats[:-1].cpu())
        by_kind_r2, by_kind_ratio = self._by_kind(lr2.tolist(), lratio.tolist())
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
        if self.knn_labels is not None:
            out.update(self._knn(zsums, d, tcfg))
            rec_score = out["layer_r2_median_conv_linear"]
            if rec_score is not None:  # models without family/task labels: reconstruction only
                out["select_score"] = rec_score + tcfg.select_weight * (out.get("knn") or 0.0)
        if with_layers:
            out["layers"] = self._layer_rows(lstats[:-1].tolist(), lr2.tolist(), lratio.tolist())
        return out

    def _kind_sums(self, lstats: torch.Tensor) -> dict[str, torch.Tensor]:
        """``R2Meter`` sums (n, sum y, sum y^2, sse) overall and per kind from per-layer sums
        (the padding row holds tokens of no layer: counted in ``all`` only, as R2Meter does)."""
        cols = lstats[:, [0, 1, 2, 5]]
        out = {"all": cols.sum(0)}
        kind_of = torch.tensor([self.kinds.index(k) for _, _, k in self.layers], dtype=torch.long)
        per_kind = torch.zeros(len(self.kinds), 4, dtype=torch.float64)
        per_kind.index_add_(0, kind_of, cols[:-1])
        n_layers = torch.bincount(kind_of, minlength=len(self.kinds))
        for i, k in enumerate(self.kinds):
            if n_layers[i] > 0:
                out[k] = per_kind[i]
        return out

    def _by_kind(
        self, lr2: list[float], lratio: list[float]
    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Per layer kind, its layers' R² and std ratios (in layer order)."""
        by_kind_r2: dict[str, list[float]] = {}
        by_kind_ratio: dict[str, list[float]] = {}
        for (_, _, kind), a, c in zip(self.layers, lr2, lratio, strict=True):
            by_kind_r2.setdefault(kind, []).append(a)
            by_kind_ratio.setdefault(kind, []).append(c)
        return by_kind_r2, by_kind_ratio

    def _layer_rows(
        self, lstats: list[list[float]], lr2: list[float], lratio: list[float]
    ) -> list[dict[str, Any]]:
        """One row per validated layer: model, layer, kind, values, R² and std ratio (None
        where undefined)."""
        return [
            {
                "model": m,
                "layer": name,
                "kind": kind,
                "values": int(st[0]),
                "r2": None if a != a else a,
                "std_ratio": None if c != c else c,
            }
            for (m, name, kind), st, a, c in zip(self.layers, lstats, lr2, lratio, strict=True)
        ]
