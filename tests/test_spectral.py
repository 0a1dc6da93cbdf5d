"""core.embeddings.spectral: power-law fits of layer spectra."""

from __future__ import annotations

import numpy as np
import torch

from core.embeddings.spectral import layer_spectra, power_law_fit


def test_power_law_fit_recovers_alpha():
    rng = np.random.default_rng(0)
    x = rng.pareto(2.0, 3000) + 1.0  # density ~ x^-3
    alpha, xmin, ks = power_law_fit(x)
    assert abs(alpha - 3.0) < 0.15 and ks < 0.05 and xmin >= 1.0


def test_layer_spectra_skips_vectors_and_orders_by_depth():
    g = torch.Generator().manual_seed(0)
    sd = {
        "a.weight": torch.randn(64, 32, generator=g),
        "a.bias": torch.randn(64, generator=g),
        "b.weight": torch.randn(8, 3, 3, 3, generator=g),
        "c.weight": torch.randn(4, 4, generator=g),
    }
    rows = layer_spectra(sd)
    assert [r["name"] for r in rows] == ["a.weight", "b.weight", "c.weight"]
    assert rows[0]["n_evals"] == 32 and rows[0]["alpha"] is not None
    assert rows[2]["alpha"] is None  # 4 eigenvalues: too few to fit
    lam = torch.linalg.svdvals(sd["a.weight"].double()).max().item() ** 2
    assert abs(rows[0]["log_spectral_norm"] - np.log10(lam)) < 1e-9
