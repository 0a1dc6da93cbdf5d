"""core.backbone.model: shapes, the 3-D sinusoidal code, attention, presets and loading."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import ci_backbone_config as _cfg
from conftest import position_grid as _positions

from core.backbone.model import (
    BACKBONE_PRESETS,
    Backbone,
    BackboneConfig,
    describe,
    load_backbone,
    save_backbone,
    sinusoidal_3d,
)
from core.config import ConfigError, build_config
from core.errors import WeightAtlasError
from core.tokens.schemes import DEFAULT_TOKEN_SIZE
from core.tokens.tokenize import TOKENIZE_PRESETS


def test_shapes_of_encode_decode_project():
    cfg = _cfg(token_size=24)
    model = Backbone(cfg)
    x = torch.randn(3, 20, 24)
    pos = _positions(3, 20)
    z, recon, proj = model(x, pos)
    assert z.shape == (3, 20, cfg.latent_dim)
    assert recon.shape == (3, 20, 24)
    assert proj.shape == (3, cfg.proj_dim)
    assert torch.equal(model.encode(x, pos), z)
    with pytest.raises(WeightAtlasError, match="token size"):
        model.encode(torch.randn(1, 4, 16), _positions(1, 4))


def test_tokens_are_encoded_in_context_of_the_window():
    model = Backbone(_cfg(token_size=8)).eval()
    x, pos = torch.randn(1, 12, 8), _positions(1, 12)
    z = model.encode(x, pos)
    x2 = x.clone()
    x2[0, -1] += 1.0
    z2 = model.encode(x2, pos)
    assert not torch.allclose(z[0, 0], z2[0, 0])  # attention mixes tokens
    z3 = model.encode(x, pos + torch.tensor([1, 0, 0]))
    assert not torch.allclose(z, z3)  # positions matter


def test_sinusoidal_code_distinct_across_positions_and_beyond_training_lengths():
    dim = 64
    n = torch.arange(0, 5000)
    pos = torch.stack([n, torch.zeros_like(n), torch.zeros_like(n)], -1)
    code = sinusoidal_3d(pos, dim)
    assert code.shape == (5000, dim)
    d = torch.cdist(code[::7], code[::7])
    d.fill_diagonal_(float("inf"))
    assert d.min() > 1e-3
    # far past any training window: 1e8 tokens in, still distinct and bounded
    far = torch.stack([torch.arange(10**8, 10**8 + 200), torch.zeros(200, dtype=torch.long),
                       torch.zeros(200, dtype=torch.long)], -1)  # fmt: skip
    cf = sinusoidal_3d(far, dim)
    df = torch.cdist(cf, cf)
    df.fill_diagonal_(float("inf"))
    assert df.min() > 1e-3 and cf.abs().max() <= 1.0


def test_sinusoidal_axes_have_their_own_channels():
    dim = 48
    a = sinusoidal_3d(torch.tensor([[3, 5, 9]]), dim)
    for perm in ([5, 3, 9], [3, 9, 5], [9, 5, 3]):
        assert not torch.allclose(a, sinusoidal_3d(torch.tensor([perm]), dim))
    # changing only l touches only the l channel group
    b = sinusoidal_3d(torch.tensor([[3, 6, 9]]), dim)
    changed = (a != b).squeeze(0).nonzero().flatten()
    g = 2 * (dim // 6)
    assert changed.min() >= g and changed.max() < 2 * g


def test_model_runs_on_windows_longer_than_training_and_large_positions():
    cfg = _cfg(token_size=8)
    model = Backbone(cfg).eval()
    T = 3 * cfg.window
    x, pos = torch.randn(2, T, 8), _positions(2, T, start=10**7)
    out = model.decode(model.encode(x, pos), pos)
    assert out.shape == (2, T, 8) and torch.isfinite(out).all()


def test_attention_is_scaled_dot_product():
    cfg = _cfg(token_size=8)
    attn = Backbone(cfg).encoder.blocks[0].attn
    x = torch.randn(2, 6, cfg.d_model)
    B, T, C, H = 2, 6, cfg.d_model, cfg.n_heads
    q, k, v = attn.qkv(x).split(C, -1)
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
    w = F.softmax(q @ k.transpose(-1, -2) / (C // H) ** 0.5, -1)
    ref = attn.out((w @ v).transpose(1, 2).reshape(B, T, C))
    assert torch.allclose(attn(x), ref, atol=1e-5)


def _with_store_tokens(preset: str) -> BackboneConfig:
    """A backbone preset with the token size its tokenize preset writes (training reads it from
    the token store, the one source of the token size)."""
    cfg = build_config(BackboneConfig, BACKBONE_PRESETS, preset)
    size = TOKENIZE_PRESETS.get(preset, {}).get("token_size", DEFAULT_TOKEN_SIZE)
    return dataclasses.replace(cfg, token_size=size)


def test_paper_presets_follow_table_4():
    small, large = _with_store_tokens("paper-small"), _with_store_tokens("paper-large")
    for c in (small, large):
        assert (c.d_model, c.latent_dim, c.n_heads, c.window, c.token_size) == (
            1536, 128, 8, 512, 230,
        )  # fmt: skip
    assert (small.n_layers, large.n_layers) == (8, 16)
    # Table 4: ~456M and ~900M parameters (counted on the meta device)
    assert describe(small)["params"] == pytest.approx(456e6, rel=0.02)
    assert describe(large)["params"] == pytest.approx(900e6, rel=0.02)
    with pytest.raises(ConfigError, match="divisible"):
        Backbone(_cfg(d_model=30, n_heads=4))


def test_load_backbone_from_dir_and_atlas(tmp_path):
    cfg = _cfg(token_size=8)
    model = Backbone(cfg)
    d = save_backbone(model, tmp_path / "backbone")
    x, pos = torch.randn(1, 5, 8), _positions(1, 5)
    for path in (d, tmp_path):
        loaded = load_backbone(path)
        assert not loaded.training
        assert torch.equal(loaded.encode(x, pos), model.eval().encode(x, pos))
    with pytest.raises(WeightAtlasError, match="no trained backbone"):
        load_backbone(tmp_path / "nothing")


def test_skip_goes_through_the_bottleneck_as_the_tokens_pca(tmp_path):
    """``skip`` maps the features to ``latent_dim`` < token size and back, initialised as the
    tokens' PCA: tokens inside a rank-``latent_dim`` feature space come back exactly (the
    blocks' output maps start at zero), full-rank tokens only as far as the PCA keeps them;
    a saved config without the key loads as skip=False."""
    cfg = _cfg(token_size=16, latent_dim=8, skip=True)
    torch.manual_seed(0)
    model = Backbone(cfg).eval()
    assert tuple(model.encoder.skip.weight.shape) == (8, 18)  # 16 values + mean + log10 std
    pos = _positions(3, 10)
    # tokens whose standardized features span 8 dimensions: 6 patterns, any scale and offset
    basis = torch.randn(6, 16)
    pattern = torch.randn(3, 10, 6) @ basis
    x = pattern * torch.logspace(-3, 0, 3).view(3, 1, 1) + torch.tensor([0.0, 1.0, -0.2]).view(
        3, 1, 1
    )
    kept = model.init_skip_pca(x.reshape(-1, 16))
    assert kept == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        out = model.decode(model.encode(x, pos), pos)
    assert torch.allclose(out, x, rtol=1e-3, atol=1e-5)
    noise = torch.randn(3, 10, 16)
    assert model.init_skip_pca(noise.reshape(-1, 16)) < 0.8  # 8 of 16 noise dims: a real squeeze
    with torch.no_grad():
        r = model.decode(model.encode(noise, pos), pos)
    assert float(((r - noise) ** 2).sum() / ((noise - noise.mean()) ** 2).sum()) > 0.2
    # each token's mean (and std feature) passes exactly, however small next to its pattern: a
    # plain PCA of the features would drop the mean of weights ~1e-2 first
    tiny = 0.01 * noise + 2e-3 * torch.randn(3, 10, 1)
    model.init_skip_pca(tiny.reshape(-1, 16))
    with torch.no_grad():
        r = model.decode(model.encode(tiny, pos), pos)
    assert torch.allclose(r.mean(-1), tiny.mean(-1), rtol=1e-4, atol=1e-7)
    model.train()
    model.decode(model.encode(x, pos), pos).square().sum().backward()
    for p in (model.decoder.skip.weight, model.decoder.outp.weight, model.encoder.outp.weight):
        assert p.grad.abs().sum() > 0
    plain = Backbone(_cfg(token_size=16, latent_dim=8))
    extra = describe(cfg)["matmul_params"] - describe(plain.cfg)["matmul_params"]
    assert extra == describe(cfg)["params"] - describe(plain.cfg)["params"] == 2 * 18 * 8
    save_backbone(plain, tmp_path / "old", {"backbone": {"token_size": 16, "latent_dim": 8}})
    assert load_backbone(tmp_path / "old").cfg.skip is False


@pytest.mark.parametrize("preset", sorted(BACKBONE_PRESETS))
def test_every_preset_squeezes_tokens_through_a_bottleneck(preset):
    """latent_dim < token_size (the papers: about 2x, 230 -> 128), with the token size of the
    tokenize preset of the same name (else the default 64 that tokenize writes)."""
    cfg = _with_store_tokens(preset)
    assert cfg.latent_dim < cfg.token_size, cfg


def test_bf16_shipped_weights_load_into_fp32_and_decode_alike(tmp_path):
    """core.experiments.demo.shrink_weights halves the file; load_backbone rounds nothing more."""
    from core.experiments.demo import shrink_weights

    torch.manual_seed(0)
    model = Backbone(_cfg(token_size=16))
    d = save_backbone(model, tmp_path / "bb")
    before = (d / "model.safetensors").stat().st_size
    shrink_weights(d / "model.safetensors")
    assert (d / "model.safetensors").stat().st_size < 0.6 * before
    loaded = load_backbone(d)
    for (k, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert q.dtype == torch.float32 and torch.equal(q, p.to(torch.bfloat16).float()), k
    x, pos = torch.randn(2, 8, 16), _positions(2, 8)
    with torch.no_grad():
        a, b = model.eval().encode(x, pos), loaded.encode(x, pos)
    assert float((a - b).norm() / a.norm()) < 0.02


def test_window_head_sees_every_token_of_the_window():
    torch.manual_seed(0)
    cfg = _cfg(token_size=16, head="window")
    model = Backbone(cfg).eval()
    z = torch.randn(3, cfg.window, cfg.latent_dim)
    p = model.project(z)
    assert p.shape == (3, cfg.proj_dim)
    swapped = z.clone()
    swapped[:, [0, 1]] = z[:, [1, 0]]  # a mean-pooling head could not tell these apart
    assert not torch.allclose(model.project(swapped), p)
    mean_head = Backbone(_cfg(token_size=16)).eval()
    torch.testing.assert_close(mean_head.project(swapped), mean_head.project(z))
    with pytest.raises(WeightAtlasError, match="window head"):
        model.project(z[:, :-1])


def test_token_scale_is_a_change_of_units(tmp_path):
    """A raw-token backbone with ``token_scale`` s is the same backbone on tokens / s: its
    latents of x are the unscaled one's latents of x / s and its reconstructions s times theirs,
    in fp32 and through the packed inference copy; the scale is saved with the backbone."""
    from core.backbone.inference import PackedBackbone

    unit = Backbone(_cfg(token_size=24, token_norm=False))
    scaled = Backbone(_cfg(token_size=24, token_norm=False, token_scale=0.05))
    scaled.load_state_dict(unit.state_dict())
    x, pos = 0.05 * torch.randn(2, 20, 24), _positions(2, 20)
    with torch.no_grad():
        z = scaled.encode(x, pos)
        assert torch.allclose(z, unit.encode(x / 0.05, pos), atol=1e-6)
        assert torch.allclose(scaled.decode(z, pos), 0.05 * unit.decode(z, pos), atol=1e-7)
        assert torch.allclose(scaled(x, pos)[1], 0.05 * unit(x / 0.05, pos)[1], atol=1e-7)
    packed, packed_unit = PackedBackbone(scaled), PackedBackbone(unit)
    zp = packed.encode(x, pos)
    assert torch.equal(zp, packed_unit.encode(x / 0.05, pos))
    assert torch.equal(packed.decode(zp, pos), packed_unit.decode(zp, pos) * 0.05)
    assert load_backbone(save_backbone(scaled, tmp_path / "bb")).cfg.token_scale == 0.05
