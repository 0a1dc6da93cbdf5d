"""core.trees.recover: the parent rule that recovers model trees from fingerprint distances."""

from __future__ import annotations

import numpy as np
import pytest

from core.trees.fingerprints import Fingerprint
from core.trees.recover import continues, recover


def _fp(w: np.ndarray) -> Fingerprint:
    """A fingerprint of two 2,048-value tensors (the halves of ``w``)."""
    fp = Fingerprint()
    for k, part in enumerate(np.split(w.astype(np.float32), 2)):
        key = (f"layer{k}.weight", (32, 64))
        centred = part - part.mean()
        fp.samples[key] = part
        fp.norms[key] = float(np.linalg.norm(part))
        fp.kurtosis[key] = float((centred**4).mean() / (centred**2).mean() ** 2)
    return fp


def _delta(
    rng: np.random.Generator, size: float, along: np.ndarray | None = None, cos: float = 0.0
):
    """A random delta of norm ``size`` (relative to a unit root) at cosine ``cos`` to ``along``."""
    d = rng.standard_normal(4096)
    if along is not None:
        u = along / np.linalg.norm(along)
        d -= (d @ u) * u
        d = cos * u * np.linalg.norm(d) / np.sqrt(1 - cos**2) + d
    return d / np.linalg.norm(d) * size * 64.0


def test_parent_rule_descends_to_a_grandchilds_parent_but_not_to_a_barely_moved_sibling():
    rng = np.random.default_rng(0)
    root = rng.standard_normal(4096)  # norm 64: deltas below are relative to it
    # a grandchild within the tie band of the root (|e| = 1.5 |d|: 1.20x farther from the root
    # than from its parent) continues its parent's delta (t = 1, cos = 0.55): it goes under it
    d = _delta(rng, 0.2)
    child, grandchild = root + d, root + d + _delta(rng, 0.3)
    fps = [_fp(root), _fp(child), _fp(grandchild)]
    t, cos = continues(fps[0], fps[1], fps[2])
    assert t == pytest.approx(1.0, abs=0.05) and 0.5 < cos < 0.6
    rec = recover(fps)
    assert rec.parents == [[], [0], [1]] and len(set(rec.tree)) == 1
    # without the descent (the shallowest model inside the tie band) it went under the root
    assert recover(fps, tie_band=0.25, descend_t=9.0).parents[2] == [0]
    # a sibling that barely moved (|s| = 0.3 |d_c|) along the child's training direction
    # (cos 0.35) is nearer than the root and t = 1.2 >= 0.5, but the cosine says sibling
    s = _delta(rng, 0.06)
    dc = _delta(rng, 0.2, along=s, cos=0.35)
    fps = [_fp(root), _fp(root + s), _fp(root + dc)]
    t, cos = continues(fps[0], fps[1], fps[2])
    assert t > 1.0 and cos < 0.4
    assert recover(fps).parents == [[], [0], [0]]
    assert recover(fps, descend_cos=-1.0).parents[2] == [1]  # t alone takes the sibling
