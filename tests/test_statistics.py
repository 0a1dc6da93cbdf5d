"""core.embeddings.statistics: the s(W) weight statistics and their depth pooling."""

from __future__ import annotations

import numpy as np
import torch

from core.embeddings.statistics import DEPTH_BINS, STAT_NAMES, weight_statistics


def test_weight_statistics_fixed_length_and_values():
    from core.tokens.plan import tokenize_state_dict

    torch.manual_seed(0)
    shallow = {"a.weight": torch.randn(8, 4), "a.bias": torch.randn(8)}
    deep = {f"l{i}.weight": torch.randn(16, 16) * (i + 1) for i in range(7)}
    feats = []
    for sd in (shallow, deep):
        tok = tokenize_state_dict(sd, "dense", 16)
        feats.append(weight_statistics(tok.tokens, tok.mask, tok.positions))
    assert feats[0].shape == feats[1].shape == ((DEPTH_BINS + 1) * len(STAT_NAMES),)
    # whole-model statistics: the last block, computed from the real values only
    allv = torch.cat([v.flatten() for v in shallow.values()]).double().numpy()
    np.testing.assert_allclose(feats[0][-7:-5], [allv.mean(), allv.std()], rtol=1e-6)
    np.testing.assert_allclose(feats[0][-5:], np.quantile(allv, [0, 0.25, 0.5, 0.75, 1]), rtol=1e-6)
    # depth bins of the deep model: std grows with depth as the weights were scaled
    stds = feats[1][1 : DEPTH_BINS * 7 : 7]
    assert np.all(np.diff(stds) > 0)


def test_depth_pooling_bins_layers_like_s_of_w():
    from core.embeddings.statistics import DEPTH_BINS, depth_pooled

    layer_z = np.arange(16, dtype=np.float64).reshape(8, 2)  # 8 layers, 2 dims
    overall = np.array([-1.0, -1.0])
    got = depth_pooled(layer_z, overall).reshape(DEPTH_BINS + 1, 2)
    assert np.array_equal(got[:DEPTH_BINS], layer_z.reshape(DEPTH_BINS, 2, 2).mean(1))
    assert np.array_equal(got[-1], overall)
    # a model with fewer layers than bins fills the empty bins with its overall vector
    few = depth_pooled(layer_z[:2], overall).reshape(DEPTH_BINS + 1, 2)
    assert sum(np.array_equal(row, overall) for row in few[:DEPTH_BINS]) == DEPTH_BINS - 2
