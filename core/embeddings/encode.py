"""Encoding with the backbone: haloed windows over a model's tokens, summaries, fingerprints."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from core.atlas import Atlas, BackboneFiles
from core.backbone.device import autocast, compute_dtype
from core.backbone.inference import BF16_MIN_WIDTH, PackedBackbone, packed_backbone
from core.backbone.model import load_backbone, sinusoidal_3d
from core.config import register_presets
from core.embeddings.reader import embeddings_dir  # noqa: F401  (re-exported)
from core.embeddings.statistics import DEPTH_BINS, depth_pooled
from core.errors import WeightAtlasError

# Shapes: N tokens of one model, D token size, L latent dim, T window length, K sequences
# decoded together, M embedded models, S layers over all models.

_UMAP_LOCK = threading.Lock()  # umap/numba are not re-entrant inside a threaded server


@dataclass
class EmbedConfig:
    """How models are encoded and mapped.

    ``window`` None: the backbone's training window. ``halo`` None: ``window // 8`` (the
    paper's 64 context tokens on 512-token windows).
    """

    window: int | None = None
    halo: int | None = None
    # windows per backbone call. 64 (4,096 tokens at window 64): on the 2-core CPU a haloed bf16
    # decode of ResNet-18's 174,616 tokens took 5.7 s at 64 and 8.5 s at 256, whose activations
    # (> 32 MB) are mmapped and page-faulted afresh on every call (1.8 M minor faults)
    batch_size: int = 64
    chunk_models: int = 64
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    map_neighbors: int = 5
    distance_k: int = 5  # atlas distance: mean distance to this many nearest atlas models
    # atlas distance metric (core.embeddings.distances.DISTANCE_METRICS): "zscore" (Euclidean on
    # embeddings standardized per dim by the atlas' mean and std), "cosine" (1 - cos; ignores
    # norms) or "euclidean". zscore: the only one that put the MiniLM stranger outside with both
    # the step-0 and the re-trained demo backbone (docs/results/map_distance.md)
    distance_metric: str = "zscore"
    # the neighbours' metric: neighbour lists, the UMAP map (fit and placement) and map quality's
    # embedding figure. cosine: better leave-one-run-out family (and, re-trained, kNN R²) than
    # zscore with both demo backbones (docs/results/map_distance.md); what atlases embedded
    # before this field used for their neighbours and maps
    neighbour_metric: str = "cosine"
    seed: int = 0
    device: str = "cpu"
    # the model embedding from token embeddings (``POOLINGS``); "mean" is what atlases embedded
    # before this field existed hold
    pooling: str = "depth-mean+std"
    # precision of the single-model pass (``encode_summary``: ``embed --model``, the app's
    # "embed a folder", sample's kept models): "auto" is bf16 where bf16 matmuls are fast (a
    # CPU with AVX-512 BF16 or AMX and a backbone at least BF16_MIN_WIDTH wide, through the
    # packed copy of core.backbone.inference; CUDA under autocast), else fp32; "fp32" is the
    # reference. The model embedding of bf16 differs from fp32's by a relative L2 of at most
    # BF16_EMBED_TOLERANCE (tested). The atlas-wide ``embed`` stays fp32 whatever this says.
    dtype: str = "auto"
    # encode each model in its canonical form (``core.backbone.views.canonicalize_tokens``: the
    # hidden units of every unit group sorted by norm), so a function-preserving permutation
    # of a model gets exactly its embedding; False is what atlases embedded before this field
    # hold (their embeddings/info.json has no "canonical")
    canonical: bool = True


EMBED_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(chunk_models=32, umap_neighbors=8),
    "demo": dict(chunk_models=64, umap_neighbors=15),
    "paper-small": dict(window=512, halo=64, batch_size=64, chunk_models=16),
    "paper-large": dict(window=512, halo=64, batch_size=64, chunk_models=16),
}
register_presets("embed", EmbedConfig, EMBED_PRESETS)


# ---------------------------------------------------------------------------------------------
# haloing


def halo_windows(n: int, window: int, halo: int) -> list[tuple[int, int, int]]:
    """Cut a sequence of ``n`` tokens into haloed windows.

    Returns:
        ``(window_start, content_start, content_end)`` per window: the encoder sees tokens
        ``[window_start, window_start + min(window, n))`` and keeps ``[content_start,
        content_end)``. Content ranges tile ``[0, n)`` exactly once.
    """
    if n <= 0:
        return []
    if n <= window:
        return [(0, 0, n)]
    content = window - 2 * halo
    if content < 1:
        raise WeightAtlasError(f"halo {halo} leaves no content in a window of {window} tokens")
    out = []
    for s in range(0, n, content):
        e = min(s + content, n)
        ws = min(max(s - halo, 0), n - window)
        out.append((ws, s, e))
    return out


@torch.no_grad()
def haloed_apply(
    fn: Any,
    x: torch.Tensor,
    positions: torch.Tensor,
    window: int,
    halo: int,
    batch_size: int = 32,
    progress: bool = False,
    code: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply a sequence map ``fn(x (B,T,F), positions (B,T,3)) -> (B,T,G)`` with haloing.

    Args:
        fn: ``backbone.encode`` or ``backbone.decode``.
        x: ``(N, F)`` one sequence or ``(K, N, F)`` several sequences sharing ``positions``.
        positions: ``(N, 3)`` positions of the sequence.
        window: tokens per encoder pass (context included).
        halo: context tokens kept before and after each content chunk, dropped afterwards.
        batch_size: windows per call of ``fn``.
        progress: show a tqdm bar over batches.
        code: ``(N, C)`` the positions' ``sinusoidal_3d`` code, computed once for the whole
            sequence (and for every pass that shares ``positions``); then ``fn`` is called as
            ``fn(x, positions, code)`` with the windows' slices of it.

    Returns:
        ``(N, G)`` or ``(K, N, G)``, the content of every window stitched back in order.
    """
    single = x.dim() == 2
    xs = x[None] if single else x  # (K, N, F)
    k, n, _ = xs.shape
    wins = halo_windows(n, window, halo)
    t = min(window, n)
    jobs = [(i, w) for i in range(k) for w in wins]  # (sequence, window)
    out: torch.Tensor | None = None
    batches = range(0, len(jobs), batch_size)
    for b in tqdm(batches, desc="windows", unit="batch", disable=not progress, leave=False):
        chunk = jobs[b : b + batch_size]
        xb = torch.stack([xs[i, ws : ws + t] for i, (ws, _, _) in chunk])  # (B, T, F)
        pb = torch.stack([positions[ws : ws + t] for _, (ws, _, _) in chunk])  # (B, T, 3)
        if code is None:
            yb = fn(xb, pb)  # (B, T, G)
        else:
            yb = fn(xb, pb, torch.stack([code[ws : ws + t] for _, (ws, _, _) in chunk]))
        if out is None:
            out = yb.new_empty((k, n, yb.shape[-1]))
        for j, (i, (ws, s, e)) in enumerate(chunk):
            out[i, s:e] = yb[j, s - ws : e - ws]
    assert out is not None
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------
# backbone and token access


