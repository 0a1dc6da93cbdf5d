"""Embeddings: encode every model with haloing, per-layer spreads, 2-D maps, retrieval.

    weightatlas embed ATLAS                       # all accepted models -> ATLAS/embeddings/
    weightatlas embed ATLAS --model PATH_OR_ID    # one new model: vector, map position, neighbours
    torchrun --nproc_per_node 4 -m core.cli embed ATLAS   # sharded by rank, then merged

Haloing (003 §2): a model's token sequence is cut into content chunks of ``window - 2*halo``
tokens; each chunk is encoded inside a window of ``window`` tokens with ``halo`` tokens of
context before and after (shifted inward at the ends of the sequence), and the context is
dropped after encoding. A model that fits in one window is encoded in one pass.

Per-model embedding = mean over its tokens (003 §2). Per-layer embedding = mean over the
layer's tokens, and the layer's spread ẑ_l = std over its tokens (003 §4, eq. 8), averaged over
latent dimensions to one scalar per layer.

Outputs (``ATLAS/embeddings/``): ``models.safetensors`` (``z (M, L)``, ``layer_z (S, L)``,
``layer_spread (S,)`` with S = total layers), ``models.jsonl`` (row i describes ``z[i]``),
``layers.jsonl`` (row j describes ``layer_z[j]``), ``maps.json`` (PCA and UMAP 2-D coordinates
per id), ``reducers/pca.safetensors`` (mean and components) and ``reducers/umap.safetensors``
(the embedding table and its fitted 2-D coordinates). New points are placed on the UMAP map
from their neighbours in embedding space (inverse-distance weighted mean of the map positions
of the ``n_neighbors`` nearest collected models, the same initialisation umap-learn's own
``transform`` starts from), so no fitted UMAP object is ever pickled or unpickled.

Work is split into fixed chunks of models; rank r embeds chunks r, r + world_size, ... into
``embeddings/parts/`` (keyed by the backbone's fingerprint), and any rank that finds every part
present merges them, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from core.atlas import Atlas, append_jsonl, atomic_path, read_json, read_jsonl, write_json
from core.config import add_overrides_arg, build_config, parse_overrides, to_dict
from core.errors import WeightAtlasError

# Shapes: N tokens of one model, D token size, L latent dim, T window length, K sequences
# decoded together, M embedded models, S layers over all models.

_UMAP_LOCK = threading.Lock()  # umap/numba are not re-entrant inside a threaded server


@dataclass
class EmbedConfig:
    """How models are encoded and mapped.

    ``window`` None: the backbone's training window. ``halo`` None: ``window // 8`` (the
    paper's 64 context tokens on 512-token windows).
    """

    window: int | None = None
    halo: int | None = None
    batch_size: int = 256  # windows per backbone call
    chunk_models: int = 64
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    map_neighbors: int = 5
    distance_k: int = 5  # atlas distance: mean distance to this many nearest atlas models
    # atlas distance metric: "zscore" (Euclidean on embeddings standardized per latent dim by
    # the atlas' mean and std) or "cosine" (the neighbour lists' metric; ignores norms)
    distance_metric: str = "zscore"
    seed: int = 0
    device: str = "cpu"


EMBED_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(chunk_models=32, umap_neighbors=8),
    "demo": dict(chunk_models=64, umap_neighbors=15),
    "paper-small": dict(window=512, halo=64, batch_size=64, chunk_models=16),
    "paper-large": dict(window=512, halo=64, batch_size=64, chunk_models=16),
}


# ---------------------------------------------------------------------------------------------
# haloing


def halo_windows(n: int, window: int, halo: int) -> list[tuple[int, int, int]]:
    """Cut a sequence of ``n`` tokens into haloed windows.

    Returns:
        ``(window_start, content_start, content_end)`` per window: the encoder sees tokens
        ``[window_start, window_start + min(window, n))`` and keeps ``[content_start,
        content_end)``. Content ranges tile ``[0, n)`` exactly once.
    """
    if n <= 0:
        return []
    if n <= window:
        return [(0, 0, n)]
    content = window - 2 * halo
    if content < 1:
        raise WeightAtlasError(f"halo {halo} leaves no content in a window of {window} tokens")
    out = []
    for s in range(0, n, content):
        e = min(s + content, n)
        ws = min(max(s - halo, 0), n - window)
        out.append((ws, s, e))
    return out


@torch.no_grad()
def haloed_apply(
    fn: Any,
    x: torch.Tensor,
    positions: torch.Tensor,
    window: int,
    halo: int,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Apply a sequence map ``fn(x (B,T,F), positions (B,T,3)) -> (B,T,G)`` with haloing.

    Args:
        fn: ``backbone.encode`` or ``backbone.decode``.
        x: ``(N, F)`` one sequence or ``(K, N, F)`` several sequences sharing ``positions``.
        positions: ``(N, 3)`` positions of the sequence.
        window: tokens per encoder pass (context included).
        halo: context tokens kept before and after each content chunk, dropped afterwards.
        batch_size: windows per call of ``fn``.
        progress: show a tqdm bar over batches.

    Returns:
        ``(N, G)`` or ``(K, N, G)``, the content of every window stitched back in order.
    """
    single = x.dim() == 2
    xs = x[None] if single else x  # (K, N, F)
    k, n, _ = xs.shape
    wins = halo_windows(n, window, halo)
    t = min(window, n)
    jobs = [(i, w) for i in range(k) for w in wins]  # (sequence, window)
    out: torch.Tensor | None = None
    batches = range(0, len(jobs), batch_size)
    for b in tqdm(batches, desc="windows", unit="batch", disable=not progress, leave=False):
        chunk = jobs[b : b + batch_size]
        xb = torch.stack([xs[i, ws : ws + t] for i, (ws, _, _) in chunk])  # (B, T, F)
        pb = torch.stack([positions[ws : ws + t] for _, (ws, _, _) in chunk])  # (B, T, 3)
        yb = fn(xb, pb)  # (B, T, G)
        if out is None:
            out = yb.new_empty((k, n, yb.shape[-1]))
        for j, (i, (ws, s, e)) in enumerate(chunk):
            out[i, s:e] = yb[j, s - ws : e - ws]
    assert out is not None
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------
# backbone and token access


