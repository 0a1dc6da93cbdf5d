"""core.embeddings.encode: haloed windows, position codes, pooling and dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ci_backbone as make_backbone
from conftest import ci_backbone_config as _cfg

from core.backbone.model import (
    Backbone,
    load_backbone,
    sinusoidal_3d,
)
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
from core.errors import WeightAtlasError


def test_haloed_apply_with_a_shared_position_code_is_exact():
    """Passing the sequence's position code once (every pass of a sampling run shares it)
    gives bit-identical output to computing it per window."""
    from core.embeddings.encode import haloed_apply, position_code

    torch.manual_seed(0)
    model = Backbone(_cfg(token_size=16)).eval()
    N = 301
    x = torch.randn(2, N, 16)
    n = torch.arange(N)
    pos = torch.stack([n, n // 50, n % 50], -1)
    code = position_code(model, pos, chunk=64)
    assert torch.equal(code, sinusoidal_3d(pos, model.cfg.d_model, model.cfg.pos_base))
    with torch.no_grad():
        a = haloed_apply(model.encode, x, pos, 32, 4, batch_size=5)
        b = haloed_apply(model.encode, x, pos, 32, 4, batch_size=5, code=code)
    assert torch.equal(a, b)


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
    from core.backbone.inference import packed_backbone
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
        if dtype == "auto":
            auto = got["z"]
    # sampling hands over the packed copy itself (core.generation.build.backbone_precision)
    packed = packed_backbone(backbone)
    if packed is not None:
        cfg = EmbedConfig(batch_size=4)
        assert single_model_encoder(packed, cfg)[1] == "bf16-packed"
        got = encode_summary(packed, tok.tokens, positions, cfg, "depth-mean+std", valid=tok.valid)
        torch.testing.assert_close(got["z"], auto, rtol=0, atol=0)


def test_embed_dtype_is_checked_and_narrow_backbones_stay_fp32():
    from core.embeddings.encode import single_model_encoder

    bb = make_backbone()  # ci: d_model 64, below BF16_MIN_WIDTH
    assert single_model_encoder(bb, EmbedConfig())[1] == "fp32"
    with pytest.raises(WeightAtlasError, match="dtype"):
        single_model_encoder(bb, EmbedConfig(dtype="fp16"))
