"""Training losses of the backbone: reconstruction with loss normalization, NT-Xent, augmentations.

Paper 001 §3.2 (masked loss normalization, MLN) and paper 003 §2 (the composite loss
(1 - gamma) * rec + gamma * con, with NT-Xent between projections of two augmented views).

MLN (Eq. 1 of 001): each target token t is standardized with the mean and std of *its own real
(unmasked) values*, and its reconstruction t_hat with the *same* statistics of t:

    tau = (t - mean_t) / std_t        tau_hat = (t_hat - mean_t) / std_t

then the MSE between tau and tau_hat is taken over real values only, so padding changes
nothing. Modes:
    masked  MLN as above (the method)
    token   the same per-token standardization but over all D values, padding included, and
            the MSE over all values (the ablation)
    layer   layer-wise loss normalization (LWLN, SANE's baseline in 001 Table 1 and B.2.1): every
            value is standardized with the mean and std of *its layer over the training zoo*
            (``LayerStats``), the MSE over real values
    none    plain masked MSE in weight space (SANE, 003 Eq. 5)

Shapes: B windows, T tokens, D token size, P projection dim.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

LossNorm = Literal["masked", "token", "layer", "none"]
LOSS_NORMS: tuple[str, ...] = ("masked", "token", "layer", "none")


class Factored(NamedTuple):
    """A token_norm reconstruction: ``pattern * exp(log_scale) + shift``."""

    pattern: torch.Tensor  # (B, T, D) standardized values
    shift: torch.Tensor  # (B, T, 1) the token's mean
    log_scale: torch.Tensor  # (B, T, 1) natural log of the token's std

    def compose(self) -> torch.Tensor:
        """The reconstructed tokens (B, T, D)."""
        return self.pattern * torch.exp(self.log_scale.clamp(-20.0, 10.0)) + self.shift


def token_stats(
    target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token mean and std (B, T, 1) over the values where ``mask`` is True.

    ``std = sqrt(var + eps)`` so that constant tokens (zero biases, unit norm weights) get a
    finite scale. Tokens with no real value get mean 0 and std sqrt(eps).
    """
    m = mask.to(target.dtype)
    n = m.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (target * m).sum(-1, keepdim=True) / n
    var = (((target - mean) * m) ** 2).sum(-1, keepdim=True) / n
    return mean, (var + eps).sqrt()


def _counted(mask: torch.Tensor, norm: LossNorm) -> torch.Tensor:
    """Float (B, T, D) weights of the values a normalized loss counts and standardizes over."""
    if norm == "masked":
        return mask.float()
    if norm == "token":
        return torch.ones(mask.shape, device=mask.device)
    raise ValueError(f"unknown loss normalization {norm!r}; choose from {LOSS_NORMS}")


