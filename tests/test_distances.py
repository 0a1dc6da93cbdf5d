"""core.embeddings.distances: kNN distances to the atlas and their percentiles."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("metric", ["zscore", "cosine"])
def test_atlas_distance_percentiles(metric):
    from core.embeddings.distances import distance_percentile, knn_distance, loo_knn_distances

    rng = np.random.default_rng(0)
    centre = rng.normal(size=32)
    z = centre + 0.3 * rng.normal(size=(200, 32))
    loo = loo_knn_distances(z, 5, metric)
    inside = [centre + 0.3 * rng.normal(size=32) for _ in range(20)]
    far = rng.normal(size=32)
    assert distance_percentile(loo, knn_distance(z, far, 5, metric=metric)) > 99
    pct = [distance_percentile(loo, knn_distance(z, v, 5, metric=metric)) for v in inside]
    assert max(pct) < 99 and 20 < np.median(pct) < 80  # same population: spread, not outside
    # leave-one-out: an atlas model's own row is skipped
    assert knn_distance(z, z[7], 5, skip=7, metric=metric) == pytest.approx(loo[7])
