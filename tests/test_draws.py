"""core.generation.draws: KDE and Gaussian draws of latent tokens from prompts."""

from __future__ import annotations

import torch

from core.generation.draws import draw_latents


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_kde_draws_are_independent_per_token():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 40, 6, dtype=torch.float64)  # one prompt: draws = prompt + noise
    draws, centres = draw_latents(z, 400, g, bandwidth_floor=0.1)
    noise = draws - z  # (K, N, L)
    assert (centres == 0).all()
    # every token has its own noise: no two tokens share a noise vector, correlations ~ 0
    for n, m in [(0, 1), (5, 30), (17, 18)]:
        assert not torch.allclose(noise[:, n], noise[:, m])
        assert abs(_corr(noise[:, n, 0], noise[:, m, 0])) < 0.2
    # and the noise has the bandwidth it claims (floor * per-dim std over all tokens)
    bw = 0.1 * z.reshape(-1, 6).std(0)
    ratio = noise.reshape(-1, 6).std(0) / bw
    assert torch.all((ratio > 0.85) & (ratio < 1.15)), ratio


def test_kde_modes_choose_centres_per_token_or_per_draw():
    z = torch.randn(4, 50, 3, dtype=torch.float64) * 10
    kw = dict(bandwidth_scale=0.05, bandwidth_floor=0.0)
    ind, c_ind = draw_latents(z, 20, torch.Generator().manual_seed(1), mode="independent", **kw)
    joint, c_joint = draw_latents(z, 20, torch.Generator().manual_seed(1), mode="joint", **kw)
    # independent: kernel centres vary along one draw's tokens; joint: one prompt per draw
    assert all(len(set(c_ind[k].tolist())) > 1 for k in range(20))
    assert all(len(set(c_joint[k].tolist())) == 1 for k in range(20))
    assert len(set(c_joint[:, 0].tolist())) > 1
    # in both modes each token lies close to its own centre (noise is small next to the spread)
    for draws, centres in ((ind, c_ind), (joint, c_joint)):
        picked = z[centres, torch.arange(50)[None, :]]
        assert float((draws - picked).abs().mean()) < 0.1 * float(z.std())
    # joint-mode noise is still independent across tokens
    noise = joint - z[c_joint, torch.arange(50)[None, :]]
    assert not torch.allclose(noise[:, 0], noise[:, 1])


def test_gaussian_prior_matches_prompt_moments():
    z = torch.randn(5, 30, 4, dtype=torch.float64) * 3 + 7
    draws, centres = draw_latents(z, 3000, torch.Generator().manual_seed(2), prior="gaussian")
    assert (centres == -1).all()
    torch.testing.assert_close(draws.mean(0), z.mean(0), atol=0.35, rtol=0)
    torch.testing.assert_close(draws.std(0), z.std(0), atol=0.35, rtol=0.15)
