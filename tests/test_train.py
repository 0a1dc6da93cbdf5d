"""Training: configs, exact resume after a SIGKILL, DDP == one process, non-finite stop, overfit.

Atlases here are real: small torch models tokenized by core.tokens into a token store, with
manifest splits, read back through core.store.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import core.backbone.train as train_mod
from core.atlas import Atlas, AtlasError, append_jsonl, read_jsonl
from core.backbone.bounds import linear_code_bounds, write_bounds
from core.backbone.config import build_configs
from core.backbone.model import Backbone, load_backbone, matmul_params
from core.backbone.train import train
from core.bench import write_store
from core.config import ConfigError
from core.errors import WeightAtlasError
from core.tokens.plan import tokenize_state_dict
from core.tokens.store import TokenStore
from core.tokens.tokenize import merge_index

ROOT = Path(__file__).resolve().parents[1]
FAST = {"steps": 12, "ckpt_every": 4, "eval_every": 6, "log_every": 1, "batch_size": 4}


def make_atlas(
    root: Path, n_train: int = 6, n_val: int = 2, token_size: int = 16, scheme: str = "dense"
) -> Atlas:
    """Small MLPs and CNNs (with norm layers) tokenized into ROOT/tokens, with a manifest."""
    atlas = Atlas.create(root)
    models, rows = {}, []
    for i in range(n_train + n_val):
        torch.manual_seed(i)
        w = 8 + 4 * (i % 3)
        if i % 2:
            m = nn.Sequential(nn.Linear(12, w), nn.LayerNorm(w), nn.ReLU(), nn.Linear(w, 5))
        else:
            m = nn.Sequential(
                nn.Conv2d(1, w // 2, 3), nn.BatchNorm2d(w // 2), nn.ReLU(), nn.Flatten(),
                nn.Linear(w // 2 * 4, 5),
            )  # fmt: skip
        with torch.no_grad():  # trained-looking norm layers, not the constant init
            for p in m.parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn_like(p))
        mid = f"test/model-{i}"
        models[mid] = tokenize_state_dict(m.state_dict(), scheme, token_size, model=m)
        split = "train" if i < n_train else "val"
        rows.append({"id": mid, "status": "accepted", "split": split})
    append_jsonl(atlas.manifest_path, rows)
    write_store(atlas.tokens_dir, models, scheme, token_size)
    merge_index(atlas)
    return atlas


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Atlas:
    return make_atlas(tmp_path_factory.mktemp("atlas"))


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}


def test_presets_and_overrides_route_to_the_right_config():
    b, t = build_configs("demo", {"d_model": "96", "steps": "7", "loss_norm": "token"})
    assert (b.d_model, t.steps, t.loss_norm) == (96, 7, "token")
    with pytest.raises(ConfigError, match="unknown TrainRunConfig key d_modle"):
        build_configs("ci", {"d_modle": 3})
    with pytest.raises(ConfigError):
        build_configs("ci", {"loss_norm": "bogus"})
    with pytest.raises(ConfigError, match="unknown preset"):
        build_configs("huge")
    b, t = build_configs("paper-large")
    assert (t.lr, t.weight_decay, t.batch_size, t.grad_accum) == (2e-5, 3e-9, 64, 2)


def test_train_writes_backbone_metrics_and_validation(atlas, tmp_path):
    out = tmp_path / "bb"
    summary = train(atlas.root, "ci", dict(FAST), out=out)
    assert summary["steps"] == 12
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "train_state/latest.json"):
        assert (out / name).exists(), name
    rows = list(read_jsonl(out / "metrics.jsonl"))
    vals = [r for r in rows if "val_r2" in r]
    assert [r["step"] for r in vals] == [6, 12]
    assert vals[-1]["val_models"] == 2 and set(vals[-1]["val_r2_by_kind"]) <= {
        "conv", "linear", "norm", "bias",
    }  # fmt: skip
    assert len(_losses(out)) == 12
    model = load_backbone(out)
    assert model.cfg.token_size == 16 and not model.training
    # a finished run is not redone; a different config in the same dir is refused
    assert train(atlas.root, "ci", dict(FAST), out=out)["steps"] == 12
    with pytest.raises(WeightAtlasError, match="different configuration"):
        train(atlas.root, "ci", {**FAST, "lr": 1e-2}, out=out)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_exact_resume_after_sigkill(atlas, tmp_path, dtype):
    over = {**FAST, "steps": 40, "ckpt_every": 5, "eval_every": 20, "dtype": dtype}
    ref = tmp_path / "ref"
    train(atlas.root, "ci", dict(over), out=ref)

    out = tmp_path / "killed"
    args = [a for k, v in over.items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "core.cli", "train", str(atlas.root), "--out", str(out)]
    cmd += ["--preset", "ci", *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "train_state" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 5:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 40, "the run finished before it could be killed"

    train(atlas.root, "ci", dict(over), out=out)
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = load_file(ref / "train_state" / "step-00000040" / "state.safetensors")
    sb = load_file(out / "train_state" / "step-00000040" / "state.safetensors")
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("optim."))
    assert _losses(ref) == _losses(out)  # metrics trimmed to the checkpoint, then re-logged


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(atlas, tmp_path, monkeypatch):
    real = train_mod.reconstruction_terms
    calls = {"n": 0}

    def poisoned(*args, **kw):  # a real loss that turns NaN at the 7th micro-batch
        s, n = real(*args, **kw)
        calls["n"] += 1
        return (s * float("nan"), n) if calls["n"] >= 7 else (s, n)

    monkeypatch.setattr(train_mod, "reconstruction_terms", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(WeightAtlasError, match=r"non-finite loss at step 7.*step 4\) is kept"):
        train(atlas.root, "ci", {**FAST, "eval_every": 100}, out=out)
    saved = load_file(out / "train_state" / "step-00000004" / "state.safetensors")
    weights = load_file(out / "model.safetensors")
    assert all(torch.equal(weights[k], saved[f"model.{k}"]) for k in weights)
    assert max(r["step"] for r in read_jsonl(out / "metrics.jsonl")) == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# bf16 matmuls round differently when each rank holds half the rows: losses agree to 5e-3
@pytest.mark.parametrize(("dtype", "rtol"), [("fp32", 1e-4), ("bf16", 5e-3)])
def test_torchrun_two_processes_match_one_process(atlas, tmp_path, dtype, rtol):
    over = {**FAST, "steps": 8, "batch_size": 6, "grad_accum": 2, "eval_every": 8, "dtype": dtype}
    single = tmp_path / "single"
    train(atlas.root, "ci", dict(over), out=single)
    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "core.cli", "train", str(atlas.root), "--out", str(ddp), "--preset", "ci",
        *[a for k, v in over.items() for a in ("--set", f"{k}={v}")],
    ]  # fmt: skip
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = _losses(single), _losses(ddp)
    assert len(a) == len(b) == 8
    assert a[-1] < a[0]
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=rtol, atol=1e-6), (a, b)
    va = [r for r in read_jsonl(single / "metrics.jsonl") if "val_r2" in r][-1]
    vb = [r for r in read_jsonl(ddp / "metrics.jsonl") if "val_r2" in r][-1]
    assert va["val_r2"] == pytest.approx(vb["val_r2"], abs=10 * rtol)


def test_ci_preset_overfits_a_small_token_set(tmp_path):
    small = make_atlas(tmp_path / "small", n_train=4, n_val=1)
    summary = train(small.root, "ci", {"eval_every": 1000}, out=tmp_path / "bb")
    assert summary["train_r2"] > 0.9, summary
    losses = _losses(tmp_path / "bb")
    assert losses[-1] < 0.2 * losses[0]


# ------------------------------------------------------------------ mixed precision


def test_bf16_and_fp32_paths_agree_on_a_tiny_model():
    """Same weights and windows: bf16 autocast stays within 2 % (relative L2) of fp32 in the
    reconstruction, 1 % in the loss, 2 % in the whole gradient and 15 % in each tensor's
    (measured: 0.7 %, 0.1 %, 0.6 % and at most 9 %, a LayerNorm bias)."""
    bcfg, tcfg = build_configs("ci", {"token_size": 16})
    torch.manual_seed(0)
    model = Backbone(bcfg)
    x = torch.randn(4, bcfg.window, 16) * torch.logspace(-3, 0, 4).view(4, 1, 1)
    mask = torch.ones_like(x, dtype=torch.bool)
    n = torch.arange(bcfg.window)
    pos = torch.stack([n, n // 5, n % 5], -1).expand(4, -1, 3)
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model.zero_grad()
        with train_mod.autocast(torch.device("cpu"), dt):
            _, parts, proj = model(x, pos, factored=True)
        s, cnt = train_mod.reconstruction_terms(parts, x, mask)
        p1, p2 = proj.float().chunk(2)
        loss = s / cnt + 0.05 * train_mod.nt_xent(p1, p2)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        out[name] = (parts.compose().float().detach(), float(loss.detach()), grads)
    (r32, l32, g32), (r16, l16, g16) = out["fp32"], out["bf16"]
    assert r16.dtype == torch.float32
    assert float((r16 - r32).norm() / r32.norm()) < 0.02
    assert abs(l16 - l32) / l32 < 0.01
    flat32, flat16 = (torch.cat([g[k].flatten() for k in g32]) for g in (g32, g16))
    assert float((flat16 - flat32).norm() / flat32.norm()) < 0.02
    for k in g32:
        assert float((g16[k] - g32[k]).norm() / g32[k].norm().clamp_min(1e-12)) < 0.15, k


def test_bf16_training_matches_fp32_training(atlas, tmp_path):
    """The whole loop (augmentations, MLN, NT-Xent, AdamW) in both dtypes: the same loss curve
    within 5 % per logged step, master weights kept in fp32."""
    over = {**FAST, "eval_every": 12}
    runs = {
        dt: train(atlas.root, "ci", {**over, "dtype": dt}, out=tmp_path / dt)
        for dt in ("fp32", "bf16")
    }
    assert runs["fp32"]["dtype"] == "float32" and runs["bf16"]["dtype"] == "bfloat16"
    a, b = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert a[-1] < 0.8 * a[0]
    assert all(abs(x - y) <= 0.05 * x for x, y in zip(a, b, strict=True)), (a, b)
    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in weights.values())


# ------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset", ["demo", "demo-long", "paper-small", "paper-large"])
def test_preset_shapes_feed_the_matrix_units(preset):
    """Widths are multiples of 64, head sizes and windows of 16, and a step carries >= 4,096
    tokens (two views), the shapes where bf16 autocast pays on CPU. The latent width is set by
    the bottleneck (demo: 32 of 64); its matmuls are under 2 % of a step's FLOPs."""
    b, t = build_configs(preset)
    assert b.d_model % 64 == 0 and (b.d_model // b.n_heads) % 16 == 0, b
    assert int(b.mlp_ratio * b.d_model) % 64 == 0
    assert b.window % 16 == 0 and b.proj_dim % 16 == 0
    # encoder output map, decoder input map, head input, and both skips
    latent = 3 * b.latent_dim * b.d_model + 2 * (b.token_size + 2) * b.latent_dim * b.skip
    assert latent < 0.02 * matmul_params(b), (latent, matmul_params(b))
    assert 2 * t.batch_size * t.grad_accum * b.window >= 4096
    assert t.dtype == "auto"


def test_demo_long_is_the_demo_backbone_trained_longer():
    b, t = build_configs("demo")
    bl, tl = build_configs("demo-long")
    assert b == bl and tl.steps > t.steps and tl.eval_every <= 100
    assert t.canonical and tl.canonical  # the form `embed` encodes by default


# ------------------------------------------------------------------ per-layer validation


def test_validation_reports_per_layer_medians_and_keeps_the_best_checkpoint(atlas, tmp_path):
    out = tmp_path / "bb"
    over = {**FAST, "steps": 18, "eval_every": 6, "ckpt_every": 6}
    summary = train(atlas.root, "ci", over, out=out)
    vals = [r for r in read_jsonl(out / "metrics.jsonl") if "val_r2" in r]
    assert [r["step"] for r in vals] == [6, 12, 18]
    for r in vals:
        kinds = r["val_layer_r2_median_by_kind"]
        assert set(kinds) == set(r["val_layers_by_kind"]) >= {"conv", "linear", "norm"}
        assert set(r["val_layer_std_ratio_median_by_kind"]) == set(kinds)
        assert r["val_layer_r2_median_conv_linear"] is not None
    # the per-layer file: one row per layer of each val model, medians as in metrics.jsonl
    best = max(vals, key=lambda r: r["val_layer_r2_median_conv_linear"])
    assert summary["best"]["step"] == best["step"]
    rows = list(read_jsonl(out / "val_layers.jsonl"))
    store_layers = sum(
        len(TokenStore(atlas.tokens_dir).layers(m)) for m in ("test/model-6", "test/model-7")
    )
    assert len(rows) == store_layers and {r["step"] for r in rows} == {best["step"]}
    conv = [r["r2"] for r in rows if r["kind"] == "conv" and r["r2"] is not None]
    assert np.median(conv) == pytest.approx(best["val_layer_r2_median_by_kind"]["conv"])
    # model.safetensors holds the selected step's weights: re-scoring them gives its figures
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["step"] == best["step"]
        and cfg["selected"]["value"] == best["val_layer_r2_median_conv_linear"]
    )
    model = load_backbone(out)
    store = TokenStore(atlas.tokens_dir)
    ids = ["test/model-6", "test/model-7"]
    ev = train_mod.Evaluator(store, ids, model.cfg.window, train_mod._kinds(store, store.ids))
    _, tcfg = build_configs("ci", over)
    again = ev.run(model, train_mod.setup_dist("cpu"), 4, tcfg)
    assert again["layer_r2_median_conv_linear"] == pytest.approx(
        best["val_layer_r2_median_conv_linear"], abs=1e-6
    )


