"""Losses: MLN ignores padding and matches Eq. 1 of paper 001, NT-Xent, augmentations, R^2."""

import numpy as np
import pytest
import torch
from conftest import AtlasSpec
from sklearn.metrics import r2_score

from core.backbone.losses import (
    R2Meter,
    augment,
    combined_loss,
    nt_xent,
    reconstruction_loss,
    token_stats,
)
from core.tokens.store import TokenStore


def _batch(seed: int = 0, B: int = 3, T: int = 5, D: int = 8):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(B, T, D, generator=g) * torch.rand(B, T, 1, generator=g) * 3
    pred = target + 0.3 * torch.randn(B, T, D, generator=g)
    valid = torch.randint(1, D + 1, (B, T), generator=g)
    mask = torch.arange(D) < valid.unsqueeze(-1)
    return pred, target * mask, mask


def test_mln_ignores_padding_values():
    pred, target, mask = _batch()
    base = reconstruction_loss(pred, target, mask, "masked")
    junk = torch.randn_like(pred) * 100
    changed = reconstruction_loss(
        torch.where(mask, pred, junk), torch.where(mask, target, -junk), mask, "masked"
    )
    assert torch.allclose(base, changed, rtol=1e-6, atol=0)
    # the ablation (statistics and error over padding too) does see padding
    tok = reconstruction_loss(pred, target, mask, "token")
    assert not torch.allclose(tok, reconstruction_loss(pred, target + ~mask * 5.0, mask, "token"))


def test_mln_matches_equation_1_by_hand():
    """Both target and prediction use the *target* token's mean/std over its real values."""
    pred, target, mask = _batch(1)
    eps = 1e-5
    errs = []
    for b in range(target.shape[0]):
        for t in range(target.shape[1]):
            m = mask[b, t]
            real_t, real_p = target[b, t][m], pred[b, t][m]
            mu, sd = real_t.mean(), (real_t.var(unbiased=False) + eps).sqrt()
            errs.append(((real_p - mu) / sd - (real_t - mu) / sd) ** 2)
    expected = torch.cat(errs).mean()
    got = reconstruction_loss(pred, target, mask, "masked", eps)
    assert torch.allclose(got, expected, rtol=1e-5)


def test_mln_is_scale_invariant_per_token_and_none_is_not():
    pred, target, _ = _batch(2)
    mask = torch.ones_like(target, dtype=torch.bool)
    scale = torch.tensor([1e-3, 1.0, 1e3]).view(3, 1, 1)
    a = reconstruction_loss(pred, target, mask, "masked", eps=0.0)
    b = reconstruction_loss(pred * scale, target * scale, mask, "masked", eps=0.0)
    assert torch.allclose(a, b, rtol=1e-4)
    plain = reconstruction_loss(pred, target, mask, "none")
    assert torch.allclose(plain, ((pred - target)[mask] ** 2).mean())
    assert not torch.allclose(
        plain, reconstruction_loss(pred * scale, target * scale, mask, "none")
    )


def test_token_stats_use_real_values_only():
    x = torch.tensor([[[1.0, 3.0, 100.0, -50.0]]])
    mask = torch.tensor([[[True, True, False, False]]])
    mean, std = token_stats(x, mask, eps=0.0)
    assert mean.item() == pytest.approx(2.0) and std.item() == pytest.approx(1.0)


def test_nt_xent_prefers_matching_views():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(16, 32, generator=g)
    matched = nt_xent(p, p + 0.01 * torch.randn(16, 32, generator=g))
    shuffled = nt_xent(p, p[torch.randperm(16, generator=g)])
    assert matched < 0.1 < shuffled
    # identical projections everywhere: chance level, log(2B - 1)
    same = nt_xent(torch.ones(8, 4), torch.ones(8, 4))
    assert same.item() == pytest.approx(torch.log(torch.tensor(15.0)).item(), rel=1e-5)
    assert combined_loss(torch.tensor(2.0), torch.tensor(4.0), 0.25).item() == pytest.approx(2.5)


def test_augment_keeps_padding_and_masks_a_fraction():
    _, target, mask = _batch(3, B=4, T=64, D=32)
    g = torch.Generator().manual_seed(0)
    normal, uniform = torch.randn(target.shape, generator=g), torch.rand(target.shape, generator=g)
    view = augment(target, mask, 0.1, 0.25, normal, uniform)
    assert (view[~mask] == 0).all()
    zeroed = ((view == 0) & mask).sum() / mask.sum()
    assert 0.2 < zeroed < 0.3
    clean = augment(target, mask, 0.0, 0.0, normal, uniform)
    assert torch.equal(clean, target)
    noisy = augment(target, mask, 0.1, 0.0, normal, uniform)
    rel = ((noisy - target)[mask].std() / target[mask].std()).item()
    assert 0.02 < rel < 0.3