def resolve_window(cfg: EmbedConfig, backbone: Any) -> tuple[int, int]:
    """``(window, halo)`` from the config, defaulting to the backbone's training window."""
    window = cfg.window if cfg.window is not None else int(backbone.cfg.window)
    halo = cfg.halo if cfg.halo is not None else window // 8
    if window - 2 * halo < 1:
        raise WeightAtlasError(f"halo {halo} too large for window {window}")
    return window, halo


def _masked_tokens(tok: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (N, D) float32 with padding zeroed, positions (N, 3) long)``."""
    tokens = torch.as_tensor(tok.tokens, dtype=torch.float32)
    mask = torch.as_tensor(tok.mask, dtype=torch.bool)
    return tokens.masked_fill(~mask, 0.0), torch.as_tensor(tok.positions, dtype=torch.long)


def encode_tokens(
    backbone: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    cfg: EmbedConfig,
) -> torch.Tensor:
    """Haloed token embeddings ``z (N, L)`` of one model's tokens ``(N, D)``."""
    window, halo = resolve_window(cfg, backbone)
    dev = torch.device(cfg.device)
    z = haloed_apply(
        backbone.encode, tokens.to(dev), positions.to(dev), window, halo, cfg.batch_size
    )
    return z.float().cpu()


def summarize(z: torch.Tensor, positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model mean, per-layer means and spreads from token embeddings.

    Args:
        z: ``(N, L)`` token embeddings.
        positions: ``(N, 3)`` ``[n, l, k]``; tokens with equal ``l`` belong to one layer.

    Returns:
        ``z (L,)``, ``layer_index (S,)`` (the ``l`` values in order), ``layer_z (S, L)``,
        ``layer_spread (S,)`` (std over the layer's tokens, mean over latent dims; 0 for a
        one-token layer), ``layer_tokens (S,)``.
    """
    layer_ids, inverse, counts = torch.unique(
        positions[:, 1], return_inverse=True, return_counts=True
    )
    s, dim = len(layer_ids), z.shape[1]
    sums = torch.zeros(s, dim, dtype=torch.float64).index_add_(0, inverse, z.double())
    means = sums / counts[:, None]
    sq = torch.zeros(s, dim, dtype=torch.float64).index_add_(
        0, inverse, (z.double() - means[inverse]) ** 2
    )
    denom = (counts - 1).clamp(min=1)[:, None]
    spread = torch.where(counts[:, None] > 1, (sq / denom).sqrt(), torch.zeros_like(sq)).mean(1)
    return {
        "z": z.double().mean(0).float(),
        "layer_index": layer_ids,
        "layer_z": means.float(),
        "layer_spread": spread.float(),
        "layer_tokens": counts,
    }


def backbone_fingerprint(backbone_dir: Path) -> str:
    """Short sha256 of the backbone weights, so stale parts are never merged."""
    h = hashlib.sha256()
    with open(backbone_dir / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _load_backbone(atlas: Atlas, backbone_dir: str | Path | None, device: str) -> Any:
    from core.backbone import load_backbone

    src = Path(backbone_dir) if backbone_dir is not None else atlas.backbone_dir
    if not (src / "model.safetensors").exists():
        raise WeightAtlasError(f"no trained backbone in {src}; run `weightatlas train` first")
    return load_backbone(src).to(device).eval()


# ---------------------------------------------------------------------------------------------
# the stage


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    r = int(os.environ.get("RANK", 0)) if rank is None else rank
    w = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= r < w:
        raise WeightAtlasError(f"rank {r} is not in [0, {w})")
    return r, w


def embed(
    atlas: str | Path,
    *,
    preset: str | None = "ci",
    halo: int | None = None,
    window: int | None = None,
    batch_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    backbone_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Embed every tokenized model of the atlas and write ``ATLAS/embeddings/``.

    Args:
        atlas: the atlas directory (tokenized, with a trained backbone).
        preset: an ``EMBED_PRESETS`` name.
        halo: context tokens on each side of a window (overrides the preset).
        window: tokens per encoder pass (overrides the preset; default the backbone's).
        batch_size: windows per encoder call.
        rank: this worker's rank (default ``$RANK`` or 0).
        world_size: number of workers (default ``$WORLD_SIZE`` or 1).
        backbone_dir: another backbone (e.g. an ablation in ``ATLAS/backbones/NAME``); its
            embeddings go to ``BACKBONE/embeddings`` instead of ``ATLAS/embeddings``.
        overrides: other ``EmbedConfig`` fields.

    Returns:
        The embeddings directory (complete once every rank's parts exist).
    """
    from core.store import TokenStore

    a = Atlas.open(atlas)
    extra = {
        k: v
        for k, v in dict(halo=halo, window=window, batch_size=batch_size).items()
        if v is not None
    }
    cfg = build_config(EmbedConfig, EMBED_PRESETS, preset, overrides={**(overrides or {}), **extra})
    r, w = _rank_world(rank, world_size)
    bdir = Path(backbone_dir) if backbone_dir is not None else a.backbone_dir
    out = embeddings_dir(a, backbone_dir)
    backbone = _load_backbone(a, bdir, cfg.device)
    fp = backbone_fingerprint(bdir)
    if not (a.tokens_dir / "index.json").exists():
        raise WeightAtlasError(f"{a.root} has no token store; run `weightatlas tokenize` first")
    store = TokenStore(a.tokens_dir)
    dups = {r["id"] for r in a.manifest() if r.get("duplicate_of")}
    ids = sorted(i for i in store.ids if i not in dups)  # a duplicate is its original's point
    if not ids:
        raise WeightAtlasError(f"{a.root}: the token store holds no models")
    chunks = [ids[i : i + cfg.chunk_models] for i in range(0, len(ids), cfg.chunk_models)]
    window_, halo_ = resolve_window(cfg, backbone)
    plan = f"{fp}\n{cfg.chunk_models}\n{window_}\n{halo_}\n" + "\n".join(ids)
    parts = out / "parts" / hashlib.sha256(plan.encode()).hexdigest()[:16]  # stale parts never mix
    mine = [c for c in range(len(chunks)) if c % w == r]
    for c in tqdm(mine, desc=f"embed rank {r}/{w}", unit="chunk"):
        path = parts / f"part-{c:05d}.safetensors"
        if path.exists():
            continue
        tensors: dict[str, torch.Tensor] = {}
        zs, lz, ls, lidx, ltok, ntok = [], [], [], [], [], []
        for mid in chunks[c]:
            tokens, positions = _masked_tokens(store.get(mid))
            summ = summarize(encode_tokens(backbone, tokens, positions, cfg), positions)
            zs.append(summ["z"])
            lz.append(summ["layer_z"])
            ls.append(summ["layer_spread"])
            lidx.append(summ["layer_index"])
            ltok.append(summ["layer_tokens"])
            ntok.append(len(tokens))
        tensors["z"] = torch.stack(zs)
        tensors["layer_z"] = torch.cat(lz)
        tensors["layer_spread"] = torch.cat(ls)
        tensors["layer_index"] = torch.cat(lidx).long()
        tensors["layer_tokens"] = torch.cat(ltok).long()
        tensors["layer_count"] = torch.tensor([len(x) for x in lidx], dtype=torch.long)
        tensors["n_tokens"] = torch.tensor(ntok, dtype=torch.long)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"ids": "\n".join(chunks[c]), "backbone": fp})
    if all((parts / f"part-{c:05d}.safetensors").exists() for c in range(len(chunks))):
        _merge(a, out, parts, chunks, store, cfg, fp)
        if w == 1:  # alone: nobody else may still read the parts
            shutil.rmtree(out / "parts", ignore_errors=True)
    return out


