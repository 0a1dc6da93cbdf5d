"""Permutation ratios: permuted copies measured against the median inter-model distance."""

from __future__ import annotations

import pytest
from conftest import TINY, ci_backbone

import core.embeddings.invariance as inv
from core.embeddings.encode import EmbedConfig


@pytest.fixture(scope="module")
def tiny(atlas_factory):
    return atlas_factory(TINY, ci_backbone())


def test_ratios_per_family_and_zero_for_an_unchanged_copy(tiny, monkeypatch):
    """What the backbone learned (raw tokens): copies move; an unchanged copy stays at 0."""
    raw = EmbedConfig(canonical=False)
    out = inv.permutation_ratios(tiny, copies=2, cfg=raw)
    assert out["median_distance"] > 0 and out["models"] >= 3
    for fam in ("mlp", "cnn"):  # the tiny atlas' families, both with permutation views
        assert out[fam]["models"] >= 2 and 0 < out[fam]["median_ratio"] <= out[fam]["max_ratio"]
    # the measurement, not the permutation, is under test here: an unchanged copy is at 0
    monkeypatch.setattr(inv, "permute_tokens", lambda tokens, *a, **k: tokens)
    same = inv.permutation_ratios(tiny, cfg=raw)
    assert all(same[f]["max_ratio"] == pytest.approx(0.0, abs=1e-6) for f in ("mlp", "cnn"))


def test_canonical_embeddings_put_every_permuted_copy_on_its_original(tiny):
    """The atlas' embedding (canonical form, the default): copies land exactly on the original."""
    out = inv.permutation_ratios(tiny, copies=2, seed=3)
    for fam in ("mlp", "cnn"):
        assert out[fam]["models"] >= 2 and out[fam]["max_ratio"] == pytest.approx(0.0, abs=1e-6)


def test_without_canonical_form_the_embedding_figure_is_the_learned_one(tiny):
    """An atlas embedded on raw tokens: its embedding's ratio is what the backbone learned (one
    measurement, reported once), and the summary says there is no canonical form."""
    out = inv.permutation_invariance(tiny, cfg=EmbedConfig(canonical=False, pooling="mean"))
    assert out["canonical"] is False and out["pooling"] == "mean"
    assert out["embedding"] is out["learned"]
    assert all(out["learned"][f]["median_ratio"] > 0 for f in ("mlp", "cnn"))
    line = inv.permutation_summary(out)
    assert "no canonical form" in line and "(learned" not in line
    md = inv.permutation_markdown(out)
    m = out["learned"]["cnn"]["median_ratio"]
    assert f"| cnn | {m:.3f} | {m:.3f} |" in md and "without canonical form" in md


def test_one_pass_gives_both_forms_as_two_single_form_passes(tiny):
    """``permutation_invariance`` loads, reads and draws once for both forms: its figures are
    exactly those of measuring each form on its own with the same seed, and the learned ones
    are those the two-pass code (e463190) measured on this atlas (any thread count: rel 1e-6)."""
    cfg = EmbedConfig(canonical=True, pooling="depth-mean+std")
    out = inv.permutation_invariance(tiny, cfg=cfg, copies=2, seed=5)
    raw = EmbedConfig(canonical=False, pooling="depth-mean+std")
    assert out["learned"] == inv.permutation_ratios(tiny, copies=2, seed=5, cfg=raw)
    assert out["embedding"] == inv.permutation_ratios(tiny, copies=2, seed=5, cfg=cfg)
    learned = out["learned"]
    assert learned["median_distance"] == pytest.approx(22.872555881614513, rel=1e-6)
    assert out["embedding"]["median_distance"] == pytest.approx(21.05728270047642, rel=1e-6)
    pinned = {"cnn": (1.1802934116283614, 1.8110456139820392, 4),
              "mlp": (1.111978711962787, 1.2556277762875019, 8)}  # fmt: skip
    for fam, (median, top, n) in pinned.items():
        got = (learned[fam]["median_ratio"], learned[fam]["max_ratio"], learned[fam]["models"])
        assert got == pytest.approx((median, top, n), rel=1e-6)
        assert out["embedding"][fam] == {"median_ratio": 0.0, "max_ratio": 0.0, "models": n}
