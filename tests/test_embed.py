"""Embeddings: haloing, per-layer summaries, the embed stage (sharded, resumable), maps, retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from core.atlas import Atlas, read_json, write_json
from core.backbone.model import BACKBONE_PRESETS, Backbone, BackboneConfig
from core.config import build_config
from core.embeddings.distances import place_on_map
from core.embeddings.encode import (
    POOLINGS,
    EmbedConfig,
    encode_tokens,
    halo_windows,
    haloed_apply,
    pool_model,
    pooled_dim,
    summarize,
)
from core.embeddings.table import load_embeddings, neighbours
from core.errors import WeightAtlasError


def make_backbone(token_size: int = 64, seed: int = 0, **kw) -> Backbone:
    cfg = build_config(
        BackboneConfig, BACKBONE_PRESETS, "ci", overrides={"token_size": token_size, **kw}
    )
    torch.manual_seed(seed)
    return Backbone(cfg).eval()


@pytest.fixture(scope="module")
def small_atlas(atlas_factory) -> Path:
    """The shared tiny atlas (conftest.TINY: mlp and cnn on wine and digits10) with a ci backbone."""
    return atlas_factory(TINY, make_backbone())


def test_halo_windows_tile_the_sequence():
    for n, window, halo in [
        (1, 8, 2),
        (8, 8, 2),
        (9, 8, 2),
        (100, 32, 4),
        (101, 32, 0),
        (77, 16, 7),
    ]:
        wins = halo_windows(n, window, halo)
        covered = np.zeros(n, dtype=int)
        for ws, s, e in wins:
            covered[s:e] += 1
            t = min(window, n)
            assert 0 <= ws and ws + t <= n, "window leaves the sequence"
            assert ws <= s < e <= ws + t, "content outside its window"
            if n > window:  # context on both sides wherever the sequence allows it
                assert s - ws >= min(halo, s)
                assert ws + t - e >= min(halo, n - e)
        assert (covered == 1).all()


def test_haloed_stitching_matches_tokenwise_map():
    # a token-wise map: stitching must reproduce it exactly, whatever the window layout
    x = torch.randn(3, 101, 5)
    pos = torch.stack([torch.arange(101), torch.arange(101) // 7, torch.arange(101) % 7], 1)

    def fn(xb, pb):
        return xb * 2.0 + pb[..., :1].float()

    want = x * 2.0 + pos[:, :1].float()
    for window, halo in [(16, 4), (32, 0), (101, 10), (200, 3)]:
        got = haloed_apply(fn, x, pos, window, halo, batch_size=5)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_haloed_embedding_equals_unwindowed_when_it_fits():
    from core.models.families import build_family
    from core.tokens.plan import tokenize_state_dict
    from core.zoos.tasks import get_task

    model = build_family("mlp", get_task("wine").info, 16, 1, seed=0)
    tok = tokenize_state_dict(model.state_dict(), "dense", 64, model=model)
    tokens, positions = tok.tokens.masked_fill(~tok.mask, 0.0), tok.positions
    n = len(tokens)
    bb = make_backbone()
    with torch.no_grad():
        full = bb.encode(tokens[None], positions[None])[0]
    # whole model in one window: identical
    got = encode_tokens(bb, tokens, positions, EmbedConfig(window=n + 5, halo=2))
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-6)
    # windows shorter than the model, with halo context: close to the unwindowed embedding
    got = encode_tokens(bb, tokens, positions, EmbedConfig(window=max(8, n // 2), halo=2))
    rel = float((got - full).norm() / full.norm())
    assert rel < 0.1, rel
    assert got.shape == full.shape


def test_summarize_layer_means_and_spreads():
    z = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [7.0, 7.0], [9.0, 9.0]])
    pos = torch.tensor([[0, 0, 0], [1, 0, 1], [2, 1, 0], [3, 1, 1], [4, 2, 0]])
    s = summarize(z, pos)
    torch.testing.assert_close(s["z"], z.mean(0))
    torch.testing.assert_close(s["layer_z"], torch.tensor([[2.0, 1.0], [6.0, 6.0], [9.0, 9.0]]))
    # std over the layer's tokens per dim (unbiased), then mean over dims; one token -> 0
    want0 = (np.std([1, 3], ddof=1) + np.std([0, 2], ddof=1)) / 2
    torch.testing.assert_close(
        s["layer_spread"], torch.tensor([want0, np.std([5, 7], ddof=1), 0.0]).float()
    )
    assert s["layer_tokens"].tolist() == [2, 2, 1]


def test_pooling_is_order_invariant_within_a_layer_and_sees_spread():
    g = torch.Generator().manual_seed(0)
    # 3 layers of 7, 1 and 12 tokens; scales differ per layer
    layer = torch.tensor([0] * 7 + [1] + [2] * 12)
    z = torch.randn(len(layer), 4, generator=g) * (1 + layer[:, None].float())
    pos = torch.stack([torch.arange(len(layer)), layer, torch.zeros_like(layer)], 1)
    perm = torch.cat(
        [torch.randperm(7, generator=g), torch.tensor([7]), 8 + torch.randperm(12, generator=g)]
    )
    for pooling in POOLINGS:
        a, b = pool_model(z, pos, pooling), pool_model(z[perm], pos[perm], pooling)
        assert a.shape == (pooled_dim(4, pooling),), pooling
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # mean: the old embedding; the spread poolings see a change of scale that keeps the mean
    torch.testing.assert_close(pool_model(z, pos, "mean"), z.mean(0))
    centred = z - z.mean(0)
    for pooling in ("std", "mean+std", "layer-mean+std", "depth-std", "depth-mean+std"):
        far = pool_model(centred * 3, pos, pooling) - pool_model(centred, pos, pooling)
        assert far.abs().max() > 0.1, pooling
    torch.testing.assert_close(
        pool_model(centred * 3, pos, "mean"), pool_model(centred, pos, "mean"), atol=1e-6, rtol=0
    )
    # depth: the per-layer statistics of the first and last layers sit in different bins
    d = pool_model(z, pos, "depth-mean+std").reshape(5, 8)
    torch.testing.assert_close(d[0, 4:].double(), z[:7].double().std(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d[3, :4].double(), z[8:].double().mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightAtlasError, match="unknown pooling"):
        pool_model(z, pos, "median")


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
    mid = emb.ids[0]
    nn_ = neighbours(small_atlas, mid, k=4)
    assert len(nn_) == 4 and mid not in [i for i, _ in nn_]
    d = [x for _, x in nn_]
    assert d == sorted(d)
    # a vector query gives the model itself first at distance ~0
    first = neighbours(small_atlas, emb.vector(mid), k=1)[0]
    assert first[0] == mid and abs(first[1]) < 1e-6
    # a model directory goes through the collector's checks and the same encoder
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


def test_embed_cli_unknown_metric_is_one_line(small_atlas, capsys):
    from core.cli import main

    assert main(["embed", str(small_atlas), "--set", "neighbour_metric=manhattan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown distance metric 'manhattan'" in err[0], err


def test_embed_cli_unknown_pooling_is_one_line(small_atlas, capsys):
    from core.cli import main

    assert main(["embed", str(small_atlas), "--set", "pooling=median"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown pooling 'median'" in err[0] and "depth-mean+std" in err[0]


def test_embed_cli_single_model_rejects_pickles(small_atlas, tmp_path, capsys):
    from core.cli import main

    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text(
        json.dumps({"library_name": "weightatlas", "architecture": "mlp"})
    )
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    assert main(["embed", str(small_atlas), "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and len(err.strip().splitlines()) == 1


def test_demo_export_keeps_a_subset_with_tokens_and_stays_usable(small_atlas, tmp_path):
    """`weightatlas demo --from-atlas`: all rows, weights + tokens of one model per group."""
    import shutil

    from core.catalog import models_with_weights, tokenized_ids
    from core.embeddings.embed import embed
    from core.embeddings.fidelity import layer_report
    from core.embeddings.table import embed_model_dir_full
    from core.errors import WeightAtlasError
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
    assert tokenized_ids(out) == kept  # the slim token store holds exactly the kept models
    report = layer_report(out, kept[0])
    assert report and all(len(r["original"]) == len(r["reconstructed"]) for r in report)
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


def test_streamed_summary_equals_summarize_of_all_token_embeddings():
    """Issue 27: ``embed --model`` streams (per-batch position code, per-layer float64 sums);
    every pooling, layer mean, spread and count equals summarize() over the full z, for
    models whose tokens span several batches and windows."""
    import io

    from tqdm import tqdm

    from core.embeddings.encode import encode_summary
    from core.tokens.plan import tokenize_state_dict

    bb = make_backbone(window=16).eval()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 7))
    tk = tokenize_state_dict(model.state_dict(), "dense", 64, model=model)
    tokens, positions = tk.tokens.masked_fill(~tk.mask, 0.0), tk.positions
    assert tk.n_tokens > 3 * 16  # several windows, and with batch_size 2 several batches
    cfg = EmbedConfig(batch_size=2)
    z = encode_tokens(bb, tokens, positions, cfg)
    bar = tqdm(file=io.StringIO())  # a real bar, drawn into a buffer
    for pooling in POOLINGS:
        ref = summarize(z, positions, pooling)
        got = encode_summary(bb, tk.tokens, positions, cfg, pooling, progress=bar, valid=tk.valid)
        assert bar.n == len(halo_windows(tk.n_tokens, 16, 2))
        for k, v in ref.items():
            if v.dtype.is_floating_point:
                torch.testing.assert_close(got[k].double(), v.double(), rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(got[k], v), (pooling, k)


def test_rotated_position_code_equals_sinusoidal_3d():
    """Issue 27: the angle-addition position code of ``encode_summary`` is ``sinusoidal_3d``'s
    up to float32 rounding, for a bert-base-sized index range and for positions spread far
    apart (the unique-block path)."""
    from core.backbone.model import sinusoidal_3d
    from core.embeddings.encode import rotated_position_code

    bb = make_backbone(d_model=256)
    n = torch.arange(1_700_000, 1_703_100)
    near = torch.stack([n, n // 700, n % 5000 + 360_000], -1)
    far = torch.tensor([[0, 0, 0], [10**9, 3, 1], [5, 10**7, 1023], [1024, 1025, 10**6]])
    for pos in (near, far, near[:0]):
        got = rotated_position_code(bb, pos)
        ref = sinusoidal_3d(pos, 256, bb.cfg.pos_base)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert torch.allclose(got, ref, rtol=0, atol=1e-6)


def test_bf16_model_embedding_is_within_tolerance_of_fp32():
    """Issue 27: ``embed --model``'s fast path (bf16, packed where the CPU has it, else
    autocast) gives the trained demo backbone's model embedding of a real demo model within
    BF16_EMBED_TOLERANCE (relative L2) of the fp32 reference, with the same layers and counts;
    fp32 stays the reference (equal to summarize of the haloed token embeddings)."""
    from core.backbone.model import load_backbone
    from core.embeddings.encode import (
        BF16_EMBED_TOLERANCE,
        encode_summary,
        single_model_encoder,
    )
    from core.tokens.store import TokenStore

    backbone = load_backbone("assets/demo")
    store = TokenStore("assets/demo/tokens")
    tok = max((store.get(i) for i in store.ids[:40]), key=lambda t: len(t.tokens))
    positions = torch.as_tensor(tok.positions).long()
    assert len(positions) > 4 * backbone.cfg.window  # several haloed windows and batches
    masked = tok.tokens.masked_fill(~tok.mask, 0.0).float()
    fp32 = EmbedConfig(batch_size=4, dtype="fp32")
    assert single_model_encoder(backbone, fp32)[1] == "fp32"
    ref = summarize(encode_tokens(backbone, masked, positions, fp32), positions, "depth-mean+std")
    exact = encode_summary(backbone, tok.tokens, positions, fp32, "depth-mean+std", valid=tok.valid)
    torch.testing.assert_close(exact["z"], ref["z"], rtol=1e-5, atol=1e-6)
    for dtype in ("auto", "bf16"):
        cfg = EmbedConfig(batch_size=4, dtype=dtype)
        _, precision = single_model_encoder(backbone, cfg)
        assert precision.startswith("bf16") or dtype == "auto"
        got = encode_summary(
            backbone, tok.tokens, positions, cfg, "depth-mean+std", valid=tok.valid
        )
        rel = float((got["z"] - ref["z"]).norm() / ref["z"].norm())
        assert rel <= BF16_EMBED_TOLERANCE, (dtype, precision, rel)
        assert torch.equal(got["layer_index"], ref["layer_index"])
        assert torch.equal(got["layer_tokens"], ref["layer_tokens"])
        if precision != "fp32":
            assert rel > 0  # bf16 really ran (it rounds)


def test_embed_dtype_is_checked_and_narrow_backbones_stay_fp32():
    from core.embeddings.encode import single_model_encoder

    bb = make_backbone()  # ci: d_model 64, below BF16_MIN_WIDTH
    assert single_model_encoder(bb, EmbedConfig())[1] == "fp32"
    with pytest.raises(WeightAtlasError, match="dtype"):
        single_model_encoder(bb, EmbedConfig(dtype="fp16"))
