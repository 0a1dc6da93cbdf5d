"""Embeddings: encode every model with haloing, per-layer spreads, 2-D maps, retrieval.

    weightatlas embed ATLAS                       # all accepted models -> ATLAS/embeddings/
    weightatlas embed ATLAS --model PATH_OR_ID    # one new model: vector, map position, neighbours
    torchrun --nproc_per_node 4 -m core.cli embed ATLAS   # sharded by rank, then merged

Haloing (003 §2): a model's token sequence is cut into content chunks of ``window - 2*halo``
tokens; each chunk is encoded inside a window of ``window`` tokens with ``halo`` tokens of
context before and after (shifted inward at the ends of the sequence), and the context is
dropped after encoding. A model that fits in one window is encoded in one pass.

Per-model embedding: ``EmbedConfig.pooling`` of its token embeddings
(``core.embeddings.encode.pool_model``; 003 §2 takes the mean over tokens, which drops the
second-order information the latent carries, so the default keeps per-channel means and
spreads). Per-layer embedding = mean over the layer's tokens, and the layer's spread ẑ_l = std
over its tokens (003 §4, eq. 8), averaged over latent dimensions to one scalar per layer. Beside
them, each model's s(W) (``core.embeddings.statistics``), the baseline its map quality and probes
are judged against, read from the same tokens.

Outputs (``ATLAS/embeddings/``): ``models.safetensors`` (``z (M, L)``, ``layer_z (S, L)``,
``layer_spread (S,)`` with S = total layers, ``s_w (M, 35)``), ``models.jsonl`` (row i describes ``z[i]``),
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

import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from core.atlas import Atlas, EmbeddingTables, append_jsonl, atomic_path, write_json
from core.backbone.views import UnitGroup, store_groups
from core.config import build_config, to_dict
from core.embeddings.distances import (
    check_metric,
    distance_percentile,
    loo_knn_distances,
    reference_groups,
)
from core.embeddings.encode import (
    EMBED_PRESETS,
    EmbedConfig,
    _masked_tokens,
    backbone_fingerprint,
    canonical_form,
    embeddings_dir,
    encode_tokens,
    open_backbone,
    pooled_dim,
    resolve_window,
    summarize,
)
from core.embeddings.maps import fit_maps
from core.embeddings.statistics import weight_statistics
from core.errors import WeightAtlasError
from core.tokens.store import TokenStore
from core.tokens.tokenize import copies_of

# the stage


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    r = int(os.environ.get("RANK", 0)) if rank is None else rank
    w = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= r < w:
        raise WeightAtlasError(f"rank {r} is not in [0, {w})")
    return r, w


def embed(
    atlas: str | Path,
    preset: str | None = "ci",
    overrides: Mapping[str, Any] | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    backbone_dir: str | Path | None = None,
) -> Path:
    """Embed every tokenized model of the atlas and write ``ATLAS/embeddings/``.

    Args:
        atlas: the atlas directory (tokenized, with a trained backbone).
        preset: an ``EMBED_PRESETS`` name.
        overrides: ``EmbedConfig`` fields (``window``, ``halo``, ``batch_size``, UMAP settings).
        rank: this worker's rank (default ``$RANK`` or 0).
        world_size: number of workers (default ``$WORLD_SIZE`` or 1).
        backbone_dir: another backbone (e.g. an ablation in ``ATLAS/backbones/NAME``); its
            embeddings go to ``BACKBONE/embeddings`` instead of ``ATLAS/embeddings``.

    Returns:
        The embeddings directory (complete once every rank's parts exist).
    """
    a = Atlas.open(atlas)
    cfg = build_config(EmbedConfig, EMBED_PRESETS, preset, overrides=overrides)
    r, w = _rank_world(rank, world_size)
    bdir = Path(backbone_dir) if backbone_dir is not None else a.backbone_dir
    out = embeddings_dir(a, backbone_dir)
    backbone = open_backbone(a, bdir, cfg.device)
    fp = backbone_fingerprint(bdir)
    if not a.tokens.exists():
        raise WeightAtlasError(f"{a.root} has no token store; run `weightatlas tokenize` first")
    store = TokenStore(a.tokens_dir)
    manifest = {r["id"]: r for r in a.manifest()}  # read once: every chunk's groups use it
    dups = {i for i, r in manifest.items() if r.get("duplicate_of")}
    ids = sorted(i for i in store.ids if i not in dups)  # a duplicate is its original's point
    if not ids:
        raise WeightAtlasError(f"{a.root}: the token store holds no models")
    chunks = [ids[i : i + cfg.chunk_models] for i in range(0, len(ids), cfg.chunk_models)]
    window_, halo_ = resolve_window(cfg, backbone)
    pooled_dim(int(backbone.cfg.latent_dim), cfg.pooling)  # an unknown pooling fails here
    check_metric(cfg.distance_metric)  # and an unknown metric, before any encoding
    check_metric(cfg.neighbour_metric)
    plan = f"{fp}\n{cfg.chunk_models}\n{window_}\n{halo_}\n{cfg.pooling}\n" + "\n".join(ids)
    if cfg.canonical:  # stale non-canonical parts never mix with canonical ones
        plan = "canonical\n" + plan
    parts = (
        EmbeddingTables(out).parts_dir / hashlib.sha256(plan.encode()).hexdigest()[:16]
    )  # stale parts never mix
    mine = [c for c in range(len(chunks)) if c % w == r]
    for c in tqdm(mine, desc=f"embed rank {r}/{w}", unit="chunk"):
        path = parts / f"part-{c:05d}.safetensors"
        if path.exists():
            continue
        groups = store_groups(a, store, chunks[c], manifest) if cfg.canonical else {}
        tensors = _embed_chunk(chunks[c], store, backbone, cfg, groups)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"ids": "\n".join(chunks[c]), "backbone": fp})
    if all((parts / f"part-{c:05d}.safetensors").exists() for c in range(len(chunks))):
        _merge(a, out, parts, chunks, store, cfg, fp)
        if w == 1:  # alone: nobody else may still read the parts
            shutil.rmtree(EmbeddingTables(out).parts_dir, ignore_errors=True)
    return out


def _embed_chunk(
    ids: list[str],
    store: Any,
    backbone: Any,
    cfg: EmbedConfig,
    groups: dict[str, list[UnitGroup]] | None = None,
) -> dict[str, torch.Tensor]:
    """One part's tensors: each model's pooled code ``z`` and s(W), and its layers' codes,
    spreads, indices and token counts (concatenated over the models, ``layer_count`` each).
    ``groups``: the models' unit groups, when they are encoded in canonical form."""
    tensors: dict[str, torch.Tensor] = {}
    zs, lz, ls, lidx, ltok, ntok, sw = [], [], [], [], [], [], []
    for mid in ids:
        tok = canonical_form(store.get(mid), (groups or {}).get(mid) or [])
        tokens, positions = _masked_tokens(tok)
        summ = summarize(encode_tokens(backbone, tokens, positions, cfg), positions, cfg.pooling)
        sw.append(
            torch.from_numpy(
                weight_statistics(tokens, torch.as_tensor(tok.mask), positions)
            ).float()
        )
        zs.append(summ["z"])
        lz.append(summ["layer_z"])
        ls.append(summ["layer_spread"])
        lidx.append(summ["layer_index"])
        ltok.append(summ["layer_tokens"])
        ntok.append(len(tokens))
    tensors["z"] = torch.stack(zs)
    tensors["s_w"] = torch.stack(sw)
    tensors["layer_z"] = torch.cat(lz)
    tensors["layer_spread"] = torch.cat(ls)
    tensors["layer_index"] = torch.cat(lidx).long()
    tensors["layer_tokens"] = torch.cat(ltok).long()
    tensors["layer_count"] = torch.tensor([len(x) for x in lidx], dtype=torch.long)
    tensors["n_tokens"] = torch.tensor(ntok, dtype=torch.long)
    return tensors


def _part_rows(
    ids: list[str],
    t: dict[str, torch.Tensor],
    manifest: dict[str, Any],
    copies: dict[str, list[str]],
    store: Any,
    first_model: int,
    first_layer: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``models.jsonl`` and ``layers.jsonl`` rows of one part's models (``t``: the part's
    tensors), numbered on from ``first_model`` and ``first_layer``."""
    model_rows: list[dict[str, Any]] = []
    layer_rows: list[dict[str, Any]] = []
    off = 0
    for i, mid in enumerate(ids):
        cnt = int(t["layer_count"][i])
        first = first_layer + off
        row = manifest.get(mid, {})
        model_rows.append(
            {
                "id": mid,
                "row": first_model + len(model_rows),
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
    return model_rows, layer_rows


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

    manifest = {row["id"]: row for row in a.manifest()}
    copies = copies_of(manifest.values())
    z, layer_z, layer_spread, s_w, model_rows, layer_rows = [], [], [], [], [], []
    n_layer_rows = 0
    for c, ids in enumerate(chunks):
        with safe_open(str(parts / f"part-{c:05d}.safetensors"), "pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        z.append(t["z"])
        layer_z.append(t["layer_z"])
        layer_spread.append(t["layer_spread"])
        s_w.append(t["s_w"])
        models, layers = _part_rows(ids, t, manifest, copies, store, len(model_rows), n_layer_rows)
        model_rows += models
        layer_rows += layers
        n_layer_rows += len(layers)
    tensors = {
        "z": torch.cat(z).contiguous(),
        "layer_z": torch.cat(layer_z).contiguous(),
        "layer_spread": torch.cat(layer_spread).contiguous(),
        "s_w": torch.cat(s_w).contiguous(),
    }
    zm = tensors["z"].double().numpy()
    groups = reference_groups(a, [r["id"] for r in model_rows])
    loo = loo_knn_distances(zm, cfg.distance_k, cfg.distance_metric, groups)
    for r, dist in zip(model_rows, loo, strict=True):
        r["atlas_distance"] = float(dist)
        r["atlas_percentile"] = distance_percentile(loo, float(dist))
    maps, reducers = fit_maps(zm, cfg)
    files = EmbeddingTables(out)
    rdir = files.reducers_dir
    for name, arrays in reducers.items():
        with atomic_path(rdir / f"{name}.safetensors") as tmp:
            save_file(
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(tmp)
            )
    ids = [r["id"] for r in model_rows]
    with atomic_path(files.tensors_path) as tmp:
        save_file(tensors, str(tmp), metadata={"backbone": fp})
    for path, rows in ((files.models_path, model_rows), (files.layers_path, layer_rows)):
        tmp_path = path.with_name(f".{path.name}.new")
        tmp_path.unlink(missing_ok=True)
        append_jsonl(tmp_path, rows)
        os.replace(tmp_path, path)
    write_json(
        files.maps_path,
        {
            "ids": ids,
            "pca": {i: maps["pca"][k].tolist() for k, i in enumerate(ids)},
            "umap": {i: maps["umap"][k].tolist() for k, i in enumerate(ids)},
        },
    )
    write_json(
        files.info_path,
        {
            "backbone": fp,
            "n_models": len(ids),
            "latent_dim": int(tensors["z"].shape[1]),
            "pca_explained_variance_ratio": reducers["pca"]["explained_variance_ratio"].tolist(),
            "umap_placement": "inverse-distance weighted mean of the n_neighbors nearest maps",
            "map_metric": cfg.neighbour_metric,  # neighbours, UMAP fit and placement
            "atlas_distance": {
                "k": cfg.distance_k,
                "metric": cfg.distance_metric,
                "calibration": "leave-one-run-out (core.embeddings.distances.reference_groups)",
            },
            "config": to_dict(cfg),
        },
    )


# ---------------------------------------------------------------------------------------------
