"""Reconstruction fidelity: per-layer reports and the accuracy of models after an encode-decode."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.atlas import Atlas
from core.config import build_config
from core.embeddings.encode import (
    EMBED_PRESETS,
    EmbedConfig,
    _masked_tokens,
    haloed_apply,
    open_backbone,
    resolve_window,
)
from core.errors import WeightAtlasError
from core.generation.build import condition_batchnorm
from core.generation.prompts import resolve_target
from core.models.io import load_model_dir, load_weights_strict
from core.tokens.plan import detokenize
from core.tokens.store import TokenStore
from core.zoos.tasks import evaluate_accuracy

# layer report


def layer_kind(shape: list[int] | tuple[int, ...]) -> str:
    """A coarse kind from a tensor's rank: conv (4-D), matrix (2-D), vector (1-D), tensor."""
    return {4: "conv", 2: "matrix", 1: "vector", 0: "scalar"}.get(len(shape), "tensor")


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance between the empirical value distributions of two equal-size arrays."""
    return float(np.mean(np.abs(np.sort(a.ravel()) - np.sort(b.ravel()))))


def _subsample(v: np.ndarray, n: int) -> np.ndarray:
    if v.size <= n:
        return v.ravel()
    idx = np.linspace(0, v.size - 1, n).round().astype(np.int64)
    return v.ravel()[idx]


def layer_report(
    atlas: str | Path,
    model_id: str,
    backbone_dir: str | Path | None = None,
    *,
    max_values: int = 4096,
) -> list[dict[str, Any]]:
    """Per-layer reconstruction of one tokenized model through the backbone.

    Args:
        atlas: a tokenized atlas with a trained backbone.
        model_id: a model in the token store.
        backbone_dir: another backbone directory (ablations); default the atlas' backbone.
        max_values: values returned per layer (evenly subsampled; metrics use all values).

    Returns:
        One record per layer: ``name, kind, shape, n_values, original, reconstructed`` (lists
        of at most ``max_values`` floats), ``r2, mse, w1_over_std``.
    """

    a = Atlas.open(atlas)
    store = TokenStore(a.tokens_dir)
    if model_id not in set(store.ids):
        raise WeightAtlasError(f"{model_id!r} is not in the token store of {a.root}")
    cfg = build_config(EmbedConfig, EMBED_PRESETS, "ci")
    backbone = open_backbone(a, backbone_dir, cfg.device)
    tokens, positions = _masked_tokens(store.get(model_id))
    window, halo = resolve_window(cfg, backbone)
    with torch.no_grad():
        z = haloed_apply(backbone.encode, tokens, positions, window, halo, cfg.batch_size)
        recon = haloed_apply(backbone.decode, z, positions, window, halo, cfg.batch_size)
    layers = store.layers(model_id)
    orig_sd = detokenize(tokens, layers)
    rec_sd = detokenize(recon.float(), layers)
    out = []
    for entry in layers:
        o = orig_sd[entry.name].double().numpy().ravel()
        r = rec_sd[entry.name].double().numpy().ravel()
        var = o.var()
        mse = float(np.mean((o - r) ** 2))
        std = float(np.sqrt(var))
        out.append(
            {
                "name": entry.name,
                "kind": layer_kind(tuple(entry.shape)),
                "shape": list(entry.shape),
                "n_values": int(o.size),
                "original": _subsample(o, max_values).tolist(),
                "reconstructed": _subsample(r, max_values).tolist(),
                "r2": float(1.0 - mse / var) if var > 0 else None,
                "mse": mse,
                "w1_over_std": wasserstein1(o, r) / std if std > 0 else None,
                "std_ratio": float(r.std()) / std if std > 0 else None,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# encode-decode accuracy


def reconstruct_tokens(
    backbone: Any, tokens: torch.Tensor, positions: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """Haloed encode then decode of one model's tokens ``(N, D)`` (the embed stage's windows)."""

    cfg = build_config(EmbedConfig, EMBED_PRESETS, "ci")
    window, halo = resolve_window(cfg, backbone)
    with torch.no_grad():
        z = haloed_apply(backbone.encode, tokens, positions, window, halo, batch_size)
        return haloed_apply(backbone.decode, z, positions, window, halo, batch_size).float()


def reconstruction_accuracy(
    atlas: str | Path,
    family: str = "cnn",
    task: str = "digits10",
    splits: tuple[str, ...] = ("val", "test"),
    backbone_dir: str | Path | None = None,
    eval_split: str = "test",
) -> list[dict[str, Any]]:
    """Accuracy of models before and after an encode-decode through the backbone.

    Each accepted model of ``family`` trained on ``task`` in one of ``splits`` (by default
    only models the backbone never trained on) is loaded from its directory, its stored tokens
    are encoded and decoded (haloed windows, as the embed stage does), and the decoded tensors
    replace its trainable weights; buffers (batch-norm running statistics) stay the original's.
    Both models are scored on ``eval_split`` of the task, and the decoded one once more after
    re-estimating its batch-norm statistics on train data (as sampling does,
    ``core.generation.build.condition_batchnorm``).

    Returns:
        One row per model: ``id, split, epoch, accuracy_original, accuracy_decoded,
        accuracy_decoded_bn, r2`` (R² of all decoded values).
    """

    a = Atlas.open(atlas)
    store = TokenStore(a.tokens_dir)
    backbone = open_backbone(a, backbone_dir, "cpu")
    rows = [
        r
        for r in a.accepted()
        if r.get("split") in splits
        and (r.get("labels") or {}).get("family", r.get("family")) == family
        and (r.get("labels") or {}).get("task") == task
        and r["id"] in store
        and r.get("path")
    ]
    if not rows:
        raise WeightAtlasError(
            f"{a.root}: no accepted {family}/{task} model in splits {', '.join(splits)}"
        )
    out = []
    for r in tqdm(sorted(rows, key=lambda r: r["id"]), desc="encode-decode", unit="model"):
        path = Path(r["path"])
        model = load_model_dir(path if path.is_absolute() else a.root / path).model.float()
        tok = store.get(r["id"])
        tokens, positions = _masked_tokens(tok)
        recon = reconstruct_tokens(backbone, tokens, positions)
        decoded = copy.deepcopy(model)
        state = dict(decoded.state_dict())
        state.update(detokenize(recon, store.layers(r["id"])))
        load_weights_strict(decoded, state)
        decoded.eval()
        mask = torch.as_tensor(tok.mask, dtype=torch.bool)
        y, p = tokens[mask].double(), recon[mask].double()
        labels = r.get("labels") or {}
        row = {
            "id": r["id"],
            "split": r["split"],
            "epoch": labels.get("epoch"),
            "accuracy_original": evaluate_accuracy(model, task, eval_split),
            "accuracy_decoded": evaluate_accuracy(decoded, task, eval_split),
            "r2": float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
        }
        target = resolve_target(
            f"zoo:{family}", store.scheme, store.token_size, task,
            labels.get("width"), labels.get("depth"),
        )  # fmt: skip
        if condition_batchnorm(decoded, target, batches=8, batch_size=64, seed=0):
            row["accuracy_decoded_bn"] = evaluate_accuracy(decoded, task, eval_split)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
