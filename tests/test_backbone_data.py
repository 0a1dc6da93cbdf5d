"""core.backbone.data (core/cli/data.py shares the stem): the window stream, size bands, layer tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.atlas import Atlas
from core.backbone.data import Stream, layer_table, size_band_sample
from core.bench import write_store
from core.tokens.schemes import Tokenized
from core.tokens.store import TokenStore, WindowDataset
from core.tokens.tokenize import merge_index


def _store(tmp_path: Path, sizes: dict[str, int], d: int = 4) -> TokenStore:
    models = {}
    for mid, n in sizes.items():
        models[mid] = Tokenized(
            tokens=torch.randn(n, d),
            valid=torch.full((n,), d, dtype=torch.int32),
            positions=torch.stack(
                [torch.arange(n), torch.zeros(n, dtype=torch.long), torch.arange(n)], 1
            ),
            layers=[],
            scheme="dense",
            token_size=d,
        )
    write_store(tmp_path / "tokens", models, "dense", d)

    (tmp_path / "atlas.json").write_text("{}")
    merge_index(Atlas.open(tmp_path))
    return TokenStore(tmp_path / "tokens")


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_window_sampling_gives_each_model_its_documented_share(tmp_path, alpha):
    sizes = {"tiny0": 40, "tiny1": 60, "mid": 700, "big": 20_000}
    store = _store(tmp_path, sizes)
    ids = list(sizes)
    ds = WindowDataset(store, ids, 16, seed=3, windows_per_model=5)
    stream = Stream(ds, seed=3, alpha=alpha)
    n = np.array([sizes[i] for i in ids], float)
    want = n**alpha / (n**alpha).sum()  # the documented share
    epochs = 400
    counts = np.zeros(len(ids))
    for e in range(epochs):
        models, starts = stream.epoch_plan(e)
        counts += np.bincount(models, minlength=len(ids))
        assert (starts >= 0).all() and (starts <= np.maximum(n[models] - 16, 0)).all()
    share = counts / counts.sum()
    assert np.allclose(share, want, atol=0.01, rtol=0.02), (share, want)
    if alpha == 0.0:  # uniform per model: every model exactly windows_per_model times
        assert (counts == epochs * 5).all()


def test_window_starts_cover_each_model_and_coverage_is_reported(tmp_path):
    sizes = {"tiny": 30, "big": 5_000}
    store = _store(tmp_path, sizes)
    ds = WindowDataset(store, list(sizes), 16, seed=0)
    cov = {}
    for alpha in (0.0, 1.0):
        s = Stream(ds, seed=0, alpha=alpha)
        cov[alpha] = s.coverage(400)
        summ = s.coverage_summary(400)
        assert summ["coverage_band_1e1"] == pytest.approx(cov[alpha]["tiny"])
        assert summ["coverage_band_1e3"] == pytest.approx(cov[alpha]["big"])
        rows = s.rows([0, 1, 399])
        assert rows["tokens"].shape == (3, 16, 4)
    assert cov[0.0]["tiny"] == 1.0  # 30 tokens, window 16: seen entirely
    # 400 rows: the big model gets ~200 windows at alpha 0, ~398 at alpha 1
    assert cov[1.0]["big"] > 1.4 * cov[0.0]["big"]
    # coverage replays the stream: a second stream agrees row for row
    assert Stream(ds, seed=0, alpha=1.0).coverage(400) == cov[1.0]


def test_size_band_sample_spans_bands():
    ids = [f"s{i}" for i in range(10)] + ["m0", "b0"]
    toks = [50] * 10 + [5_000, 500_000]
    got = size_band_sample(ids, toks, 3)
    assert set(got) == {"b0", "m0", "s0"}


def test_layer_table_matches_numpy_per_layer_r2_and_std_ratio():
    rng = np.random.default_rng(0)
    ys = [rng.normal(size=50), rng.normal(1.0, 1e-3, size=20), np.full(5, 2.0)]
    ps = [y + rng.normal(scale=0.3, size=y.size) for y in ys]
    stats = torch.tensor(
        [
            [y.size, y.sum(), (y * y).sum(), p.sum(), (p * p).sum(), ((y - p) ** 2).sum()]
            for y, p in zip(ys, ps)
        ],
        dtype=torch.float64,
    )
    r2, ratio = layer_table(stats)
    for i in (0, 1):
        y, p = ys[i], ps[i]
        assert float(r2[i]) == pytest.approx(
            1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-6
        )
        assert float(ratio[i]) == pytest.approx(p.std() / y.std(), rel=1e-6)
    assert torch.isnan(r2[2]) and torch.isnan(ratio[2])  # a constant layer has no R^2
