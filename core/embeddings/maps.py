"""2-D maps of the embeddings (PCA and UMAP)."""

from __future__ import annotations

import os

import numpy as np

from core.embeddings.encode import _UMAP_LOCK, EmbedConfig

# 2-D maps


def fit_pca(z: np.ndarray, n_components: int = 2) -> dict[str, np.ndarray]:
    """PCA as plain arrays: ``mean (L,)``, ``components (2, L)``, ``explained_variance_ratio``."""
    mean = z.mean(0)
    x = z - mean
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:n_components]
    # sign convention: largest-|loading| entry of each component positive (deterministic)
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None]
    var = s**2
    ratio = var[:n_components] / var.sum() if var.sum() > 0 else np.zeros(n_components)
    if len(comps) < n_components:  # fewer models than components: pad with zero axes
        comps = np.vstack([comps, np.zeros((n_components - len(comps), z.shape[1]))])
        ratio = np.concatenate([ratio, np.zeros(n_components - len(ratio))])
    return {"mean": mean, "components": comps, "explained_variance_ratio": ratio}


def fit_umap(z: np.ndarray, cfg: EmbedConfig) -> np.ndarray:
    """UMAP 2-D coordinates with a fixed seed; PCA coordinates when there are too few models.

    The neighbourhood graph uses ``cfg.neighbour_metric`` (``zscore``: Euclidean on the
    standardized embeddings), the metric of the neighbour lists.
    """
    m = len(z)
    if m < 4:
        return fit_pca(z)["components"].dot((z - z.mean(0)).T).T
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    with _UMAP_LOCK:
        import umap

        if cfg.neighbour_metric == "zscore":
            z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-12)
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(cfg.umap_neighbors, m - 1),
            min_dist=cfg.umap_min_dist,
            metric="cosine" if cfg.neighbour_metric == "cosine" else "euclidean",
            random_state=cfg.seed,
            init="spectral" if m > 10 else "random",
            n_jobs=1,
        )
        return np.asarray(reducer.fit_transform(z), dtype=np.float64)


def fit_maps(
    z: np.ndarray, cfg: EmbedConfig
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """2-D maps of ``z (M, L)`` and the pickle-free arrays that place new points on them."""
    pca = fit_pca(z)
    coords_pca = (z - pca["mean"]) @ pca["components"].T
    coords_umap = fit_umap(z, cfg)
    reducers = {
        "pca": pca,
        "umap": {
            "train_z": z,
            "coords": coords_umap,
            "n_neighbors": np.array([cfg.map_neighbors]),
        },
    }
    return {"pca": coords_pca, "umap": coords_umap}, reducers
