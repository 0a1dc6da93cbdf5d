"""How much a bottleneck can keep: linear-code bounds on per-layer R^2 at a latent/token squeeze.

A backbone squeezes each token of D values to L latent values. Before training one, this asks
what the best *linear* code of that width keeps on an atlas: fit on the train models' tokens,
scored like the trainer's selection metric (median per-layer R^2 of the val models' conv and
linear layers, and the median per kind). For a dense store, token sizes other than the
store's are made by re-cutting each tensor's flat values, so the same zoo can be asked at 32,
64 or 128; any other scheme (``sparse``: a token per output channel) is asked at its own token
size, on the tokens as stored. Codes:

- ``stats``: each token's mean and std pass exactly (2 of the L channels), the standardized
  pattern through its top L - 2 principal directions: ``Backbone.init_skip_pca``, the state a
  ``skip`` backbone starts from.
- ``raw``: centred PCA of the raw tokens (L directions).
- ``features``: uncentred PCA of the backbone's input features (pattern, mean, log10 std),
  which drops the mean of small weights first (the earlier skip init).

    from core.backbone.bounds import write_bounds
    write_bounds("ATLAS", "bounds.json", (32, 64, 128), (0.5, 1.0), "f.png", ["ATLAS/backbone"])

Where ``R^2 ~= L / D`` for every code and token size, the tokens are white (no direction
carries more variance than another) and no code of width L keeps more than about L / D.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.atlas import Atlas, BackboneFiles, TokenTable, read_json, read_jsonl, write_json
from core.backbone.model import standardize_tokens
from core.errors import WeightAtlasError
from core.tokens.store import TokenStore

CODES = ("stats", "raw", "features")


def _flat_layers(store: Any, model_id: str) -> list[tuple[str, torch.Tensor]]:
    """``(kind, flat float64 values)`` of each tokenized tensor of a dense-scheme model."""
    tk = store.get(model_id)
    out = []
    for e in tk.layers:
        t = tk.tokens[e.offset : e.offset + e.count]
        v = tk.valid[e.offset : e.offset + e.count]
        out.append((e.kind, torch.cat([t[i, : int(v[i])] for i in range(len(t))]).double()))
    return out


Layer = tuple[str, torch.Tensor, torch.Tensor]  # (kind, (n, D) float64 tokens, (n, D) bool mask)


def _stored_layers(store: Any, model_id: str) -> list[Layer]:
    """Each tokenized tensor of a model as stored (any scheme), padding zeroed."""
    tk = store.get(model_id)
    mask = tk.mask
    out = []
    for e in tk.layers:
        sl = slice(e.offset, e.offset + e.count)
        out.append((e.kind, tk.tokens[sl].double().masked_fill(~mask[sl], 0.0), mask[sl]))
    return out


def _at_size(layers: list[Any], size: int, dense: bool) -> list[Layer]:
    """Read tensors as tokens of ``size`` values: a dense store's flat values re-cut, any
    other store's tokens as they are (already of its own size)."""
    return [(kind, *_cut(flat, size)) for kind, flat in layers] if dense else layers