def test_patience_stops_after_evaluations_without_a_better_score(atlas, tmp_path, monkeypatch):
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    real = train_mod.Evaluator.run

    def run(self, *a, **kw):  # real scoring, with a falling selection score
        res = real(self, *a, **kw)
        if kw.get("with_layers"):
            res["layer_r2_median_conv_linear"] = next(scores)
        return res

    monkeypatch.setattr(train_mod.Evaluator, "run", run)
    out = tmp_path / "bb"
    summary = train(
        atlas.root, "ci", {**FAST, "steps": 30, "eval_every": 3, "patience": 2}, out=out
    )
    assert summary["stopped_early"] and summary["steps"] == 9
    assert summary["best"]["step"] == 3
    assert json.loads((out / "config.json").read_text())["step"] == 3
    assert json.loads((out / "train_state" / "latest.json").read_text())["step"] == 9


def test_skip_backbone_scores_its_starting_linear_code_as_a_candidate(atlas, tmp_path, monkeypatch):
    """With ``skip`` the model starts as the tokens' linear code; step 0 is validated, logged
    (the curve's first point) and kept unless training beats it (here the score falls)."""
    scores = iter([0.9, 0.5, 0.4])
    real = train_mod.Evaluator.run

    def run(self, *a, **kw):  # real scoring, with a falling selection score
        res = real(self, *a, **kw)
        if kw.get("with_layers"):
            res["layer_r2_median_conv_linear"] = next(scores)
        return res

    monkeypatch.setattr(train_mod.Evaluator, "run", run)
    out = tmp_path / "bb"
    over = {**FAST, "steps": 6, "eval_every": 3, "ckpt_every": 3, "skip": True, "latent_dim": 8}
    summary = train(atlas.root, "ci", over, out=out)
    vals = [r for r in read_jsonl(out / "metrics.jsonl") if "val_r2" in r]
    assert [r["step"] for r in vals] == [0, 3, 6]
    assert summary["best"]["step"] == 0 and summary["best"]["value"] == 0.9
    assert json.loads((out / "config.json").read_text())["step"] == 0
    kept = load_file(out / "model.safetensors")  # the linear code: the blocks' maps are zero
    assert kept["encoder.outp.weight"].abs().max() == 0
    assert kept["decoder.outp.weight"].abs().max() == 0
    assert json.loads((out / "train_state" / "latest.json").read_text())["step"] == 6
    # a finished run resumes without scoring step 0 again
    assert train(atlas.root, "ci", over, out=out)["steps"] == 6
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "val_r2" in r] == [0, 3, 6]