def test_r2_meter_matches_sklearn_over_batches():
    pred, target, mask = _batch(4, B=6, T=10, D=8)
    groups = {"even": (torch.arange(10) % 2 == 0).expand(6, 10)}
    meter = R2Meter()
    for s in (slice(0, 2), slice(2, 6)):
        meter.update(pred[s], target[s], mask[s], {k: v[s] for k, v in groups.items()})
    r2 = meter.compute()
    assert r2["all"] == pytest.approx(r2_score(target[mask].numpy(), pred[mask].numpy()), rel=1e-6)
    sel = mask & groups["even"].unsqueeze(-1)
    assert r2["even"] == pytest.approx(r2_score(target[sel].numpy(), pred[sel].numpy()), rel=1e-6)


def test_factored_mln_equals_mln_of_the_composed_tokens_when_stats_are_exact() -> None:
    """With the target's own mean and std as shift/scale, the factored loss is plain MLN."""
    from core.backbone.losses import Factored, factored_terms, token_stats

    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 5, 8, generator=g) * 3.0 + 1.0
    mask = torch.rand(2, 5, 8, generator=g) > 0.3
    mean, std = token_stats(target, mask)
    pattern = torch.randn(2, 5, 8, generator=g)
    parts = Factored(pattern, mean, std.log())
    s, n = factored_terms(parts, target, mask, "masked")
    assert torch.allclose(s / n, reconstruction_loss(parts.compose(), target, mask, "masked"))
    # padding changes nothing; a wrong shift or scale costs, per real value of its token
    assert torch.allclose(factored_terms(parts, target + ~mask * 9.0, mask)[0], s)
    worse = factored_terms(Factored(pattern, mean + std, std.log()), target, mask)[0]
    assert worse > s


# ---------------------------------------------------------------- the MLN ablation's arms by hand


def test_token_arm_uses_padding_in_statistics_and_error_by_hand() -> None:
    """Per-token normalization *including* padding (001 D.4.1 "token normalization")."""
    pred, target, mask = _batch(5)
    eps = 1e-5
    errs = []
    for b in range(target.shape[0]):
        for t in range(target.shape[1]):
            tt, pp = target[b, t], pred[b, t]  # all D values, padding zeros included
            mu, sd = tt.mean(), (tt.var(unbiased=False) + eps).sqrt()
            errs.append(((pp - mu) / sd - (tt - mu) / sd) ** 2)
    expected = torch.cat(errs).mean()
    assert torch.allclose(
        reconstruction_loss(pred, target, mask, "token", eps), expected, rtol=1e-5
    )


def test_none_arm_is_plain_mse_over_real_values_by_hand() -> None:
    pred, target, mask = _batch(6)
    expected = sum(
        float((pred[b, t, k] - target[b, t, k]) ** 2)
        for b in range(mask.shape[0])
        for t in range(mask.shape[1])
        for k in range(mask.shape[2])
        if mask[b, t, k]
    ) / int(mask.sum())
    assert float(reconstruction_loss(pred, target, mask, "none")) == pytest.approx(
        expected, rel=1e-5
    )


def test_layer_arm_needs_layer_statistics() -> None:
    pred, target, mask = _batch(7)
    with pytest.raises(ValueError, match="layer_stats"):
        reconstruction_loss(pred, target, mask, "layer")


def test_factored_arm_by_hand() -> None:
    """token_norm + masked: pattern error vs the standardized target, plus the statistics error
    (shift against the token mean in units of sqrt(std^2 + (0.1 mean)^2), log scale against log
    std) on each real value."""
    from core.backbone.losses import Factored, factored_terms

    g = torch.Generator().manual_seed(3)
    target = torch.randn(2, 4, 6, generator=g) * 2.0 + 0.5
    mask = torch.rand(2, 4, 6, generator=g) > 0.25
    mask[..., 0] = True
    parts = Factored(
        torch.randn(2, 4, 6, generator=g),
        torch.randn(2, 4, 1, generator=g),
        torch.randn(2, 4, 1, generator=g),
    )
    eps = 1e-5
    total, count = 0.0, 0
    for b in range(2):
        for t in range(4):
            m = mask[b, t]
            real = target[b, t][m].double()
            mu, sd = real.mean(), (real.var(unbiased=False) + eps).sqrt()
            s = (sd**2 + (0.1 * mu) ** 2).sqrt()
            stats = ((parts.shift[b, t, 0] - mu) / s) ** 2 + (
                parts.log_scale[b, t, 0] - sd.log()
            ) ** 2
            pat = (parts.pattern[b, t][m].double() - (real - mu) / sd) ** 2
            total += float((pat + stats).sum())
            count += int(m.sum())
    s_, n_ = factored_terms(parts, target, mask, "masked", eps)
    assert float(s_ / n_) == pytest.approx(total / count, rel=1e-5)


