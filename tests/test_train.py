"""Training: configs, exact resume after a SIGKILL, DDP == one process, non-finite stop, overfit.

Atlases here are real: small torch models tokenized by core.tokenize into a token store, with
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

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import core.train as train_mod
from core.atlas import Atlas, append_jsonl, read_jsonl
from core.backbone import load_backbone
from core.config import ConfigError
from core.errors import WeightAtlasError
from core.tokenize import merge_index, tokenize_state_dict, write_store
from core.train import build_configs, train

ROOT = Path(__file__).resolve().parents[1]
FAST = {"steps": 12, "ckpt_every": 4, "eval_every": 6, "log_every": 1, "batch_size": 4}


def make_atlas(root: Path, n_train: int = 6, n_val: int = 2, token_size: int = 16) -> Atlas:
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
        models[mid] = tokenize_state_dict(m.state_dict(), "dense", token_size, model=m)
        split = "train" if i < n_train else "val"
        rows.append({"id": mid, "status": "accepted", "split": split})
    append_jsonl(atlas.manifest_path, rows)
    write_store(atlas.tokens_dir, models, "dense", token_size)
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
    with pytest.raises(ConfigError, match="unknown train key"):
        build_configs("ci", {"d_modle": 3})
    with pytest.raises(ConfigError):
        build_configs("ci", {"loss_norm": "layer"})
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


def test_exact_resume_after_sigkill(atlas, tmp_path):
    over = {**FAST, "steps": 40, "ckpt_every": 5, "eval_every": 20}
    ref = tmp_path / "ref"
    train(atlas.root, "ci", dict(over), out=ref)

    out = tmp_path / "killed"
    args = [f"{k}={v}" for k, v in over.items()]
    cmd = [sys.executable, "-m", "core.train", str(atlas.root), "--out", str(out), *args]
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


def test_torchrun_two_processes_match_one_process(atlas, tmp_path):
    over = {**FAST, "steps": 8, "batch_size": 6, "grad_accum": 2, "eval_every": 8}
    single = tmp_path / "single"
    train(atlas.root, "ci", dict(over), out=single)
    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "core.train", str(atlas.root), "--out", str(ddp),
        *[f"{k}={v}" for k, v in over.items()],
    ]  # fmt: skip
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = _losses(single), _losses(ddp)
    assert len(a) == len(b) == 8
    assert a[-1] < a[0]
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-6), (a, b)
    va = [r for r in read_jsonl(single / "metrics.jsonl") if "val_r2" in r][-1]
    vb = [r for r in read_jsonl(ddp / "metrics.jsonl") if "val_r2" in r][-1]
    assert va["val_r2"] == pytest.approx(vb["val_r2"], abs=1e-4)


def test_ci_preset_overfits_a_small_token_set(tmp_path):
    small = make_atlas(tmp_path / "small", n_train=4, n_val=1)
    summary = train(small.root, "ci", {"eval_every": 1000}, out=tmp_path / "bb")
    assert summary["train_r2"] > 0.9, summary
    losses = _losses(tmp_path / "bb")
    assert losses[-1] < 0.2 * losses[0]