def reconstruction_terms(
    pred: torch.Tensor | Factored,
    target: torch.Tensor,
    mask: torch.Tensor,
    norm: LossNorm = "masked",
    eps: float = 1e-5,
    layer_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared (normalized) errors and the number of values it counts.

    Split into (sum, count) so that data-parallel ranks can divide by the global count.

    Args:
        pred: (B, T, D) reconstruction, or a token_norm backbone's ``Factored`` parts.
        target: (B, T, D) original tokens.
        mask: (B, T, D) bool, True on real values.
        norm: "masked" (MLN), "token" (padding included), "layer" (LWLN) or "none".
        eps: variance floor of the per-token standardization.
        layer_stats: for "layer": ``(mean, std)``, each (B, T, 1), of every token's layer
            (``LayerStats.window``).
    """
    if isinstance(pred, Factored):
        if norm in ("masked", "token"):
            return factored_terms(pred, target, mask, norm, eps)
        pred = pred.compose()
    pred, target = pred.float(), target.float()
    if norm == "none":
        m = mask.float()
        return (((pred - target) * m) ** 2).sum(), m.sum()
    if norm == "layer":
        if layer_stats is None:
            raise ValueError("loss_norm='layer' (LWLN) needs layer_stats (LayerStats.window)")
        mean, std = (t.float() for t in layer_stats)
        m = mask.float()
        err = ((pred - mean) / std - (target - mean) / std) * m
        return (err**2).sum(), m.sum()
    m = _counted(mask, norm)
    mean, std = token_stats(target, m.bool(), eps)
    err = ((pred - mean) / std - (target - mean) / std) * m
    return (err**2).sum(), m.sum()


def factored_terms(
    pred: Factored,
    target: torch.Tensor,
    mask: torch.Tensor,
    norm: LossNorm = "masked",
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLN for a reconstruction given as ``pattern * exp(log_scale) + shift`` (token_norm).

    With the target's own statistics in place of the predicted ones, MLN of the composed
    reconstruction is exactly the MSE between ``pattern`` and the standardized target. The
    predicted statistics are scored apart, per token: ``((shift - mean) / s)^2 +
    (log_scale - log std)^2``, with ``s = sqrt(std^2 + (0.1 mean)^2)`` (the std, floored at a
    tenth of the mean's magnitude), and that error is added to
    each of the token's counted values. Scoring them inside MLN instead lets a small error in
    the shift of a near-constant token (a norm weight at 1 +- 1e-3) dominate the loss, and the
    backbone then learns the statistics and not the pattern (measured on the demo zoo).

    Args:
        pred: ``Factored`` parts, (B, T, D) pattern and (B, T, 1) shift and log scale.
        target: (B, T, D) original tokens.
        mask: (B, T, D) bool, True on real values.
        norm: "masked" (statistics and loss over real values) or "token" (padding included).
        eps: variance floor of the per-token standardization.
    """
    target = target.float()
    m = _counted(mask, norm)
    mean, std = token_stats(target, m.bool(), eps)
    pattern_err = (pred.pattern.float() - (target - mean) / std) ** 2  # (B, T, D)
    s = (std**2 + (0.1 * mean) ** 2).sqrt()
    stats_err = ((pred.shift.float() - mean) / s) ** 2 + (pred.log_scale.float() - std.log()) ** 2
    return ((pattern_err + stats_err) * m).sum(), m.sum()


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    norm: LossNorm = "masked",
    eps: float = 1e-5,
    layer_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean squared (normalized) reconstruction error over the counted values; see module doc."""
    total, count = reconstruction_terms(pred, target, mask, norm, eps, layer_stats)
    return total / count.clamp_min(1.0)


class LayerStats:
    """Per-layer mean and std over a zoo: the normalization of LWLN (SANE; 001 B.2.1).

    A layer is keyed by its name and shape, so every model with that tensor (one architecture
    in a homogeneous zoo) shares its statistics, computed once over the real values of all
    ``ids`` (the training models). A layer no training model has (an unseen architecture)
    falls back to that model's own values.

        stats = LayerStats.from_store(store, train_ids)
        mean, std = stats.window(store, model_id, start, T)      # (T, 1) each
    """

    def __init__(self, table: dict[tuple[str, tuple[int, ...]], tuple[float, float]], eps: float):
        self.table = table
        self.eps = eps
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_store(cls, store: Any, ids: list[str], eps: float = 1e-5) -> LayerStats:
        """Mean and ``sqrt(var + eps)`` of every (layer name, shape) over the models ``ids``."""
        sums: dict[tuple[str, tuple[int, ...]], list[float]] = {}
        for mid in ids:
            tok = store.get(mid)
            values, mask = tok.tokens.double(), tok.mask
            for e in store.layers(mid):
                v = values[e.offset : e.offset + e.count][mask[e.offset : e.offset + e.count]]
                acc = sums.setdefault((e.name, tuple(e.shape)), [0.0, 0.0, 0.0])
                acc[0] += v.numel()
                acc[1] += float(v.sum())
                acc[2] += float((v * v).sum())
        table = {}
        for key, (n, s, s2) in sums.items():
            mean = s / max(n, 1.0)
            var = max(s2 / max(n, 1.0) - mean * mean, 0.0)
            table[key] = (mean, math.sqrt(var + eps))
        return cls(table, eps)

    def per_token(self, store: Any, model_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (N,), std (N,))`` of the layer of each of a model's N tokens."""
        if model_id not in self._cache:
            n = store.n_tokens(model_id)
            mean, std = torch.zeros(n), torch.ones(n)
            own = None
            for e in store.layers(model_id):
                stat = self.table.get((e.name, tuple(e.shape)))
                if stat is None:
                    own = own or store.get(model_id)
                    v = own.tokens[e.offset : e.offset + e.count]
                    v = v[own.mask[e.offset : e.offset + e.count]].double()
                    stat = (float(v.mean()), math.sqrt(float(v.var(unbiased=False)) + self.eps))
                mean[e.offset : e.offset + e.count] = stat[0]
                std[e.offset : e.offset + e.count] = stat[1]
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[model_id] = (mean, std)
        return self._cache[model_id]

    def window(
        self, store: Any, model_id: str, start: int, size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (size, 1), std (size, 1))`` for tokens ``[start, start + size)`` of a model,
        like ``TokenStore.window`` (past the end: mean 0, std 1; those tokens are masked)."""
        mean, std = self.per_token(store, model_id)
        m, s = torch.zeros(size, 1), torch.ones(size, 1)
        part = slice(start, min(start + size, len(mean)))
        k = part.stop - part.start
        if k > 0:
            m[:k, 0] = mean[part]
            s[:k, 0] = std[part]
        return m, s


def nt_xent(p1: torch.Tensor, p2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent (SimCLR) between two views: row i of ``p1`` and of ``p2`` (B, P) are positives.

    Each of the 2B projections is classified against the other 2B - 1 by cosine similarity.
    """
    B = p1.shape[0]
    p = F.normalize(torch.cat([p1, p2]).float(), dim=-1)  # (2B, P)
    logits = p @ p.T / temperature  # (2B, 2B)
    logits = logits.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=p.device), -torch.inf)
    targets = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(p.device)
    return F.cross_entropy(logits, targets)