def test_a_run_from_before_a_new_config_field_resumes(atlas, tmp_path):
    """A checkpoint whose saved config lacks a field added since (here ``skip_init``) resumes
    as the same run: the missing field counts at its default."""
    out = tmp_path / "bb"
    over = {**FAST, "steps": 4, "eval_every": 4, "ckpt_every": 4}
    train(atlas.root, "ci", over, out=out)
    state = (
        out / "train_state" / json.loads((out / "train_state" / "latest.json").read_text())["dir"]
    )
    saved = json.loads((state / "state.json").read_text())
    del saved["config"]["backbone"]["skip_init"]
    (state / "state.json").write_text(json.dumps(saved))
    assert train(atlas.root, "ci", over, out=out)["steps"] == 4
    with pytest.raises(WeightAtlasError, match="different configuration"):
        train(atlas.root, "ci", {**over, "skip_init": "random", "skip": True}, out=out)


def test_random_skip_init_learns_the_linear_path_from_the_linear_init(atlas, tmp_path):
    """``skip_init="random"`` (the MLN ablation's arms): no PCA start and no step-0 candidate;
    the skip maps start as the Linear init and training moves them."""
    over = {**FAST, "steps": 6, "eval_every": 3, "ckpt_every": 3, "skip": True, "latent_dim": 8}
    out = tmp_path / "bb"
    summary = train(atlas.root, "ci", {**over, "skip_init": "random"}, out=out)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "val_r2" in r] == [3, 6]
    assert summary["best"]["step"] in (3, 6)
    pca = tmp_path / "pca"
    train(atlas.root, "ci", {**over, "steps": 3}, out=pca)
    start = load_file(pca / "train_state" / "step-00000003" / "state.safetensors")
    kept = load_file(out / "model.safetensors")
    w = kept["encoder.skip.weight"]
    assert not torch.allclose(w, start["model.encoder.skip.weight"], atol=1e-2)
    # rows of the PCA code are orthonormal; a Linear init of std 1/sqrt(D) is not
    assert not torch.allclose(w @ w.T, torch.eye(8), atol=0.05)


