"""The SANE-style backbone: a transformer autoencoder over windows of weight tokens.

Paper 001 §3.1-3.3 and Table 4, paper 003 §2. A window of T tokens of size D with 3-D positions
[n, l, k] is embedded linearly to ``d_model``, given a parameter-free sinusoidal code of its
positions, passed through pre-LN transformer blocks and squeezed linearly to ``latent_dim`` per
token (the embedding z). A symmetric decoder maps z (plus the same position code) back to D. A
small projection head pools z over the window for the contrastive loss.

    from core.backbone.model import Backbone, BACKBONE_PRESETS, BackboneConfig, load_backbone
    model = Backbone(build_config(BackboneConfig, BACKBONE_PRESETS, "ci"))
    z = model.encode(tokens, positions)            # (B, T, L)
    recon = model.decode(z, positions)             # (B, T, D)
    model = load_backbone("ATLAS")                 # trained weights, eval mode

Shapes: B batch, T window length, D token size, C = d_model, L latent dim, P projection dim,
H heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from core.atlas import Atlas, BackboneFiles, TokenTable, atomic_path, read_json, write_json
from core.backbone.losses import Factored
from core.config import ConfigError, merge, register_presets, to_dict
from core.errors import WeightAtlasError


@dataclass
class BackboneConfig:
    """Architecture of the autoencoder. ``n_layers`` is per side (encoder and decoder)."""

    # D: training sets it from the token table, its one source (core.atlas.TokenTable)
    token_size: int = TokenTable.DEFAULT_TOKEN_SIZE
    window: int = 32  # T used for training windows (any T works at inference)
    d_model: int = 64  # C
    latent_dim: int = 16  # L, per token
    n_layers: int = 2  # transformer blocks in the encoder, and again in the decoder
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    proj_dim: int = 32  # P, projection head output for NT-Xent
    pos_base: float = 10000.0  # base of the sinusoid wavelengths
    token_norm: bool = (
        True  # tokens enter standardized (+ mean, log-std); leave as pattern*scale+shift
    )
    # a linear map from each side's input straight to its output (token -> latent -> token,
    # through the bottleneck), added to the blocks' output; training starts it as the tokens'
    # PCA (init_skip_pca) and the blocks learn what context adds
    skip: bool = False
    # how training starts the skip maps: "pca" (init_skip_pca, the tokens' linear code, scored
    # as step 0) or "random" (the Linear init; the linear path is learned like the rest, as in
    # the MLN ablation, whose arms would otherwise share one starting code)
    skip_init: Literal["pca", "random"] = "pca"
    # what the contrastive projection head sees: "mean" (the window's mean latent) or "window"
    # (the whole window's latents, flattened: 003's head sees the window, not a pooled vector)
    head: Literal["mean", "window"] = "mean"
    # raw tokens (token_norm off) enter divided by this and leave multiplied by it: the demo
    # zoo's weights (RMS 0.135) otherwise reach the blocks about 5x weaker than the position
    # code. Training sets it to the training tokens' RMS (TrainConfig.scale_tokens); 1.0: as
    # they are
    token_scale: float = 1.0


BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    # tiny: trains in about a minute on CPU
    "ci": dict(window=32, d_model=64, latent_dim=16, n_layers=2, n_heads=4, proj_dim=32),
    # the demo zoo: a 2x bottleneck (latent 32 for tokens of 64) and no linear path around the
    # blocks, so the embedding is what the blocks write (issue 25). Its conv/linear weights are
    # white at the token level: any linear code of width L keeps median per-layer val R^2 ~=
    # L / 64 (latent 32: 0.49, core.backbone.bounds), so reconstruction alone cannot choose the
    # latent. Raw tokens in (token_norm off): with the factored output from a random init, the
    # statistics term blew up (grad norms 1e3-1e4, val R^2 -0.25 at step 50 against 0.40 raw).
    # The projection head sees the whole window (003). d_model 256 and head size 64 feed the
    # bf16 matrix units
    "demo": dict(
        window=64, d_model=256, latent_dim=32, n_layers=3, n_heads=4, proj_dim=64,
        token_norm=False, head="window",
    ),
    # the same backbone, trained until it stops improving (TRAIN_PRESETS["demo-long"])
    "demo-long": dict(
        window=64, d_model=256, latent_dim=32, n_layers=3, n_heads=4, proj_dim=64,
        token_norm=False, head="window",
    ),
    # paper 001 Table 4 (HF-Small / HF-Large): ~456M / ~900M parameters; their tokens of 230
    # come from the token store (`weightatlas tokenize --preset paper-small`), not from here
    "paper-small": dict(
        window=512, d_model=1536, latent_dim=128, n_layers=8, n_heads=8,
        proj_dim=128,
    ),
    "paper-large": dict(
        window=512, d_model=1536, latent_dim=128, n_layers=16, n_heads=8,
        proj_dim=128,
    ),
}  # fmt: skip
register_presets("backbone", BackboneConfig, BACKBONE_PRESETS)


def sinusoidal_3d(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Parameter-free code of 3-D positions; each axis [n, l, k] gets its own channel group.

    Channels [0, g) encode n, [g, 2g) encode l, [2g, 3g) encode k, with g = 2 * (dim // 6)
    (sin and cos pairs with geometric wavelengths); leftover channels stay zero. Because the
    axes never share channels, swapping values between axes changes the code. Computed in
    float64 so that large n (hundreds of millions of tokens) keep distinct codes.

    Args:
        positions: (..., 3) integer positions.
        dim: output channels C.
        base: longest wavelength scale.

    Returns:
        (..., C) float32 code.
    """
    half = dim // 6  # frequencies per axis
    if half < 1:
        raise ConfigError(f"d_model={dim} is too small for a 3-axis sinusoidal code (need >= 6)")
    freqs = base ** (-torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    angles = positions.to(torch.float64).unsqueeze(-1) * freqs  # (..., 3, half)
    code = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 3 * 2 * half)
    if code.shape[-1] < dim:
        code = F.pad(code, (0, dim - code.shape[-1]))
    return code.to(torch.float32)


