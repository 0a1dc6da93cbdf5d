"""Embeddings: the embed stage (sharded, resumable), maps, retrieval, export and its CLI errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.atlas import Atlas, read_json, write_json
from core.backbone.model import BACKBONE_PRESETS, Backbone, BackboneConfig
from core.config import build_config
from core.embeddings.distances import place_on_map
from core.embeddings.encode import (
    EmbedConfig,
    pooled_dim,
)
from core.embeddings.table import load_embeddings, neighbours
from core.errors import WeightAtlasError


def make_backbone(token_size: int = 64, seed: int = 0, **kw) -> Backbone:
    cfg = build_config(
        BackboneConfig, BACKBONE_PRESETS, "ci", overrides={"token_size": token_size, **kw}
    )
    torch.manual_seed(seed)
    return Backbone(cfg).eval()


def test_embed_stage_sharded_resumable_and_maps(small_atlas, tmp_path):
    from core.embeddings.embed import embed

    a = Atlas(small_atlas)
    # rank 1 of 2 alone: its parts only, no merged table yet
    out = embed(small_atlas, rank=1, world_size=2, overrides={"chunk_models": 4})
    assert not (out / "models.safetensors").exists()
    parts = sorted((out / "parts").rglob("part-*.safetensors"))
    assert parts and all(int(p.stem.split("-")[1]) % 2 == 1 for p in parts)
    # rank 0 finishes its chunks and merges
    embed(small_atlas, rank=0, world_size=2, overrides={"chunk_models": 4})
    emb = load_embeddings(small_atlas)
    ids = [r["id"] for r in a.accepted()]
    assert sorted(emb.ids) == sorted(ids)
    latent = make_backbone().cfg.latent_dim
    assert emb.z.shape == (len(ids), pooled_dim(latent, EmbedConfig().pooling))
    assert read_json(out / "info.json")["config"]["pooling"] == EmbedConfig().pooling
    assert emb.s_w is not None and emb.s_w.shape == (len(ids), 35)
    assert np.isfinite(emb.z).all()
    # per-layer rows line up with the layer table of each model
    from core.tokens.store import TokenStore

    store = TokenStore(a.tokens_dir)
    for row in emb.models:
        lo, hi = row["layer_rows"]
        assert hi - lo == len(store.layers(row["id"]))
        names = [r["name"] for r in emb.layers[lo:hi]]
        assert names == [e.name for e in store.layers(row["id"])]
    # same result as a single process (content of a model does not depend on its chunk)
    single = tmp_path / "single"
    z1 = emb.z.copy()
    import shutil

    shutil.rmtree(out)
    embed(small_atlas, overrides={"chunk_models": 64})
    np.testing.assert_allclose(load_embeddings(small_atlas).z, z1, rtol=1e-5, atol=1e-6)
    assert not single.exists()
    # maps: every id on both maps; the explorer's reader accepts them
    maps = read_json(out / "maps.json")
    assert set(maps["pca"]) == set(ids) and set(maps["umap"]) == set(ids)
    from core.catalog import map_table

    table = map_table(small_atlas)
    assert set(table.coords) == {"pca", "umap"} and np.isfinite(table.coords["umap"]).all()
    # reducers are plain safetensors, no pickle anywhere in the embeddings dir
    for p in out.rglob("*"):
        if p.is_file():
            assert p.suffix in (".safetensors", ".json", ".jsonl"), p
    # placing a collected model's own vector lands on its own map position
    i = 3
    placed = place_on_map(small_atlas, emb.z[i])
    np.testing.assert_allclose(placed["pca"], maps["pca"][emb.ids[i]], atol=1e-6)
    np.testing.assert_allclose(placed["umap"], maps["umap"][emb.ids[i]], atol=1e-3)


def test_neighbours_by_id_vector_and_directory(small_atlas):
    from core.embeddings.embed import embed
    from core.embeddings.table import embed_model_dir

    if not (Atlas(small_atlas).embeddings_dir / "models.safetensors").exists():
        embed(small_atlas)
    emb = load_embeddings(small_atlas)
    fams = {r["id"]: r.get("family") for r in Atlas(small_atlas).manifest()}
    mid = next(i for i in emb.ids if fams.get(i) in ("mlp", "cnn"))  # a model with unit groups
    nn_ = neighbours(small_atlas, mid, k=4)
    assert len(nn_) == 4 and mid not in [i for i, _ in nn_]
    d = [x for _, x in nn_]
    assert d == sorted(d)
    # a vector query gives the model itself first at distance ~0
    first = neighbours(small_atlas, emb.vector(mid), k=1)[0]
    assert first[0] == mid and abs(first[1]) < 1e-6
    # a model directory goes through the collector's checks and the same encoder, in the
    # canonical form the atlas' embeddings were written in
    assert Atlas(small_atlas).embeddings.info()["config"]["canonical"] is True
    row = next(r for r in Atlas(small_atlas).accepted() if r["id"] == mid)
    path = Path(row["path"])
    path = path if path.is_absolute() else small_atlas / path
    v = embed_model_dir(path, small_atlas)
    np.testing.assert_allclose(v, emb.vector(mid), rtol=1e-4, atol=1e-5)
    assert neighbours(small_atlas, path, k=1)[0][0] == mid


def test_one_metric_for_distance_neighbours_and_map(small_atlas, tmp_path):
    """``EmbedConfig.neighbour_metric`` governs the neighbours and the UMAP map (fit and
    placement), ``distance_metric`` the atlas distance; embeddings written before the field
    keep cosine neighbours."""
    import shutil

    from core.embeddings.distances import atlas_distance, map_metric, pairwise_distances
    from core.embeddings.embed import embed

    atlas = tmp_path / "atlas"
    shutil.copytree(small_atlas, atlas, ignore=shutil.ignore_patterns("embeddings"))
    for metric in ("zscore", "euclidean", "cosine"):
        out = embed(atlas, overrides={"neighbour_metric": metric, "distance_metric": metric})
        info = read_json(out / "info.json")
        assert info["map_metric"] == info["atlas_distance"]["metric"] == metric
        emb = load_embeddings(atlas)
        assert emb.metric == metric
        z = emb.z.astype(np.float64)
        mid, v = emb.ids[2], z[2]
        d = pairwise_distances(z, v[None], metric, z)[:, 0]
        nn_ = neighbours(atlas, mid, k=3)
        want = [emb.ids[i] for i in np.argsort(d, kind="stable") if emb.ids[i] != mid][:3]
        assert [i for i, _ in nn_] == want
        assert atlas_distance(atlas, v)["metric"] == metric
        placed = place_on_map(atlas, v)  # its own vector: its own UMAP position
        np.testing.assert_allclose(
            placed["umap"], read_json(out / "maps.json")["umap"][mid], atol=1e-3
        )
    # embeddings written before the field governed the neighbours: cosine, as they were
    assert map_metric({}) == "cosine"
    info = read_json(out / "info.json")
    del info["map_metric"]
    info["config"]["distance_metric"] = "zscore"
    write_json(out / "info.json", info)
    assert load_embeddings(atlas).metric == "cosine"
    assert atlas_distance(atlas, load_embeddings(atlas).z[0])["metric"] == "zscore"


def test_demo_export_keeps_a_subset_with_tokens_and_stays_usable(small_atlas, tmp_path):
    """`weightatlas demo --from-atlas`: all rows, weights + tokens of one model per group."""
    import shutil

    from core.catalog import models_with_weights, tokenized_ids
    from core.embeddings.embed import embed
    from core.embeddings.fidelity import layer_report
    from core.embeddings.table import embed_model_dir_full
    from core.experiments.demo import export_demo

    src = tmp_path / "full"
    shutil.copytree(small_atlas, src)
    embed(src)
    out = export_demo(src, tmp_path / "demo", per_group=1, max_mb=25.0)
    demo, full = Atlas.open(out), Atlas.open(src)
    assert [r["id"] for r in demo.manifest()] == [r["id"] for r in full.manifest()]
    kept = models_with_weights(out)
    groups = {(r["family"], r["labels"]["task"]) for r in full.accepted()}
    assert len(kept) == len(groups)  # one model per (family, task)
    # the slim token store holds the best kept model of each family
    families = {r["id"]: r["family"] for r in full.accepted()}
    stored = tokenized_ids(out)
    assert set(stored) < set(kept) and sorted(families[i] for i in stored) == sorted(
        {families[i] for i in kept}
    )
    # the Layers page reconstructs a kept model without tokens from its weights: the same
    # weights as the full atlas' tokens give (the demo's backbone is its bf16 copy)
    other = next(i for i in kept if i not in stored)
    report = layer_report(out, other)
    assert report and all(len(r["original"]) == len(r["reconstructed"]) for r in report)
    full_report = layer_report(src, other)
    assert [(r["name"], r["original"]) for r in report] == [
        (r["name"], r["original"]) for r in full_report
    ]
    with pytest.raises(WeightAtlasError, match="neither tokens nor weights"):
        layer_report(out, next(r["id"] for r in demo.manifest() if r["id"] not in kept))
    weights = next(r for r in demo.manifest() if r["id"] == kept[0])["path"]
    assert not Path(weights).is_absolute() and (out / weights / "model.safetensors").exists()
    want = (pooled_dim(make_backbone().cfg.latent_dim, EmbedConfig().pooling),)
    assert embed_model_dir_full(out / weights, out)["z"].shape == want
    with pytest.raises(WeightAtlasError, match="MB"):
        export_demo(src, tmp_path / "too-big", max_mb=0.001)
    assert not (tmp_path / "too-big").exists()


def test_empty_token_store_gives_one_line_error(tmp_path, capsys):
    """An atlas whose tokenize stage found nothing to tokenize: `sample` (via
    core.embeddings.table.token_scheme) says so in one line instead of a TypeError traceback."""
    from core.atlas import Atlas
    from core.cli import main
    from core.tokens.tokenize import tokenize

    atlas = Atlas.create(tmp_path / "atlas")
    tokenize(atlas, progress=False)
    assert main(["sample", str(atlas.root), "--arch", "zoo:cnn"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "TypeError" not in err, err
    last = err.strip().splitlines()[-1]  # above it: the progress bar's lines
    assert last.startswith("weightatlas sample: error:") and "holds no tokenized model" in last


@pytest.mark.parametrize("metric", ["cosine", "zscore", "euclidean"])
def test_neighbours_top_k_equals_a_full_stable_sort(metric):
    """neighbours keeps only the k + 1 nearest (100,000-model atlases answer in ~20 ms, not
    0.5 s): the same ids, distances and tie order as sorting every distance of the atlas'
    metric (``pairwise_distances`` with the atlas as reference)."""
    from core.embeddings.distances import pairwise_distances
    from core.embeddings.table import Embeddings

    rng = np.random.default_rng(0)
    z = rng.normal(size=(3000, 8)).astype(np.float32)
    z[:, 0] *= 50.0  # one wide dim: the metrics disagree
    z[10:20] = z[5]  # ties, across the cut too
    models = [{"id": f"m{i}", "row": i} for i in range(len(z))]
    emb = Embeddings(
        z=z, layer_z=z[:0], layer_spread=np.zeros(0), models=models, layers=[], metric=metric
    )
    z64 = z.astype(np.float64)
    for mid, k in (("m5", 3), ("m5", 12), ("m0", 8), ("m2999", 1)):
        d = pairwise_distances(z64, emb.vector(mid).astype(np.float64)[None], metric, z64)[:, 0]
        full = [(f"m{i}", float(d[i])) for i in np.argsort(d, kind="stable") if f"m{i}" != mid]
        got = neighbours("unused", mid, k, embeddings=emb)
        assert [m for m, _ in got] == [m for m, _ in full[:k]]
        assert np.allclose([x for _, x in got], [x for _, x in full[:k]], atol=1e-9)