def _cut(flat: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense tokens (n, size) of a flat tensor, zero-padded, and their mask."""
    n = max(1, math.ceil(len(flat) / size))
    x = torch.zeros(n * size, dtype=torch.float64)
    x[: len(flat)] = flat
    m = torch.zeros(n * size, dtype=torch.bool)
    m[: len(flat)] = True
    return x.view(n, size), m.view(n, size)


def _features(x: torch.Tensor) -> torch.Tensor:
    return standardize_tokens(x.float().unsqueeze(0))[0].double()


def _r2(y: torch.Tensor, p: torch.Tensor) -> float:
    sst = float(((y - y.mean()) ** 2).sum())
    if len(y) < 2 or sst <= 0:
        return float("nan")
    return 1.0 - float(((y - p) ** 2).sum()) / sst


def linear_code_bounds(
    atlas: str | Path,
    token_sizes: tuple[int, ...] = (TokenTable.DEFAULT_TOKEN_SIZE,),
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 0.875, 1.0),
    max_fit_tokens: int = 200_000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per-layer val R^2 of the best linear codes of each width, per token size.

    Args:
        atlas: a tokenized atlas with train and val models.
        token_sizes: token sizes D to cut the tensors into (a non-dense store: its own only).
        ratios: latent / token ratios; L = round(ratio * D), at least 3.
        max_fit_tokens: train tokens the codes are fitted on (seeded subsample).
        seed: subsample seed.

    Returns:
        One row per (D, L): ``token, latent, ratio``, ``energy_pattern`` (of the standardized
        patterns kept by L - 2 directions), and per code ``{code}_r2_conv_linear`` plus
        ``{code}_r2_{kind}`` (medians over the val models' layers).
    """
    dense, fit, val = _train_val_layers(Atlas.open(atlas), token_sizes)
    rows = []
    for D in token_sizes:
        X = torch.cat([x for _, x, _ in _at_size(fit, D, dense)])
        if len(X) > max_fit_tokens:
            g = torch.Generator().manual_seed(seed)
            X = X[torch.randperm(len(X), generator=g)[:max_fit_tokens]]
        F = _features(X)
        _, s_pat, v_pat = torch.linalg.svd(F[:, :D], full_matrices=False)
        _, _, v_feat = torch.linalg.svd(F, full_matrices=False)
        mu = X.mean(0)
        _, _, v_raw = torch.linalg.svd(X - mu, full_matrices=False)
        vals = _at_size(val, D, dense)
        for L in sorted({max(3, round(r * D)) for r in ratios}):
            row: dict[str, Any] = {"token": D, "latent": L, "ratio": L / D}
            row["energy_pattern"] = float((s_pat[: L - 2] ** 2).sum() / (s_pat**2).sum())
            per: dict[str, dict[str, list[float]]] = {c: {} for c in CODES}
            P, Fv, R = v_pat[: L - 2], v_feat[:L], v_raw[:L]
            for kind, x, m in vals:
                preds = _code_predictions(x, D, mu, P, Fv, R)
                y = x[m]
                for c, p in preds.items():
                    per[c].setdefault(kind, []).append(_r2(y, p[m]))
            row.update(_median_r2(per))
            rows.append(row)
    return rows


def _train_val_layers(a: Atlas, token_sizes: tuple[int, ...]) -> tuple[bool, list[Any], list[Any]]:
    """Whether the store is dense, and the tensors of its tokenized train and val models
    (duplicates left out), each model read once: ``(kind, flat values)`` for a dense store,
    ``Layer`` as stored for any other. Refused in one line when either split has none, or
    when a non-dense store is asked at another token size than its own."""
    store = TokenStore(a.tokens_dir)
    dense = store.scheme == "dense"
    for size in token_sizes:
        if not dense and size != store.token_size:
            raise WeightAtlasError(
                f"{store.scheme} tokens can only be bounded at their own size "
                f"{store.token_size}, not {size}"
            )

    def ids(split: str) -> list[str]:
        return [
            r["id"] for r in a.accepted(split) if r["id"] in store and not r.get("duplicate_of")
        ]

    train_ids, val_ids = ids("train"), ids("val")
    if not train_ids or not val_ids:
        raise WeightAtlasError(f"{a.root}: bounds need tokenized train and val models")
    read = _flat_layers if dense else _stored_layers

    def layers(split_ids: list[str], desc: str) -> list[Any]:
        return [la for m in tqdm(split_ids, desc=desc, unit="model") for la in read(store, m)]

    return dense, layers(train_ids, "read train"), layers(val_ids, "read val")


def _code_predictions(
    x: torch.Tensor,
    D: int,
    mu: torch.Tensor,
    P: torch.Tensor,
    Fv: torch.Tensor,
    R: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Each code's reconstruction of the tokens ``x``: ``stats`` (standardized patterns kept by
    ``P``, the token's own statistics exact), ``raw`` (PCA ``R`` of the centred tokens) and
    ``features`` (``Fv`` over patterns and statistics together)."""
    f = _features(x)
    pat = f[:, :D] @ P.T @ P
    preds = {
        "stats": pat * 10 ** f[:, D + 1 :] + f[:, D : D + 1],
        "raw": (x - mu) @ R.T @ R + mu,
    }
    g = f @ Fv.T @ Fv
    preds["features"] = (
        g[:, :D] * torch.exp(g[:, D + 1 :].clamp(-20, 10) * math.log(10)) + g[:, D : D + 1]
    )
    return preds


def _median_r2(per: dict[str, dict[str, list[float]]]) -> dict[str, float | None]:
    """Per code, the median R² over conv and linear layers, then per layer kind (NaN dropped)."""
    out: dict[str, float | None] = {}
    for c, by_kind in per.items():
        sel = [v for k in ("conv", "linear") for v in by_kind.get(k, []) if v == v]
        out[f"{c}_r2_conv_linear"] = float(np.median(sel)) if sel else None
        for k, v in sorted(by_kind.items()):
            v = [x for x in v if x == x]
            out[f"{c}_r2_{k}"] = float(np.median(v)) if v else None
    return out


def trained_point(run_dir: str | Path) -> dict[str, Any]:
    """A trained run as a point of the figure: its latent/token ratio and the last validated
    median per-layer conv + linear R^2 (``metrics.jsonl``), with its label."""
    run_dir = Path(run_dir)
    cfg = read_json(BackboneFiles(run_dir).config_path)
    rows = [
        r
        for r in read_jsonl(BackboneFiles(run_dir).metrics_path)
        if r.get("val_layer_r2_median_conv_linear") is not None
    ]
    if not rows:
        raise WeightAtlasError(f"{run_dir}: no validation rows in metrics.jsonl")
    b, t = cfg["backbone"], cfg["train"]
    last = rows[-1]
    return {
        "ratio": b["latent_dim"] / b["token_size"],
        "r2": last["val_layer_r2_median_conv_linear"],
        "label": f"trained: latent {b['latent_dim']}, lr {t['lr']:g}, step {last['step']}",
    }


def bounds_figure(rows: list[dict[str, Any]], trained: list[dict[str, Any]] = ()) -> Any:
    """Median per-layer val R^2 (conv + linear) against latent / token size: the ``stats`` code
    per token size, the raw and feature PCAs at the first token size, trained runs as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    sizes = sorted({r["token"] for r in rows})
    for D, marker in zip(sizes, "^os*D", strict=False):
        pts = sorted((r["ratio"], r["stats_r2_conv_linear"]) for r in rows if r["token"] == D)
        ax.plot(*zip(*pts), marker=marker, ms=4, lw=1.2, label=f"linear code, token {D}")
    D = 64 if 64 in sizes else sizes[0]
    for code, style, name in (
        ("raw", "--", "centred raw PCA"),
        ("features", ":", "plain feature PCA"),
    ):
        pts = sorted((r["ratio"], r[f"{code}_r2_conv_linear"]) for r in rows if r["token"] == D)
        ax.plot(
            *zip(*pts),
            ls=style,
            lw=1,
            color="gray" if code == "raw" else "tab:red",
            label=f"{name}, token {D}",
        )
    for t, c in zip(
        trained, ("k", "tab:orange", "tab:red", "tab:purple", "tab:brown"), strict=False
    ):
        ax.scatter(t["ratio"], t["r2"], marker="*", s=110, zorder=5, color=c, label=t["label"])
    ax.axhline(0.90, color="tab:green", lw=0.8)
    ax.set_xlabel("latent / token size")
    ax.set_ylabel("median per-layer val R² (conv + linear)")
    ax.set_ylim(-0.1, 1.02)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def write_bounds(
    atlas: str | Path,
    out: str | Path,
    token_sizes: tuple[int, ...] = (TokenTable.DEFAULT_TOKEN_SIZE,),
    ratios: tuple[float, ...] = (0.25, 0.5, 0.625, 0.75, 0.875, 1.0),
    figure: str | Path | None = None,
    runs: tuple[str | Path, ...] = (),
) -> list[dict[str, Any]]:
    """``linear_code_bounds`` written to ``out`` (JSON), and with ``figure`` drawn there (PNG)
    with the trained backbone dirs ``runs`` as points. Returns the rows."""
    rows = linear_code_bounds(atlas, token_sizes, ratios)
    write_json(out, rows)
    if figure is not None:
        fig = bounds_figure(rows, [trained_point(d) for d in runs])
        fig.savefig(figure, dpi=110)
    return rows
