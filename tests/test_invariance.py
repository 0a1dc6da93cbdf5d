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