@pytest.fixture(scope="module")
def small_store(atlas_factory):
    """A real token store: a zoo of 3 mlp runs on wine, collected and tokenized (dense, 16)."""
    spec = AtlasSpec(("mlp",), ("wine:3",), token_size=16)
    atlas = atlas_factory(spec)
    return atlas.parent / "zoo", TokenStore(atlas / "tokens")


def test_layer_arm_matches_per_layer_zoo_statistics_by_hand(small_store) -> None:
    """LWLN: each value standardized by its layer's mean/std over all training models' weights,
    read here straight from the zoo's safetensors files (not from the token store)."""
    from safetensors.numpy import load_file

    from core.backbone.losses import LayerStats

    zoo_dir, store = small_store
    ids = sorted(store.ids)
    train, other = ids[:-1], ids[-1]
    # per-layer statistics from the weight files of the training models
    values: dict[str, list] = {}
    for mid in train:
        name = mid.split("/")[-1]
        snap = next((zoo_dir / f"models--weightatlas-zoo--{name}" / "snapshots").iterdir())
        for k, v in load_file(str(snap / "model.safetensors")).items():
            values.setdefault(k, []).append(v.astype(np.float64).ravel())
    eps = 1e-5
    hand = {
        k: (np.concatenate(v).mean(), np.sqrt(np.concatenate(v).var() + eps))
        for k, v in values.items()
    }
    stats = LayerStats.from_store(store, train, eps)
    for (name, _), (mu, sd) in stats.table.items():
        assert mu == pytest.approx(hand[name][0], rel=1e-6, abs=1e-9)
        assert sd == pytest.approx(hand[name][1], rel=1e-6)
    # the loss of a window of a model the statistics never saw, by hand
    T = store.n_tokens(other) + 3  # runs past the end: padded, masked tokens
    w = store.window(other, 0, T)
    mean, std = stats.window(store, other, 0, T)
    g = torch.Generator().manual_seed(0)
    pred = w["tokens"] + 0.1 * torch.randn(w["tokens"].shape, generator=g)
    got = reconstruction_loss(
        pred[None], w["tokens"][None], w["mask"][None], "layer", eps, (mean[None], std[None])
    )
    errs = []
    for e in store.layers(other):
        mu, sd = hand[e.name]
        rows = slice(e.offset, e.offset + e.count)
        real = w["mask"][rows]
        errs.append(((pred[rows][real].double() - w["tokens"][rows][real].double()) / sd) ** 2)
    assert float(got) == pytest.approx(float(torch.cat(errs).mean()), rel=1e-5)
    # a layer no training model has falls back to the model's own statistics
    alone = LayerStats({}, eps)
    m2, s2 = alone.per_token(store, other)
    tok = store.get(other)
    e = store.layers(other)[0]
    own = tok.tokens[e.offset : e.offset + e.count][
        tok.mask[e.offset : e.offset + e.count]
    ].double()
    assert float(s2[e.offset]) == pytest.approx(
        float((own.var(unbiased=False) + eps).sqrt()), rel=1e-6
    )


def test_multiplicative_noise_scales_each_value_and_keeps_padding():
    _, target, mask = _batch(4, B=2, T=16, D=32)
    g = torch.Generator().manual_seed(1)
    normal, uniform = torch.randn(target.shape, generator=g), torch.rand(target.shape, generator=g)
    view = augment(target, mask, 0.1, 0.0, normal, uniform, multiplicative=True)
    assert (view[~mask] == 0).all()
    torch.testing.assert_close(view[mask], (target * (1 + 0.1 * normal))[mask])
    zero = target.clone()
    zero[mask] = 0.0  # a value of zero stays zero: the noise is relative to the value
    assert (augment(zero, mask, 0.1, 0.0, normal, uniform, multiplicative=True) == 0).all()
