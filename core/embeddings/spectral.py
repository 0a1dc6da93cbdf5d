"""WeightWatcher-style spectral metrics of layer weight matrices (Martin et al., 2021).

For each weight matrix ``W`` (conv kernels reshaped to ``(out, in * kh * kw)``) the empirical
spectral density is the set of eigenvalues ``λ = σ²`` of ``WᵀW`` (``σ`` the singular values).
Its tail is fitted with a power law ``p(λ) ∝ λ^-α`` by maximum likelihood, with ``λ_min``
chosen to minimise the Kolmogorov-Smirnov distance (Clauset, Shalizi & Newman, 2009), as the
``powerlaw`` package that WeightWatcher uses does. Also reported: ``log10 λ_max`` (the log
spectral norm) and the weighted alpha ``α · log10 λ_max``.

    rows = layer_spectra(state_dict)      # one dict per 2-D+ weight, in state-dict order
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MIN_EVALS = 10  # fewer eigenvalues than this: no power-law fit (alpha is None)
MIN_TAIL = 5  # smallest tail the fit may use


def power_law_fit(evals: np.ndarray, min_tail: int = MIN_TAIL) -> tuple[float, float, float]:
    """Fit ``p(x) ∝ x^-alpha`` to the tail of ``evals`` (positive values).

    Args:
        evals: eigenvalues (any order); non-positive values are dropped.
        min_tail: the fewest points a tail may have.

    Returns:
        ``(alpha, xmin, ks_distance)`` for the ``xmin`` with the smallest KS distance.

    Raises:
        ValueError: fewer than ``min_tail`` positive values.
    """
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > 0]
    n = len(x)
    if n < min_tail:
        raise ValueError(f"{n} positive eigenvalues; need at least {min_tail}")
    logs = np.log(x)
    # suffix sums of log x: sum_{j >= i} log x_j
    suffix = np.cumsum(logs[::-1])[::-1]
    best = (np.nan, np.nan, np.inf)
    for i in range(n - min_tail + 1):
        xmin = x[i]
        if i > 0 and xmin == x[i - 1]:
            continue
        m = n - i
        denom = suffix[i] - m * logs[i]
        if denom <= 0:
            continue
        alpha = 1.0 + m / denom
        tail = x[i:]
        fit = 1.0 - (tail / xmin) ** (1.0 - alpha)
        emp_hi = np.arange(1, m + 1) / m
        emp_lo = np.arange(0, m) / m
        d = float(max(np.max(np.abs(emp_hi - fit)), np.max(np.abs(emp_lo - fit))))
        if d < best[2]:
            best = (float(alpha), float(xmin), d)
    if not np.isfinite(best[2]):
        raise ValueError("no power-law tail could be fitted (all eigenvalues equal)")
    return best


def matrix_of(tensor: torch.Tensor) -> np.ndarray | None:
    """A weight as a 2-D float64 matrix ``(out, rest)``, or None for vectors and scalars."""
    if tensor.ndim < 2 or not torch.is_floating_point(tensor):
        return None
    return tensor.detach().reshape(tensor.shape[0], -1).double().cpu().numpy()


def matrix_spectrum(w: np.ndarray) -> dict[str, Any]:
    """Spectral metrics of one matrix: alpha, xmin, KS distance, log spectral norm, weighted alpha."""
    sv = np.linalg.svd(w, compute_uv=False)
    evals = sv**2
    n = int((evals > 0).sum())
    lam_max = float(evals.max()) if len(evals) else 0.0
    out: dict[str, Any] = {
        "n_evals": n,
        "log_spectral_norm": float(np.log10(lam_max)) if lam_max > 0 else None,
        "alpha": None,
        "xmin": None,
        "ks_distance": None,
        "alpha_weighted": None,
    }
    if n >= MIN_EVALS:
        alpha, xmin, d = power_law_fit(evals)
        out.update(alpha=alpha, xmin=xmin, ks_distance=d)
        if out["log_spectral_norm"] is not None:
            out["alpha_weighted"] = alpha * out["log_spectral_norm"]
    return out


def layer_spectra(state_dict: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Spectral metrics of every weight matrix (2-D or more) of a state dict, in its order.

    Returns:
        One dict per matrix: ``name, shape, depth`` (index among matrices) and the keys of
        :func:`matrix_spectrum`; ``alpha`` is None where the matrix has fewer than
        ``MIN_EVALS`` non-zero eigenvalues.
    """
    rows = []
    for name, tensor in state_dict.items():
        w = matrix_of(tensor)
        if w is None:
            continue
        rows.append(
            {"name": name, "shape": list(tensor.shape), "depth": len(rows), **matrix_spectrum(w)}
        )
    return rows