def standardize_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Encoder input features (B, T, D + 2): each token standardized over its nonzero values,
    then its mean and log10 std, so that layers of any scale reach the encoder alike.

    Zeros (padding, masked-out augmentation values) are left out of the statistics and stay
    zero; a token with fewer than two nonzero values gets std 1.
    """
    x = tokens.float()
    nz = (x != 0).float()
    n = nz.sum(-1, keepdim=True)
    mean = (x * nz).sum(-1, keepdim=True) / n.clamp_min(1.0)
    var = (((x - mean) * nz) ** 2).sum(-1, keepdim=True) / n.clamp_min(1.0)
    std = torch.where(n > 1, var.sqrt(), torch.ones_like(var)).clamp_min(1e-12)
    feats = torch.cat([(x - mean) / std * nz, mean, torch.log10(std)], dim=-1)
    return feats.to(tokens.dtype)


def scaled_in(tokens: torch.Tensor, cfg: BackboneConfig) -> torch.Tensor:
    """Raw tokens (token_norm off) as the encoder takes them: divided by ``token_scale``."""
    return tokens if cfg.token_scale == 1.0 else tokens / cfg.token_scale


def scaled_out(out: torch.Tensor, cfg: BackboneConfig) -> torch.Tensor:
    """A raw-token decoder's output in weight units: multiplied by ``token_scale``."""
    return out if cfg.token_scale == 1.0 else out * cfg.token_scale


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, H, T, d) heads, no mask.

    ``F.scaled_dot_product_attention`` (fused kernels) on accelerators and with dropout; on
    CPU two batched matmuls around a softmax, which is 1.5x (fp32) to 4.7x (bf16 autocast)
    faster than the CPU's fused kernel for forward + backward at d 64 and T 64 (measured on an
    AVX-512 BF16 CPU; the fused bf16 backward is slower than fp32). The softmax runs in the
    scores' dtype: the CPU kernel computes a bf16 softmax in fp32 and rounds its output once,
    as casting the scores to fp32 and the weights back did, without the two casts each way.
    """
    if q.device.type != "cpu" or dropout > 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(scores, dim=-1) @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention (``attention``: fused SDPA, or matmuls on CPU; no mask)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ConfigError(f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}")
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        # (B, H, T, C / H)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = attention(q, k, v, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, hidden),
            nn.GELU(),
            nn.Linear(hidden, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Stack(nn.Module):
    """Input map + position code + blocks + final norm + output map: one side of the autoencoder."""

    def __init__(self, cfg: BackboneConfig, d_in: int, d_out: int):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(d_in, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.outp = nn.Linear(cfg.d_model, d_out)
        self.skip = nn.Linear(d_in, d_out, bias=False) if cfg.skip else None

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, code: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``code``: the positions' ``sinusoidal_3d`` code when the caller has it already (both
        sides share it: ``Backbone.forward`` computes it once per window batch)."""
        pos = (
            sinusoidal_3d(positions, self.cfg.d_model, self.cfg.pos_base) if code is None else code
        )
        h = self.drop(self.inp(x) + pos.to(x.dtype))  # (B, T, C)
        for block in self.blocks:
            h = block(h)
        out = self.outp(self.ln(h))
        return out if self.skip is None else out + self.skip(x)