def test_linear_code_bounds_grow_with_the_latent_and_are_exact_at_full_width(atlas, tmp_path):
    """The bounds behind docs/results/backbone.md, on real tokenized models: per-layer R^2 of
    each linear code rises with the latent width, the centred PCA of full width is exact, and
    ``write_bounds`` writes the JSON and the figure (with a trained run as a point)."""
    rows = linear_code_bounds(atlas.root, token_sizes=(16, 8), ratios=(0.25, 0.5, 1.0))
    assert [(r["token"], r["latent"]) for r in rows] == [
        (16, 4),
        (16, 8),
        (16, 16),
        (8, 3),
        (8, 4),
        (8, 8),
    ]
    for D in (16, 8):
        mine = [r for r in rows if r["token"] == D]
        for code in ("stats", "raw"):
            r2 = [r[f"{code}_r2_conv_linear"] for r in mine]
            assert r2 == sorted(r2) and r2[0] < 0.9, (code, r2)
        assert mine[-1]["raw_r2_conv_linear"] == pytest.approx(1.0, abs=1e-9)
        assert 0 < mine[0]["energy_pattern"] < mine[-1]["energy_pattern"] <= 1 + 1e-9
    run = tmp_path / "run"
    train(
        atlas.root,
        "ci",
        {**FAST, "steps": 6, "eval_every": 3, "skip": True, "latent_dim": 8},
        out=run,
    )
    out, fig = tmp_path / "b.json", tmp_path / "b.png"
    write_bounds(atlas.root, out, (16,), (0.5, 1.0), figure=fig, runs=[run])
    assert [r["latent"] for r in json.loads(out.read_text())] == [8, 16]
    assert fig.stat().st_size > 10_000 and fig.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(AtlasError, match="not a directory"):
        linear_code_bounds(tmp_path / "nowhere")


