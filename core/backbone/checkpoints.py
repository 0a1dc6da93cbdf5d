"""Training checkpoints: exact save and resume of model, optimizer, scheduler and RNG state."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from core.atlas import (
    atomic_path,
    read_json,
    write_json,
)
from core.backbone.config import STATE_DIR
from core.backbone.model import (
    Backbone,
    save_backbone,
)

# --------------------------------------------------------------------------- checkpoints


def _rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device):
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    out: Path,
    model: Backbone,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    config: dict[str, Any],
    device: torch.device,
    best: dict[str, Any] | None = None,
) -> None:
    """Write the resume state (safetensors + JSON) atomically, then point latest at it.

    ``model.safetensors`` gets the current weights only while no validation has selected a best
    checkpoint (``best`` is None); after that it holds the best (see ``fit``).
    """
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for idx, st in osd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val.detach().contiguous()
            else:
                scalars[f"{idx}.{key}"] = val
    rng_t, rng_meta = _rng_state(device)
    tensors.update(rng_t)
    meta = {
        "step": step,
        "config": config,
        "param_groups": osd["param_groups"],
        "optim_scalars": scalars,
        "scheduler": sched.state_dict(),
        "rng": rng_meta,
        "best": best,
    }
    name = f"step-{step:08d}"
    sdir = out / STATE_DIR / name
    with atomic_path(sdir / "state.safetensors") as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp))
    write_json(sdir / "state.json", meta)
    if best is None:
        save_backbone(model, out, {**config, "step": step})
    write_json(out / STATE_DIR / "latest.json", {"step": step, "dir": name})
    for old in (out / STATE_DIR).glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    out: Path,
    model: Backbone,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> tuple[int, dict[str, Any] | None]:
    """Restore a run from ``out/train_state``; returns the step it had finished and its best."""
    latest = read_json(out / STATE_DIR / "latest.json")
    sdir = out / STATE_DIR / latest["dir"]
    tensors = load_file(sdir / "state.safetensors", device="cpu")
    meta = read_json(sdir / "state.json")
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    )
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for k, v in meta["optim_scalars"].items():
        idx, key = k.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    groups = [{**g, "betas": tuple(g["betas"])} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
    sched.load_state_dict(meta["scheduler"])
    _set_rng_state(tensors, meta["rng"], device)
    return int(meta["step"]), meta.get("best")