class Backbone(nn.Module):
    """The autoencoder: ``encode`` (B,T,D)->(B,T,L), ``decode`` (B,T,L)->(B,T,D), ``project``."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        extra = 2 if cfg.token_norm else 0  # (mean, log10 std) in; (shift, log scale) out
        self.encoder = Stack(cfg, cfg.token_size + extra, cfg.latent_dim)
        self.decoder = Stack(cfg, cfg.latent_dim, cfg.token_size + extra)
        if cfg.head not in ("mean", "window"):
            raise ConfigError(f"head must be 'mean' or 'window', got {cfg.head!r}")
        head_in = cfg.latent_dim * (cfg.window if cfg.head == "window" else 1)
        self.head = nn.Sequential(
            nn.Linear(head_in, cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.d_model, cfg.proj_dim),
        )
        self.apply(self._init)
        for side in (self.encoder, self.decoder):  # content as strong as the position code
            nn.init.normal_(side.inp.weight, std=side.inp.in_features**-0.5)
        if cfg.skip:  # the blocks' share starts at zero: the model starts as the linear path
            for side in (self.encoder, self.decoder):
                nn.init.zeros_(side.outp.weight)
                nn.init.normal_(side.skip.weight, std=side.skip.in_features**-0.5)

    @torch.no_grad()
    def init_skip_pca(self, tokens: torch.Tensor) -> float:
        """Set the skip maps to the best rank-``latent_dim`` linear code of ``tokens``.

        With ``token_norm`` (and ``latent_dim >= 3``), two latent channels carry each token's
        mean and log10 std exactly and the other ``latent_dim - 2`` the top principal
        directions of the standardized patterns; the decoder skip maps back (log10 std out as
        the natural log scale). A plain PCA of the features would drop the mean first (weights
        are ~1e-2, so its energy is tiny) although per-layer R^2 depends on it: at latent 32 /
        token 64 on the demo zoo, median conv/linear val R^2 0.04 with plain PCA, 0.49 with
        this code. Without ``token_norm``: the uncentred PCA of the tokens. Everything passes
        through the bottleneck: with latent_dim < token_size this is a compression, not a copy.

        Args:
            tokens: (N, D) sample of real training tokens (padding zero).

        Returns:
            The fraction of the pattern's (or, without token_norm, the tokens') energy kept.
        """
        if self.encoder.skip is None:
            raise WeightAtlasError("init_skip_pca needs a backbone with skip=True")
        x = tokens.float().reshape(-1, 1, tokens.shape[-1])
        feats = (standardize_tokens(x) if self.cfg.token_norm else scaled_in(x, self.cfg)).reshape(
            x.shape[0], -1
        )
        D, L = self.cfg.token_size, self.cfg.latent_dim
        exact = 2 if self.cfg.token_norm and L >= 3 else 0  # mean and log10 std channels
        basis = feats[:, :D] if exact else feats
        _, s, vh = torch.linalg.svd(basis.double(), full_matrices=False)
        k = min(L - exact, vh.shape[0])
        enc = torch.zeros_like(self.encoder.skip.weight, dtype=torch.float64)  # (L, F)
        enc[:k, : vh.shape[1]] = vh[:k]
        for j in range(exact):  # feature D + j (mean, log10 std) -> latent channel k + j
            enc[k + j, D + j] = 1.0
        dec = enc.T.clone()  # (F, L)
        if self.cfg.token_norm:  # input log10 std -> output natural log scale
            dec[-1] *= math.log(10.0)
        self.encoder.skip.weight.copy_(enc)
        self.decoder.skip.weight.copy_(dec)
        return float((s[:k] ** 2).sum() / (s**2).sum())

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def encode(
        self, tokens: torch.Tensor, positions: torch.Tensor, code: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-token latents z (B, T, L) of tokens (B, T, D) at positions (B, T, 3)."""
        if tokens.shape[-1] != self.cfg.token_size:
            raise WeightAtlasError(
                f"tokens of size {tokens.shape[-1]} given to a backbone of token size "
                f"{self.cfg.token_size}; re-tokenize with --token-size {self.cfg.token_size}"
            )
        tokens = standardize_tokens(tokens) if self.cfg.token_norm else scaled_in(tokens, self.cfg)
        return self.encoder(tokens, positions, code)

    def decode_parts(
        self, z: torch.Tensor, positions: torch.Tensor, code: torch.Tensor | None = None
    ) -> Factored:
        """Standardized pattern (B, T, D), shift (B, T, 1) and log scale (B, T, 1) of each token.

        Only for ``token_norm`` backbones; ``decode`` composes them as pattern * scale + shift.
        """
        if not self.cfg.token_norm:
            raise WeightAtlasError("decode_parts needs a token_norm backbone")
        out = self.decoder(z, positions, code)
        D = self.cfg.token_size
        return Factored(out[..., :D], out[..., D : D + 1], out[..., D + 1 :])

    def decode(
        self, z: torch.Tensor, positions: torch.Tensor, code: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reconstructed tokens (B, T, D) from latents z (B, T, L) at positions (B, T, 3)."""
        if not self.cfg.token_norm:
            return scaled_out(self.decoder(z, positions, code), self.cfg)
        return self.decode_parts(z, positions, code).compose()

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Contrastive projection (B, P) of the window's latents (B, T, L): of their mean
        (``head="mean"``) or of the whole window flattened (``head="window"``, T = ``window``)."""
        if self.cfg.head == "window":
            if z.shape[1] != self.cfg.window:
                raise WeightAtlasError(
                    f"the window head projects windows of {self.cfg.window} tokens, got {z.shape[1]}"
                )
            return self.head(z.flatten(1))
        return self.head(z.mean(dim=1))

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, factored: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | Factored, torch.Tensor]:
        """(z (B,T,L), reconstruction (B,T,D), projection (B,P)).

        With ``factored`` (token_norm backbones), the reconstruction is returned as its
        ``Factored`` parts, which the training loss scores separately (see core.backbone.losses).
        """
        # the position code once for both sides (float64 sines: ~8 ms per call at the demo's
        # 4,096 tokens on 2 CPU threads)
        code = sinusoidal_3d(positions, self.cfg.d_model, self.cfg.pos_base)
        z = self.encode(tokens, positions, code)
        if factored and self.cfg.token_norm:
            return z, self.decode_parts(z, positions, code), self.project(z)
        return z, self.decode(z, positions, code), self.project(z)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matmul_params(cfg: BackboneConfig) -> int:
    """Weights that take part in a matmul per token (every Linear weight), for FLOP counts."""
    C, hidden = cfg.d_model, int(cfg.mlp_ratio * cfg.d_model)
    per_block = 3 * C * C + C * C + 2 * C * hidden
    sides = 2 * cfg.n_layers * per_block
    io = 2 * (cfg.token_size * C + cfg.latent_dim * C)  # input and output maps of both sides
    # applied once per window, counted per token (the window head's T * L inputs: L per token)
    head = cfg.latent_dim * C + C * cfg.proj_dim
    extra = 2 if cfg.token_norm else 0
    skip = 2 * (cfg.token_size + extra) * cfg.latent_dim if cfg.skip else 0
    return sides + io + head + skip