def embeddings_dir(atlas: Atlas, backbone_dir: str | Path | None = None) -> Path:
    """Where embeddings of the atlas' main backbone (or of another backbone) are written."""
    if backbone_dir is None or Path(backbone_dir).resolve() == atlas.backbone_dir.resolve():
        return atlas.embeddings_dir
    return Path(backbone_dir) / "embeddings"


def _merge(
    a: Atlas,
    out: Path,
    parts: Path,
    chunks: list[list[str]],
    store: Any,
    cfg: EmbedConfig,
    fp: str,
) -> None:
    """Concatenate the parts, write the tables, fit PCA/UMAP and the maps."""
    from core.tokenize import copies_of

    manifest = {row["id"]: row for row in a.manifest()}
    copies = copies_of(manifest.values())
    z, layer_z, layer_spread, model_rows, layer_rows = [], [], [], [], []
    n_layer_rows = 0
    for c, ids in enumerate(chunks):
        with safe_open(str(parts / f"part-{c:05d}.safetensors"), "pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        z.append(t["z"])
        layer_z.append(t["layer_z"])
        layer_spread.append(t["layer_spread"])
        off = 0
        for i, mid in enumerate(ids):
            cnt = int(t["layer_count"][i])
            first = n_layer_rows + off
            row = manifest.get(mid, {})
            model_rows.append(
                {
                    "id": mid,
                    "row": len(model_rows),
                    "family": row.get("family"),
                    "architecture": row.get("architecture"),
                    "library": row.get("library"),
                    "split": row.get("split"),
                    "params": row.get("params"),
                    "labels": row.get("labels") or {},
                    "metrics": row.get("metrics") or {},
                    "n_tokens": int(t["n_tokens"][i]),
                    "layer_rows": [first, first + cnt],
                    "copies": 1 + len(copies.get(mid, [])),
                    "duplicates": copies.get(mid, []),
                }
            )
            names = {e.layer: e.name for e in store.layers(mid)}
            for j in range(cnt):
                lid = int(t["layer_index"][off + j])
                layer_rows.append(
                    {
                        "id": mid,
                        "row": first + j,
                        "layer": lid,
                        "name": names.get(lid, str(lid)),
                        "n_tokens": int(t["layer_tokens"][off + j]),
                        "spread": float(t["layer_spread"][off + j]),
                    }
                )
            off += cnt
        n_layer_rows += off
    tensors = {
        "z": torch.cat(z).contiguous(),
        "layer_z": torch.cat(layer_z).contiguous(),
        "layer_spread": torch.cat(layer_spread).contiguous(),
    }
    zm = tensors["z"].double().numpy()
    groups = reference_groups(a, [r["id"] for r in model_rows])
    loo = loo_knn_distances(zm, cfg.distance_k, cfg.distance_metric, groups)
    for r, dist in zip(model_rows, loo, strict=True):
        r["atlas_distance"] = float(dist)
        r["atlas_percentile"] = distance_percentile(loo, float(dist))
    maps, reducers = fit_maps(zm, cfg)
    rdir = out / "reducers"
    for name, arrays in reducers.items():
        with atomic_path(rdir / f"{name}.safetensors") as tmp:
            save_file(
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(tmp)
            )
    ids = [r["id"] for r in model_rows]
    with atomic_path(out / "models.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"backbone": fp})
    for name, rows in (("models.jsonl", model_rows), ("layers.jsonl", layer_rows)):
        tmp_path = out / f".{name}.new"
        tmp_path.unlink(missing_ok=True)
        append_jsonl(tmp_path, rows)
        os.replace(tmp_path, out / name)
    write_json(
        out / "maps.json",
        {
            "ids": ids,
            "pca": {i: maps["pca"][k].tolist() for k, i in enumerate(ids)},
            "umap": {i: maps["umap"][k].tolist() for k, i in enumerate(ids)},
        },
    )
    write_json(
        out / "info.json",
        {
            "backbone": fp,
            "n_models": len(ids),
            "latent_dim": int(tensors["z"].shape[1]),
            "pca_explained_variance_ratio": reducers["pca"]["explained_variance_ratio"].tolist(),
            "umap_placement": "inverse-distance weighted mean of the n_neighbors nearest maps",
            "atlas_distance": {
                "k": cfg.distance_k,
                "metric": cfg.distance_metric,
                "calibration": "leave-one-run-out (core.embed.reference_groups)",
            },
            "config": to_dict(cfg),
        },
    )


# ---------------------------------------------------------------------------------------------
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
    """UMAP 2-D coordinates with a fixed seed; PCA coordinates when there are too few models."""
    m = len(z)
    if m < 4:
        return fit_pca(z)["components"].dot((z - z.mean(0)).T).T
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    with _UMAP_LOCK:
        import umap

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(cfg.umap_neighbors, m - 1),
            min_dist=cfg.umap_min_dist,
            metric="cosine",
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


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise WeightAtlasError(f"{path} is missing; run `weightatlas embed` first")
    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def cosine_distances(z: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``1 - cos(z_i, v)`` for every row of ``z (M, L)``."""
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    vn = v / max(float(np.linalg.norm(v)), 1e-12)
    return 1.0 - zn @ vn


OUTSIDE_PERCENTILE = 99.0
OUTSIDE_MEANING = (
    "outside the atlas: farther from its nearest atlas models than 99% of the atlas' own models "
    "are from theirs; its map position (a weighted mean of its neighbours' positions) and its "
    "neighbours say little, since nothing like it was collected"
)


DISTANCE_METRICS = ("zscore", "cosine")


def pairwise_distances(z: np.ndarray, v: np.ndarray, metric: str, ref: np.ndarray) -> np.ndarray:
    """Distances ``(M, K)`` between rows of ``z (M, L)`` and ``v (K, L)``.

    ``zscore``: Euclidean after standardizing every latent dimension by the mean and std of
    ``ref`` (the atlas); ``cosine``: ``1 - cos``.
    """
    if metric == "cosine":
        zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return 1.0 - zn @ vn.T
    if metric != "zscore":
        raise WeightAtlasError(
            f"unknown distance metric {metric!r}; choose from {DISTANCE_METRICS}"
        )
    mu, sd = ref.mean(0), np.maximum(ref.std(0), 1e-12)
    a, b = (z - mu) / sd, (v - mu) / sd
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def knn_distance(
    z: np.ndarray, v: np.ndarray, k: int, skip: int | None = None, metric: str = "zscore"
) -> float:
    """Mean distance from ``v`` to its ``k`` nearest rows of ``z`` (row ``skip`` left out)."""
    d = pairwise_distances(z, np.asarray(v, np.float64).reshape(1, -1), metric, z)[:, 0]
    if skip is not None:
        d = np.delete(d, skip)
    if len(d) == 0:
        return float("nan")
    k = max(1, min(k, len(d)))
    return float(np.partition(d, k - 1)[:k].mean())


def loo_knn_distances(
    z: np.ndarray, k: int, metric: str = "zscore", groups: list[str] | None = None
) -> np.ndarray:
    """Each atlas model's leave-one-out k-NN distance: mean distance to its ``k`` nearest
    other atlas models. ``z (M, L)`` -> ``(M,)``.

    ``groups`` (one key per row, e.g. the training run): leave the whole group out, so that a
    checkpoint's siblings of the same run do not make the atlas look tighter than it is to a
    newcomer (a new run of a known kind has no sibling in the atlas).
    """
    m = len(z)
    if m < 2:
        return np.zeros(m)
    k = max(1, min(k, m - 1))
    g = np.unique(np.asarray(groups, dtype=object), return_inverse=True)[1] if groups else None
    out = np.empty(m)
    for lo in range(0, m, 1024):  # blocks of rows: memory 1024 x M, not M x M
        hi = min(lo + 1024, m)
        d = pairwise_distances(z[lo:hi], z, metric, z)
        d[np.arange(hi - lo), np.arange(lo, hi)] = np.inf
        if g is not None:
            d[g[lo:hi, None] == g[None, :]] = np.inf
        near = np.partition(d, k - 1, axis=1)[:, :k]
        finite = np.isfinite(near)
        out[lo:hi] = np.where(finite, near, 0.0).sum(1) / np.maximum(finite.sum(1), 1)
    return out


def reference_groups(atlas: Atlas, ids: list[str]) -> list[str]:
    """The leave-out group of each atlas model: its training run (``core.hub.run_key``: zoo
    checkpoints of one run), else its base model, else itself."""
    from core.hub import run_key

    rows = {r["id"]: r for r in atlas.manifest()}
    out = []
    for i in ids:
        row = rows.get(i, {})
        key = run_key(i, row.get("labels") or {})
        if key == i and isinstance(row.get("base_model"), str):
            key = f"base:{row['base_model']}"
        out.append(key)
    return out


def distance_percentile(loo: np.ndarray, dist: float) -> float:
    """Percent of the atlas models whose own (leave-one-out) k-NN distance is below ``dist``."""
    if len(loo) == 0:
        return float("nan")
    return float(100.0 * (np.asarray(loo) < dist).mean())


def model_architecture(path: str | Path) -> tuple[str, str]:
    """``(library, model_type)`` of a model folder, read from its ``config.json`` the way the
    collector reads it (regular file, size and depth limits; remote code is refused)."""
    from core.architectures import library_of, model_type_of
    from core.hub import read_model_config, snapshot_root

    path = Path(path)
    config = read_model_config(path, snapshot_root(path))
    return library_of(config), model_type_of(config)


def architecture_in_atlas(
    atlas: str | Path, architecture: tuple[str, str], ids: list[str] | None = None
) -> dict[str, Any]:
    """Whether the atlas holds a model of the same architecture (library and ``model_type``,
    as in the manifest).

    Args:
        atlas: an atlas directory.
        architecture: ``(library, model_type)``, e.g. from :func:`model_architecture`.
        ids: the reference models (default: every accepted manifest row).

    Returns:
        ``{architecture, architecture_in_atlas, architecture_count, architecture_note}``.
    """
    a = Atlas.open(atlas)
    rows = {r["id"]: r for r in a.manifest() if r.get("status") == "accepted"}
    keep = set(ids) if ids is not None else set(rows)
    library, model_type = architecture
    count = sum(
        1
        for i, r in rows.items()
        if i in keep and r.get("library") == library and r.get("model_type") == model_type
    )
    name = f"{library}/{model_type}"
    note = (
        f"{count} atlas model(s) share its architecture ({name})"
        if count
        else f"no model of this architecture ({name}) is in the atlas; its position on the map "
        "is an extrapolation"
    )
    return {
        "architecture": name,
        "architecture_in_atlas": count > 0,
        "architecture_count": count,
        "architecture_note": note,
    }


def atlas_distance(
    atlas: str | Path,
    vector: np.ndarray | torch.Tensor,
    backbone_dir: str | Path | None = None,
    k: int | None = None,
    metric: str | None = None,
    architecture: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """How far a new (embedded or generated) model is from the atlas.

    ``distance`` is the mean distance from ``vector`` to its ``k`` nearest atlas models
    (``metric``: ``EmbedConfig.distance_metric``, default ``zscore``); ``percentile`` ranks it
    among the atlas models' own leave-one-out k-NN distances (a model's whole training run left
    out: ``reference_groups``). Above the 99th percentile the model is ``outside`` the atlas
    (see ``OUTSIDE_MEANING``). With ``architecture`` (``(library, model_type)``), it also says
    whether any embedded atlas model has that architecture (:func:`architecture_in_atlas`), a
    separate statement from the distance.

    Returns:
        ``{distance, percentile, outside, k, atlas_p99, atlas_max, meaning}``, plus
        ``architecture*`` keys when ``architecture`` is given.
    """
    a = Atlas.open(atlas)
    out = embeddings_dir(a, backbone_dir)
    z = _read_tensors(out / "models.safetensors")["z"].astype(np.float64)
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.shape[0] != z.shape[1]:
        raise WeightAtlasError(f"vector has {v.shape[0]} dims, embeddings have {z.shape[1]}")
    info = read_json(out / "info.json") if (out / "info.json").exists() else {}
    if k is None:
        k = int(info.get("config", {}).get("distance_k", EmbedConfig.distance_k))
    if metric is None:
        metric = str(info.get("config", {}).get("distance_metric", EmbedConfig.distance_metric))
    rows = list(read_jsonl(out / "models.jsonl"))
    stored = info.get("atlas_distance", {})
    if (
        stored.get("k") == k
        and stored.get("metric") == metric
        and len(rows) == len(z)
        and all("atlas_distance" in r for r in rows)
    ):  # computed by `embed` (leave-one-run-out), in row order
        loo = np.array([r["atlas_distance"] for r in sorted(rows, key=lambda r: r["row"])])
    else:  # embeddings written before atlas distances existed
        groups = reference_groups(a, [r["id"] for r in rows]) if len(rows) == len(z) else None
        loo = loo_knn_distances(z, k, metric, groups)
    dist = knn_distance(z, v, k, metric=metric)
    pct = distance_percentile(loo, dist)
    outside = bool(pct > OUTSIDE_PERCENTILE)
    return {
        "distance": dist,
        "percentile": pct,
        "outside": outside,
        "k": int(min(k, len(z))),
        "metric": metric,
        "atlas_p99": float(np.percentile(loo, OUTSIDE_PERCENTILE)) if len(loo) else None,
        "atlas_max": float(loo.max()) if len(loo) else None,
        "meaning": OUTSIDE_MEANING if outside else "inside the atlas",
        **(
            architecture_in_atlas(a.root, architecture, [r["id"] for r in rows])
            if architecture is not None
            else {}
        ),
    }


def place_on_map(
    atlas: str | Path, vector: np.ndarray | torch.Tensor, backbone_dir: str | Path | None = None
) -> dict[str, list[float]]:
    """Place an embedding ``(L,)`` on the atlas' existing PCA and UMAP maps without refitting.

    PCA applies the stored mean and components. UMAP takes the inverse-distance weighted mean
    of the map positions of the nearest collected models (cosine distance in embedding space).
    """
    a = Atlas.open(atlas)
    rdir = embeddings_dir(a, backbone_dir) / "reducers"
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    pca = _read_tensors(rdir / "pca.safetensors")
    if v.shape[0] != pca["mean"].shape[0]:
        raise WeightAtlasError(
            f"vector has {v.shape[0]} dims, the map expects {pca['mean'].shape[0]}"
        )
    xy_pca = (v - pca["mean"]) @ pca["components"].T
    um = _read_tensors(rdir / "umap.safetensors")
    d = cosine_distances(um["train_z"], v)
    k = int(min(int(um["n_neighbors"][0]), len(d)))
    nn_idx = np.argsort(d, kind="stable")[:k]
    wts = 1.0 / np.maximum(d[nn_idx], 1e-9)
    xy_umap = (wts[:, None] * um["coords"][nn_idx]).sum(0) / wts.sum()
    return {"pca": xy_pca.tolist(), "umap": xy_umap.tolist()}


# ---------------------------------------------------------------------------------------------
# loading tables, retrieval, single models


@dataclass
class Embeddings:
    """The embedding tables of an atlas."""

    z: np.ndarray  # (M, L)
    layer_z: np.ndarray  # (S, L)
    layer_spread: np.ndarray  # (S,)
    models: list[dict[str, Any]]
    layers: list[dict[str, Any]]

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.models]

    def vector(self, model_id: str) -> np.ndarray:
        """The embedding of one collected model."""
        for r in self.models:
            if r["id"] == model_id:
                return self.z[r["row"]]
        raise WeightAtlasError(f"{model_id!r} is not in the atlas' embeddings")


def load_embeddings(atlas: str | Path, backbone_dir: str | Path | None = None) -> Embeddings:
    """Read ``ATLAS/embeddings/`` (or another backbone's embeddings)."""
    a = Atlas.open(atlas)
    out = embeddings_dir(a, backbone_dir)
    t = _read_tensors(out / "models.safetensors")
    return Embeddings(
        z=t["z"],
        layer_z=t["layer_z"],
        layer_spread=t["layer_spread"],
        models=list(read_jsonl(out / "models.jsonl")),
        layers=list(read_jsonl(out / "layers.jsonl")),
    )


def embed_state_dict(
    atlas: str | Path,
    state_dict: dict[str, torch.Tensor],
    trainable: set[str] | None = None,
    *,
    backbone: Any = None,
    cfg: EmbedConfig | None = None,
) -> dict[str, Any]:
    """Tokenize a state dict with the atlas' scheme and embed it (same path as collected models)."""
    from core.tokenize import tokenize_state_dict

    a = Atlas.open(atlas)
    cfg = cfg or build_config(EmbedConfig, EMBED_PRESETS, "ci")
    scheme, size = token_scheme(a)
    tok = tokenize_state_dict(state_dict, scheme, size, trainable=trainable)
    backbone = backbone if backbone is not None else _load_backbone(a, None, cfg.device)
    tokens, positions = _masked_tokens(tok)
    summ = summarize(encode_tokens(backbone, tokens, positions, cfg), positions)
    return {**summ, "layers": tok.layers}


def token_scheme(a: Atlas) -> tuple[str, int]:
    """The atlas' token scheme and token size (from the token store index)."""
    path = a.tokens_dir / "index.json"
    if not path.exists():
        raise WeightAtlasError(f"{a.root} has no token store; run `weightatlas tokenize` first")
    idx = read_json(path)
    if not isinstance(idx.get("scheme"), str) or not isinstance(idx.get("token_size"), int):
        raise WeightAtlasError(
            f"{a.root}'s token store holds no tokenized model (no accepted model was collected?); "
            "check `weightatlas collect`'s summary, then run `weightatlas tokenize` again"
        )
    return idx["scheme"], int(idx["token_size"])


def embed_model_dir(
    path: str | Path,
    atlas: str | Path,
    *,
    cfg: EmbedConfig | None = None,
    check: bool = True,
) -> np.ndarray:
    """Embed one Hub-format model directory with the atlas' backbone; returns ``z (L,)``.

    The directory goes through the collector's sanity checks first (safetensors only, size
    limits, known architecture), so an untrusted download is treated exactly like a collected
    one.
    """
    return embed_model_dir_full(path, atlas, cfg=cfg, check=check)["z"].numpy()


def embed_model_dir_full(
    path: str | Path,
    atlas: str | Path,
    *,
    cfg: EmbedConfig | None = None,
    check: bool = True,
    backbone: Any = None,
) -> dict[str, Any]:
    """Like :func:`embed_model_dir`, also returning the per-layer embeddings and spreads.

    ``backbone``: the atlas' backbone if already loaded (``core.sample`` embeds each kept model).
    """
    from core.tokenize import tokenize_model_dir

    a = Atlas.open(atlas)
    path = Path(path)
    if not path.is_dir():
        raise WeightAtlasError(f"{path} is not a model directory")
    if check:
        check_model_dir(path)
    cfg = cfg or build_config(EmbedConfig, EMBED_PRESETS, "ci")
    scheme, size = token_scheme(a)
    tok = tokenize_model_dir(path, scheme, size)
    if backbone is None:
        backbone = _load_backbone(a, None, cfg.device)
    tokens, positions = _masked_tokens(tok)
    return summarize(encode_tokens(backbone, tokens, positions, cfg), positions)


def neighbours(
    atlas: str | Path,
    model: str | Path | np.ndarray | torch.Tensor,
    k: int = 5,
    embeddings: Embeddings | None = None,
) -> list[tuple[str, float]]:
    """The ``k`` collected models nearest to ``model`` by cosine distance of embeddings.

    Args:
        atlas: an embedded atlas.
        model: a collected model id, an embedding vector ``(L,)``, or a model directory (it is
            checked and embedded first).
        k: how many neighbours.
        embeddings: the atlas' embeddings if already loaded (the app keeps them in memory).

    Returns:
        ``[(id, cosine_distance), ...]`` nearest first; a collected model is not its own
        neighbour.
    """
    emb = embeddings if embeddings is not None else load_embeddings(atlas)
    skip: str | None = None
    if isinstance(model, np.ndarray | torch.Tensor):
        v = np.asarray(model, dtype=np.float64).reshape(-1)
    elif isinstance(model, str) and model in set(emb.ids):
        v, skip = emb.vector(model).astype(np.float64), model
    elif Path(model).is_dir():
        v = embed_model_dir(model, atlas).astype(np.float64)
    else:
        raise WeightAtlasError(f"{model!r} is neither a collected model id nor a model directory")
    if v.shape[0] != emb.z.shape[1]:
        raise WeightAtlasError(f"vector has {v.shape[0]} dims, embeddings have {emb.z.shape[1]}")
    d = cosine_distances(emb.z.astype(np.float64), v)
    order = np.argsort(d, kind="stable")
    ids = emb.ids
    out = [(ids[i], float(d[i])) for i in order if ids[i] != skip]
    return out[:k]


# ---------------------------------------------------------------------------------------------
# CLI


def add_cli(p: argparse.ArgumentParser) -> None:
    from core.cli import add_json_flag

    add_json_flag(p)
    p.add_argument("atlas", help="atlas directory (tokenized, with a trained backbone)")
    p.add_argument(
        "--preset",
        default="ci",
        choices=sorted(EMBED_PRESETS),
        help="EmbedConfig preset: window, halo, batch size, UMAP settings (default: ci)",
    )
    p.add_argument("--model", default=None, help="embed one model directory or Hub id instead")
    p.add_argument("--k", type=int, default=5, help="neighbours to list with --model")
    p.add_argument("--window", type=int, default=None, help="tokens per encoder pass")
    p.add_argument("--halo", type=int, default=None, help="context tokens on each side")
    p.add_argument(
        "--batch-size", type=int, default=None, help="windows per encoder batch (default: preset's)"
    )
    p.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this process' share of the models when several embed at once (default: env RANK)",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="number of processes sharing the work (default: env WORLD_SIZE, else 1)",
    )
    p.add_argument("--backbone", default=None, help="another backbone directory")
    add_overrides_arg(p, "EmbedConfig")


def run_cli(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    if args.model is None:
        out = embed(
            args.atlas,
            preset=args.preset,
            halo=args.halo,
            window=args.window,
            batch_size=args.batch_size,
            rank=args.rank,
            world_size=args.world_size,
            backbone_dir=args.backbone,
            overrides=overrides,
        )
        from core.cli import emit

        done = (out / "models.safetensors").exists()
        if not done:
            emit(args, {"out": str(out), "done": False}, f"embed: this rank's part written to {out}; "
                 "the maps are built when every rank has finished")  # fmt: skip
            return 0
        info = read_json(out / "info.json") if (out / "info.json").exists() else {}
        ratio = info.get("pca_explained_variance_ratio") or []
        pca = f" (PCA axes explain {100 * sum(ratio[:2]):.0f}% of the variance)" if ratio else ""
        emit(
            args,
            {"out": str(out), "done": True, **info},
            f"embed: {info.get('n_models', '?')} models embedded in {info.get('latent_dim', '?')} "
            f"dimensions; UMAP and PCA maps{pca}\n"
            f"written to {out}\n"
            f"next: streamlit run explorer/app.py (type {args.atlas} in the sidebar), or "
            f"weightatlas evaluate {args.atlas}",
        )
        return 0
    extra = {
        k: v
        for k, v in dict(halo=args.halo, window=args.window, batch_size=args.batch_size).items()
        if v is not None
    }
    cfg = build_config(EmbedConfig, EMBED_PRESETS, args.preset, overrides={**overrides, **extra})
    path = _model_path(args.model, args.atlas)
    summ = embed_model_dir_full(path, args.atlas, cfg=cfg)
    v = summ["z"].numpy()
    result = {
        "model": args.model,
        "path": str(path),
        "map": place_on_map(args.atlas, v),
        "neighbours": [
            {"id": i, "cosine_distance": d} for i, d in neighbours(args.atlas, v, args.k)
        ],
        "atlas_distance": atlas_distance(
            args.atlas, v, architecture=model_architecture(path)
        ),  # issue 16, strangers
        "z": v.tolist(),
    }
    from core.cli import emit

    ad = result["atlas_distance"]
    near = ", ".join(f"{n['id']} ({n['cosine_distance']:.3f})" for n in result["neighbours"][:3])
    emit(
        args,
        result,
        f"embed: {args.model} ({path})\n"
        f"map position: UMAP {result['map']['umap'][0]:.2f}, {result['map']['umap'][1]:.2f}\n"
        f"nearest: {near}\n"
        f"atlas distance {ad['distance']:.4f} (mean {ad['metric']} distance to its {ad['k']} "
        f"nearest atlas models), percentile {ad['percentile']:.1f} of the atlas' own: "
        f"{ad['meaning']}\n"
        f"architecture in atlas: {'yes' if ad['architecture_in_atlas'] else 'no'} -- "
        f"{ad['architecture_note']}",
    )
    if ad["outside"] and getattr(args, "json", False):
        print(f"warning: {args.model} is {ad['meaning']}", file=sys.stderr)
    if not ad["architecture_in_atlas"] and getattr(args, "json", False):
        print(f"warning: {args.model}: {ad['architecture_note']}", file=sys.stderr)
    return 0


def check_model_dir(path: str | Path) -> None:
    """The collector's sanity checks (headers, size, dtypes, strict load, finite, tokenizable).

    Raises:
        RejectedModel: with the collector's reason.
    """
    from core.hub import CollectConfig, check_model, inspect_model_dir

    cfg = CollectConfig()
    check_model(inspect_model_dir(path, cfg), cfg)


def _model_path(spec: str, atlas: str | Path) -> Path:
    """A local model directory, a repo in the local HF cache, or a Hub id fetched by the collector.

    Hub downloads go through the collector's source (safetensors and config files only) into
    ``ATLAS/hub/``; nothing pickled is ever fetched.
    """
    p = Path(spec)
    if p.is_dir():
        return p
    from core.architectures import resolve_arch

    try:
        source = resolve_arch(f"hf:{spec}").source
        if source is not None:
            return Path(source)
    except WeightAtlasError:
        pass
    from core.hub import Candidate, CollectConfig, Query, make_source

    a = Atlas.open(atlas)
    hub = make_source("hub", Query(), CollectConfig())
    try:
        return Path(hub.fetch(Candidate(id=spec, revision=None), a))
    except WeightAtlasError:
        raise
    except Exception as e:  # network, missing repo: one line for the CLI
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WeightAtlasError(
            f"cannot fetch {spec!r} from the Hub ({type(e).__name__}: {first})"
        ) from None
