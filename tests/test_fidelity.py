"""core.embeddings.fidelity: the Wasserstein-1 distance and the per-layer reconstruction report."""

from __future__ import annotations

import numpy as np
import pytest

from core.atlas import Atlas
from core.embeddings.fidelity import wasserstein1


def test_wasserstein1_matches_scipy():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(0.3, 2.0, size=500)
    assert wasserstein1(a, b) == pytest.approx(wasserstein_distance(a, b), rel=1e-9)


def test_layer_report_records(probe_atlas):
    from core.embeddings.fidelity import layer_report
    from core.tokens.store import TokenStore

    store = TokenStore(Atlas(probe_atlas).tokens_dir)
    mid = next(i for i in store.ids if "cnn" in i)
    recs = layer_report(probe_atlas, mid, max_values=50)
    layers = store.layers(mid)
    assert [r["name"] for r in recs] == [e.name for e in layers]
    for r, e in zip(recs, layers):
        assert r["shape"] == list(e.shape) and r["n_values"] == int(np.prod(e.shape))
        assert len(r["original"]) == min(50, r["n_values"]) == len(r["reconstructed"])
        assert r["mse"] >= 0 and (r["w1_over_std"] is None or r["w1_over_std"] >= 0)
        if r["n_values"] <= 50 and r["r2"] is not None:  # metrics agree with the returned values
            o, x = np.array(r["original"]), np.array(r["reconstructed"])
            assert r["mse"] == pytest.approx(np.mean((o - x) ** 2), rel=1e-6)
            assert r["r2"] == pytest.approx(1 - r["mse"] / o.var(), rel=1e-6)
    # original values are the model's real weights (evenly subsampled)
    from core.tokens.plan import detokenize

    sd = detokenize(store.get(mid).tokens, layers)
    w = sd[layers[0].name].flatten().double().numpy()
    idx = np.linspace(0, w.size - 1, min(50, w.size)).round().astype(int)
    np.testing.assert_allclose(recs[0]["original"], w[idx], rtol=1e-6)