def flops_per_token(cfg: BackboneConfig, window: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token: 6 * matmul weights + attention scores.

    Attention per block and token: QK^T and AV each 2 * T * C multiply-adds forward, times 3
    for forward plus backward.
    """
    T = window or cfg.window
    attention = 2 * cfg.n_layers * 3 * (2 * 2 * T * cfg.d_model)
    return 6.0 * matmul_params(cfg) + attention


def find_backbone(path: str | Path) -> Path:
    """The backbone directory of an atlas root, or ``path`` itself if it is one."""
    path = Path(path)
    if BackboneFiles(path).exists():
        return path
    if Atlas(path).backbone.weights_path.exists():
        return Atlas(path).backbone_dir
    raise WeightAtlasError(
        f"{path} holds no trained backbone (config.json + model.safetensors); "
        "run `weightatlas train` first"
    )


def save_backbone(model: Backbone, out: str | Path, config: dict[str, Any] | None = None) -> Path:
    """Write ``out/model.safetensors`` and ``out/config.json`` (``config``, by default
    ``{"backbone": model.cfg}``; a training run passes its whole run configuration).

    Each file is written atomically; ``load_backbone(out)`` reads them back.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    files = BackboneFiles(out)
    with atomic_path(files.weights_path) as tmp:
        save_file(weights, str(tmp))
    write_json(files.config_path, config or {"backbone": to_dict(model.cfg)})
    return out


def load_config(path: str | Path) -> BackboneConfig:
    """The BackboneConfig saved in a backbone directory's config.json."""
    cfg = read_json(BackboneFiles(Path(path)).config_path)
    if "backbone" not in cfg:
        raise WeightAtlasError(f"{path}/config.json has no 'backbone' section")
    return merge(BackboneConfig(), cfg["backbone"], f"{path}/config.json")


def load_backbone(path: str | Path, device: str | torch.device = "cpu") -> Backbone:
    """Load trained weights (safetensors) from an atlas root or a backbone dir, in eval mode."""
    from safetensors.torch import load_file

    d = find_backbone(path)
    model = Backbone(load_config(d))
    state = load_file(BackboneFiles(d).weights_path, device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightAtlasError(
            f"{d}/model.safetensors does not match its config.json "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    return model.to(device).eval()


def describe(cfg: BackboneConfig) -> dict[str, Any]:
    """Size summary of a configuration, computed without allocating the weights."""
    with torch.device("meta"):
        n = count_params(Backbone(cfg))
    return {
        "params": n,
        "matmul_params": matmul_params(cfg),
        "gflops_per_token": flops_per_token(cfg) / 1e9,
        "window": cfg.window,
        "latent_dim": cfg.latent_dim,
    }