def test_linear_code_bounds_of_per_channel_tokens_use_the_tokens_as_stored(tmp_path):
    """A sparse store (a token per output channel) is bounded at its own token size on its
    stored tokens: conv and linear layers get their own medians, the full-width PCA is exact,
    and another token size is refused in one line (a channel row cannot be re-cut)."""
    sparse = make_atlas(tmp_path / "sparse", token_size=12, scheme="sparse")
    rows = linear_code_bounds(sparse.root, token_sizes=(12,), ratios=(0.25, 1.0))
    assert [r["latent"] for r in rows] == [3, 12]
    low, full = rows
    for kind in ("conv", "linear"):
        assert low[f"raw_r2_{kind}"] < full[f"raw_r2_{kind}"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(WeightAtlasError, match="sparse tokens can only be bounded at their own"):
        linear_code_bounds(sparse.root, token_sizes=(16,))


def test_train_summary_next_command_uses_the_out_folder(tmp_path):
    """Issue 27: after ``train --out X`` the next command embeds with X, not ATLAS/backbone."""
    from core.atlas import Atlas
    from core.cli.backbone import train_summary_text

    atlas = Atlas.create(tmp_path / "atlas")
    other = tmp_path / "runs" / "bb"
    text = train_summary_text({"out": str(other), "steps": 1}, atlas.root, "demo")
    assert text.splitlines()[-1] == f"next: weightatlas embed {atlas.root} --backbone {other}"
    text = train_summary_text({"out": str(atlas.backbone_dir), "steps": 1}, atlas.root, "demo")
    assert text.splitlines()[-1] == f"next: weightatlas embed {atlas.root}"


def test_stages_of_your_own_atlas_share_one_default_preset():
    """Issue 27: collect, train, embed and evaluate default to the same preset (demo)."""
    from core.cli import USER_PRESET, build_parser

    parser = build_parser()
    for stage in ("collect", "train", "embed", "evaluate"):
        args = parser.parse_args([stage, "ATLAS"])
        assert args.preset == USER_PRESET == "demo", stage


def test_train_says_what_it_kept_warns_on_a_family_left_out_and_shows_progress_early(
    tmp_path, capsys, monkeypatch
):
    """Issue 27: the summary names the kept checkpoint (step and score), a family the split put
    only in val/test is warned about (at the start and in the summary), and the stage reports on
    stderr within 10 s of being called (before its preparation: optimizer, PCA, step-0 scores)."""
    from core.cli.backbone import train_summary_text

    atlas = make_atlas(tmp_path / "atlas")
    rows = [  # families: the CNNs (even ids) all in val, the MLPs (odd) train as before
        {
            "id": f"test/model-{i}",
            "status": "accepted",
            "family": "cnn" if i % 2 == 0 else "mlp",
            "split": "val" if i % 2 == 0 else ("train" if i < 6 else "val"),
        }
        for i in range(8)
    ]
    append_jsonl(atlas.manifest_path, rows)
    first: list[float] = []

    class Stamped:  # records when the first line reaches stderr
        def __init__(self, inner):
            self.inner = inner

        def write(self, s: str) -> int:
            if s.strip() and not first:
                first.append(time.perf_counter())
            return self.inner.write(s)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    capsys.readouterr()
    monkeypatch.setattr(sys, "stderr", Stamped(sys.stderr))
    t0 = time.perf_counter()
    summary = train(atlas.root, "ci", dict(FAST), out=tmp_path / "bb")
    assert first and first[0] - t0 < 10, (first, t0)
    text = train_summary_text(summary, atlas.root, "ci")
    err = capsys.readouterr().err
    warning = "warning: family 'cnn' is not in the train split (4 model(s) in val/test only)"
    assert warning in err and warning in text, (text, err)
    assert err.index(warning) < err.index("train:   0%")  # before the run, not after it
    assert summary["families_not_trained"] == {"cnn": 4} and "'mlp'" not in text
    best = json.loads((tmp_path / "bb" / "config.json").read_text()).get("selected")
    kept = [ln for ln in text.splitlines() if ln.startswith("kept: ")]
    assert len(kept) == 1, text
    if best:  # the summary names the step and score that config.json's selection records
        assert f"step {best['step']}, {best['metric']} {best['value']:.3f}" in kept[0], text
    else:
        assert kept[0].startswith("kept: the last step (12)"), text


def test_canonical_training_reads_every_window_in_canonical_form(
    atlas_factory, tmp_path, monkeypatch
):
    """``train.canonical``: the training windows, the views and validation go through the
    canonical store (the zoo's mlp and cnn models have unit groups), and the config says so."""
    from conftest import TINY

    from core.backbone import views

    root = atlas_factory(TINY)

    seen: list[str] = []
    real = views.CanonicalStore._canonical

    def spy(self, model_id):
        seen.append(model_id)
        return real(self, model_id)

    monkeypatch.setattr(views.CanonicalStore, "_canonical", spy)
    out = tmp_path / "bb"
    summary = train(root, "ci", {**FAST, "canonical": True, "permute": True}, out=out)
    assert summary["steps"] == 12
    assert json.loads((out / "config.json").read_text())["train"]["canonical"] is True
    split = {r["id"]: r["split"] for r in Atlas.open(root).accepted()}
    assert {split[m] for m in seen} == {"train", "val"}  # training windows and validation


def test_scale_tokens_records_the_training_tokens_rms(atlas, tmp_path):
    """``scale_tokens`` (raw tokens): the run sets ``backbone.token_scale`` to the RMS of the
    training models' real values and saves it with the backbone; without it the scale is 1."""
    from core.tokens.store import TokenStore

    over = {**FAST, "steps": 4, "eval_every": 4, "ckpt_every": 4, "token_norm": False}
    train(atlas.root, "ci", {**over, "scale_tokens": True}, out=tmp_path / "scaled")
    train(atlas.root, "ci", over, out=tmp_path / "plain")
    store = TokenStore(atlas.tokens_dir)
    ids = [r["id"] for r in atlas.accepted("train") if r["id"] in store]
    values = torch.cat([store.get(m).tokens[store.get(m).mask].double() for m in ids])
    rms = float(values[values != 0].pow(2).mean().sqrt())
    assert load_backbone(tmp_path / "scaled").cfg.token_scale == pytest.approx(rms, rel=1e-6)
    assert 0 < rms < 1 and load_backbone(tmp_path / "plain").cfg.token_scale == 1.0