def resolve_window(cfg: EmbedConfig, backbone: Any) -> tuple[int, int]:
    """``(window, halo)`` from the config, defaulting to the backbone's training window."""
    window = cfg.window if cfg.window is not None else int(backbone.cfg.window)
    halo = cfg.halo if cfg.halo is not None else window // 8
    if window - 2 * halo < 1:
        raise WeightAtlasError(f"halo {halo} too large for window {window}")
    return window, halo


def canonical_form(tok: Any, groups: list[Any], inplace: bool = False) -> Any:
    """``tok`` (a ``Tokenized``) with its tokens in the model's canonical unit order
    (``core.backbone.views.canonicalize_tokens``); ``tok`` itself when it has no groups.
    ``inplace``: rewrite ``tok.tokens`` (float32) rather than a copy (a big model's tokens)."""
    if not groups:
        return tok
    from core.backbone.views import canonicalize_tokens

    tokens = torch.as_tensor(tok.tokens, dtype=torch.float32)
    out = canonicalize_tokens(tokens, tok.layers, groups, inplace=inplace)
    return dataclasses.replace(tok, tokens=out)


def _masked_tokens(tok: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (N, D) float32 with padding zeroed, positions (N, 3) long)``."""
    tokens = torch.as_tensor(tok.tokens, dtype=torch.float32)
    mask = torch.as_tensor(tok.mask, dtype=torch.bool)
    return tokens.masked_fill(~mask, 0.0), torch.as_tensor(tok.positions, dtype=torch.long)


def position_code(backbone: Any, positions: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
    """``(N, C)`` float32 ``sinusoidal_3d`` code of a sequence's positions ``(N, 3)`` for
    ``backbone``: one computation for every window and pass that shares the positions (the
    float64 sines cost ~0.2 s per pass over ResNet-18's 174,616 tokens on 2 CPU threads, 1.33x
    that when recomputed per haloed window). Computed in chunks to bound the float64 scratch.
    """
    cfg = backbone.cfg
    out = torch.empty(len(positions), cfg.d_model, dtype=torch.float32, device=positions.device)
    for s in range(0, len(positions), chunk):
        out[s : s + chunk] = sinusoidal_3d(positions[s : s + chunk], cfg.d_model, cfg.pos_base)
    return out


def rotated_position_code(
    backbone: Any, positions: torch.Tensor, block: int = 1024
) -> torch.Tensor:
    """``(N, C)`` float32 ``sinusoidal_3d`` code of ``positions (N, 3)`` by angle addition.

    Each axis value ``v = q * block + r``: ``sin(v f) = sin(q block f) cos(r f) + cos(q block f)
    sin(r f)`` (and cos alike) in float64, from a table over ``r`` and one over the few ``q``
    of the positions, instead of a float64 sine per value: equal to :func:`position_code` up to
    float32 rounding (a one-ulp difference where float64 rounding falls on a float32 tie;
    tested to 1e-6), at a fraction of its cost (its float64 sines took 18 us per token, more
    than the bf16 encoder pass itself, on the 2-core CPU under load).
    """
    cfg = backbone.cfg
    dim, half = int(cfg.d_model), int(cfg.d_model) // 6
    dev = positions.device
    freqs = cfg.pos_base ** (-torch.arange(half, dtype=torch.float64, device=dev) / half)
    out = torch.zeros(len(positions), dim, dtype=torch.float32, device=dev)
    if len(positions) == 0:
        return out
    rang = torch.arange(block, dtype=torch.float64, device=dev)[:, None] * freqs  # (block, h)
    sin_r, cos_r = rang.sin(), rang.cos()
    for axis in range(3):
        v = positions[:, axis].long()
        q, r = torch.div(v, block, rounding_mode="floor"), v.remainder(block)
        q0 = int(q.min())
        span = int(q.max()) - q0 + 1
        if span <= len(v):
            qs, qi = torch.arange(q0, q0 + span, device=dev), q - q0
        else:  # few positions spread far apart
            qs, qi = torch.unique(q, return_inverse=True)
        ang = (qs.double() * block)[:, None] * freqs  # (Q, h)
        sq, cq = ang.sin()[qi], ang.cos()[qi]  # (N, h)
        sr, cr = sin_r[r], cos_r[r]
        c0 = 2 * half * axis
        out[:, c0 : c0 + half] = sq * cr + cq * sr
        out[:, c0 + half : c0 + 2 * half] = cq * cr - sq * sr
    return out


def encode_tokens(
    backbone: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    cfg: EmbedConfig,
    code: torch.Tensor | None = None,
) -> torch.Tensor:
    """Haloed token embeddings ``z (N, L)`` of one model's tokens ``(N, D)``.

    ``code``: :func:`position_code` of ``positions`` if the caller has it (default: computed).
    """
    window, halo = resolve_window(cfg, backbone)
    dev = torch.device(cfg.device)
    positions = positions.to(dev)
    code = position_code(backbone, positions) if code is None else code.to(dev)
    z = haloed_apply(
        backbone.encode, tokens.to(dev), positions, window, halo, cfg.batch_size, code=code
    )
    return z.float().cpu()


POOLINGS = ("mean", "std", "mean+std", "layer-mean+std", "depth-std", "depth-mean+std")
POOLING_MEANING = {
    "mean": "mean of the token embeddings over all tokens (L dims; 003 §2)",
    "std": "per-channel std of the token embeddings over all tokens (L dims)",
    "mean+std": "per-channel mean and std over all tokens (2L dims)",
    "layer-mean+std": "per-layer per-channel mean and std of the token embeddings, averaged over "
    "layers with equal weight (2L dims)",
    "depth-std": f"per-layer per-channel std, averaged over each of {DEPTH_BINS} bins of relative "
    f"depth and over all layers ({DEPTH_BINS + 1}L dims)",
    "depth-mean+std": f"per-layer per-channel mean and std, averaged over each of {DEPTH_BINS} "
    f"bins of relative depth and over all layers ({2 * (DEPTH_BINS + 1)}L dims)",
}


def layer_moments(
    z: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-layer first and second moments of token embeddings.

    Args:
        z: ``(N, L)`` token embeddings.
        positions: ``(N, 3)`` ``[n, l, k]``; tokens with equal ``l`` belong to one layer.

    Returns:
        ``(layer_ids (S,), counts (S,), means (S, L), stds (S, L))`` in float64; ``stds`` is
        the unbiased per-channel std over the layer's tokens (0 for a one-token layer). Sums
        over a layer's tokens: invariant to the order of tokens within a layer.
    """
    layer_ids, inverse, counts = torch.unique(
        positions[:, 1], return_inverse=True, return_counts=True
    )
    s, dim = len(layer_ids), z.shape[1]
    zd = z.double()
    means = torch.zeros(s, dim, dtype=torch.float64).index_add_(0, inverse, zd) / counts[:, None]
    sq = torch.zeros(s, dim, dtype=torch.float64).index_add_(0, inverse, (zd - means[inverse]) ** 2)
    denom = (counts - 1).clamp(min=1)[:, None]
    stds = torch.where(counts[:, None] > 1, (sq / denom).sqrt(), torch.zeros_like(sq))
    return layer_ids, counts, means, stds