def combined_loss(rec: torch.Tensor, con: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - gamma) * rec + gamma * con (003 §2)."""
    return (1.0 - gamma) * rec + gamma * con


def augment(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    noise: float,
    mask_frac: float,
    normal: torch.Tensor,
    uniform: torch.Tensor,
    multiplicative: bool = False,
) -> torch.Tensor:
    """One augmented view: Gaussian noise and random masking of real values.

    Additive noise is scaled by each token's own std (of its real values), so that layers of
    any magnitude are perturbed alike; multiplicative noise scales every value by
    ``1 + noise * N(0, 1)`` (003's noise: relative to the value itself). Masking zeroes a
    random ``mask_frac`` of the real values. Padding stays zero. Function-preserving
    permutations are the other view's business (``core.backbone.views``). The random draws are
    passed in, so that the caller decides what they depend on.

    Args:
        tokens: (B, T, D) clean tokens.
        mask: (B, T, D) bool, True on real values.
        noise: noise std relative to the token std.
        mask_frac: fraction of real values set to zero.
        normal: (B, T, D) standard normal draws.
        uniform: (B, T, D) uniform [0, 1) draws.
        multiplicative: multiplicative noise instead of additive.
    """
    keep = (uniform >= mask_frac) & mask
    if multiplicative:
        view = tokens * (1.0 + noise * normal.to(tokens.dtype))
        return view * keep.to(tokens.dtype)
    _, std = token_stats(tokens.float(), mask, eps=0.0)
    view = tokens + noise * std.to(tokens.dtype) * normal.to(tokens.dtype)
    return view * keep.to(tokens.dtype)


class R2Meter:
    """Coefficient of determination 1 - SSE / SST over real values, overall and per group.

    Accumulates float64 sums so that R^2 over many batches equals R^2 over the concatenation;
    each group's SST is taken about that group's own mean.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # group -> [n, sum y, sum y^2, sse]

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        groups: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Add a batch. ``groups`` maps a name to a (B, T) bool selecting its tokens."""
        y, yhat = target.double(), pred.double()
        m = mask.double()
        selections = {"all": torch.ones(mask.shape[:-1], dtype=torch.bool, device=mask.device)}
        selections.update(groups or {})
        for name, sel in selections.items():
            w = m * sel.unsqueeze(-1).double()
            row = torch.stack(
                [w.sum(), (w * y).sum(), (w * y * y).sum(), (w * (y - yhat) ** 2).sum()]
            ).cpu()
            self.sums[name] = self.sums.get(name, torch.zeros(4, dtype=torch.float64)) + row

    def compute(self) -> dict[str, float]:
        """R^2 per group ('all' overall); groups with no variance are left out."""
        out = {}
        for name, (n, s, s2, sse) in self.sums.items():
            sst = s2 - s * s / n.clamp_min(1.0)
            if n > 0 and sst > 0:
                out[name] = float(1.0 - sse / sst)
        return out