def pool_model(z: torch.Tensor, positions: torch.Tensor, pooling: str) -> torch.Tensor:
    """The model embedding of one model's token embeddings (the public pooling function).

    Args:
        z: ``(N, L)`` token embeddings (``encode_tokens``).
        positions: ``(N, 3)`` the tokens' ``[n, l, k]`` positions (``l``: layer).
        pooling: one of ``POOLINGS`` (see ``POOLING_MEANING``).

    Returns:
        ``(pooled_dim(L, pooling),)`` float32; invariant to the order of tokens within each
        layer (the depth poolings keep the order of layers, by relative depth).
    """
    _check_pooling(pooling)
    zd = z.double()
    if pooling in ("mean", "std", "mean+std"):
        mean = zd.mean(0)
        std = zd.std(0, correction=1) if len(zd) > 1 else torch.zeros_like(mean)
        out = {"mean": mean, "std": std, "mean+std": torch.cat([mean, std])}[pooling]
        return out.float()
    _, _, means, stds = layer_moments(z, positions)  # layers in depth order
    return pool_moments(means, stds, pooling)


def pool_moments(
    means: torch.Tensor,
    stds: torch.Tensor,
    pooling: str,
    overall: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The model embedding from per-layer moments ``(S, L)`` (``layer_moments``, depth order).

    ``overall``: ``(mean, std)`` over all tokens, needed by the ``mean``/``std``/``mean+std``
    poolings (which do not look at layers).
    """
    _check_pooling(pooling)
    if pooling in ("mean", "std", "mean+std"):
        if overall is None:
            raise ValueError(f"pooling {pooling!r} needs the moments over all tokens")
        mean, std = overall
        return {"mean": mean, "std": std, "mean+std": torch.cat([mean, std])}[pooling].float()
    per_layer = stds if pooling == "depth-std" else torch.cat([means, stds], 1)
    if pooling == "layer-mean+std":
        return per_layer.mean(0).float()
    pooled = depth_pooled(per_layer.numpy(), per_layer.mean(0).numpy())
    return torch.from_numpy(pooled).float()


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise WeightAtlasError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")


def pooled_dim(latent_dim: int, pooling: str) -> int:
    """Length of the model embedding for a backbone latent of ``latent_dim``."""
    _check_pooling(pooling)
    per = {"mean": 1, "std": 1, "mean+std": 2, "layer-mean+std": 2}
    per |= {"depth-std": DEPTH_BINS + 1, "depth-mean+std": 2 * (DEPTH_BINS + 1)}
    return per[pooling] * latent_dim


def summarize(
    z: torch.Tensor, positions: torch.Tensor, pooling: str = "mean"
) -> dict[str, torch.Tensor]:
    """Model embedding, per-layer means and spreads from token embeddings.

    Args:
        z: ``(N, L)`` token embeddings.
        positions: ``(N, 3)`` ``[n, l, k]``; tokens with equal ``l`` belong to one layer.
        pooling: how the model embedding ``z`` is pooled (``pool_model``).

    Returns:
        ``z`` (``pool_model``), ``layer_index (S,)`` (the ``l`` values in order), ``layer_z
        (S, L)``, ``layer_spread (S,)`` (std over the layer's tokens, mean over latent dims; 0
        for a one-token layer), ``layer_tokens (S,)``.
    """
    layer_ids, counts, means, stds = layer_moments(z, positions)
    return {
        "z": pool_model(z, positions, pooling),
        "layer_index": layer_ids,
        "layer_z": means.float(),
        "layer_spread": stds.mean(1).float(),
        "layer_tokens": counts,
    }


BF16_EMBED_TOLERANCE = 1e-2  # relative L2 of a bf16 model embedding against fp32's


def single_model_encoder(backbone: Any, cfg: EmbedConfig) -> tuple[Any, str]:
    """``(encode, precision)``: the callable ``encode(tokens, positions, code) -> (B, T, L)``
    that :func:`encode_summary` runs, in the precision ``cfg.dtype`` asks for.

    ``auto`` on the CPU: the packed bf16 encoder (``core.backbone.inference``: weights cast and
    packed for oneDNN once, GELU fused) where the CPU has fast bf16 matmuls, the backbone is at
    least ``BF16_MIN_WIDTH`` wide and the packed encoder agrees with autocast; else fp32.
    ``auto`` on CUDA: bf16 autocast where supported. ``bf16`` asks for bf16 anyway (autocast
    where no packed copy is made); ``fp32`` is the reference.
    """
    device = torch.device(cfg.device)
    dtype = cfg.dtype
    if dtype not in ("auto", "fp32", "bf16"):
        raise WeightAtlasError(f"embed dtype {dtype!r}: choose auto, fp32 or bf16")
    if isinstance(backbone, PackedBackbone):  # packed already (sampling's backbone_precision)
        return backbone.encode, "bf16-packed"
    if dtype == "auto" and device.type == "cpu" and backbone.cfg.d_model < BF16_MIN_WIDTH:
        dtype = "fp32"
    if compute_dtype(dtype, device) == torch.float32:
        return backbone.encode, "fp32"
    if device.type == "cpu":
        packed = packed_backbone(backbone, decode=False)
        if packed is not None:
            return packed.encode, "bf16-packed"
        if dtype == "auto":
            return backbone.encode, "fp32"

    def encode(x: torch.Tensor, pos: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        with autocast(device, torch.bfloat16):
            return backbone.encode(x, pos, code)

    return encode, "bf16-autocast"


@torch.inference_mode()
def encode_summary(
    backbone: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    cfg: EmbedConfig,
    pooling: str,
    progress: Any = None,
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``summarize(encode_tokens(...))`` of one model, streamed: what a big model costs.

    The haloed windows go through the backbone ``cfg.batch_size`` at a time, gathered by one
    index per batch (no Python loop per window); each batch's position code
    (:func:`rotated_position_code`) covers only its own tokens and its token embeddings are
    folded into per-layer float64 sums (count, sum, sum of squares) and dropped, so neither
    ``z (N, L)`` nor the ``(N, d_model)`` position code is ever held (bert-base: 1.7 M tokens,
    1.75 GB of code). The encoder runs in ``cfg.dtype`` (:func:`single_model_encoder`); in
    fp32, results equal :func:`summarize`'s up to float64 rounding and the position code's
    float32 rounding.

    Args:
        progress: a tqdm-like bar (``reset(total=...)`` with the number of windows here,
            ``update(n)`` per batch), or None.
        valid: ``(N,)`` real values per token: padding is zeroed per batch (no masked copy
            of all tokens); None if ``tokens`` are masked already.
    """
    window, halo = resolve_window(cfg, backbone)
    n = len(tokens)
    wins = torch.tensor(halo_windows(n, window, halo), dtype=torch.long).reshape(-1, 3)
    t = min(window, n)
    dev = torch.device(cfg.device)
    encode, _ = single_model_encoder(backbone, cfg)
    layers = positions[:, 1]
    n_layers = int(layers.max()) + 1 if n else 0
    latent = int(backbone.cfg.latent_dim)
    count = torch.zeros(n_layers, dtype=torch.float64)
    s1 = torch.zeros(n_layers, latent, dtype=torch.float64)
    s2 = torch.zeros(n_layers, latent, dtype=torch.float64)
    ar, feat = torch.arange(t), torch.arange(tokens.shape[-1])
    if progress is not None:
        progress.reset(total=len(wins))
    for b in range(0, len(wins), cfg.batch_size):
        w = wins[b : b + cfg.batch_size]  # (B, 3) window start, content start, content end
        lo, hi = int(w[0, 0]), int(w[-1, 0]) + t
        idx = (w[:, :1] - lo) + ar  # (B, T) into [lo, hi)
        pos = positions[lo:hi]
        xb = tokens[lo:hi][idx].float()  # (B, T, D)
        if valid is not None:
            xb.masked_fill_(feat >= valid[lo:hi][idx][..., None], 0.0)
        code = rotated_position_code(backbone, pos.to(dev))
        yb = encode(xb.to(dev), pos[idx].to(dev), code[idx.to(dev)])
        rel = ar - (w[:, 1:2] - w[:, :1])  # token index relative to the content start
        keep = (rel >= 0) & (ar < (w[:, 2:3] - w[:, :1]))  # (B, T): content, in token order
        zc = yb.float().cpu()[keep].double()
        lc = layers[int(w[0, 1]) : int(w[-1, 2])]
        count.index_add_(0, lc, torch.ones(len(lc), dtype=torch.float64))
        s1.index_add_(0, lc, zc)
        s2.index_add_(0, lc, zc * zc)
        if progress is not None:
            progress.update(len(w))
    present = count > 0
    layer_ids = torch.nonzero(present).reshape(-1)
    c, s1, s2 = count[present], s1[present], s2[present]
    means = s1 / c[:, None]
    var = ((s2 - c[:, None] * means**2) / (c - 1).clamp(min=1)[:, None]).clamp(min=0)
    stds = torch.where(c[:, None] > 1, var.sqrt(), torch.zeros_like(var))
    total = c.sum()
    mean = s1.sum(0) / total
    var_all = ((s2.sum(0) - total * mean**2) / (total - 1).clamp(min=1)).clamp(min=0)
    std = var_all.sqrt() if total > 1 else torch.zeros_like(mean)
    return {
        "z": pool_moments(means, stds, pooling, (mean, std)),
        "layer_index": layer_ids,
        "layer_z": means.float(),
        "layer_spread": stds.mean(1).float(),
        "layer_tokens": c.long(),
    }


def backbone_fingerprint(backbone_dir: Path) -> str:
    """Short sha256 of the backbone weights, so stale parts are never merged."""
    h = hashlib.sha256()
    with open(BackboneFiles(backbone_dir).weights_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def open_backbone(atlas: Atlas, backbone_dir: str | Path | None, device: str) -> Any:

    src = Path(backbone_dir) if backbone_dir is not None else atlas.backbone_dir
    if not BackboneFiles(src).weights_path.exists():
        raise WeightAtlasError(f"no trained backbone in {src}; run `weightatlas train` first")
    return load_backbone(src).to(device).eval()


# ---------------------------------------------------------------------------------------------
