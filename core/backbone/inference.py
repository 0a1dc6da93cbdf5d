"""bf16 inference on the CPU: the backbone's forward with packed weights and fused GELU.

Sampling runs 8-12 haloed passes over every token of the target (issue 17: ResNet-18 has
174,616 tokens); under bf16 autocast each ``nn.Linear`` call re-casts its fp32 weight, runs an
unpacked matmul and writes a bf16 output that GELU reads again. :class:`PackedBackbone` holds
the same weights cast to bf16 once and reordered for oneDNN (``torch.ops.mkldnn``), and fuses
GELU into the first MLP matmul. The computation is the backbone's own (same blocks, same exact
GELU, same attention), with a bf16 residual stream.

    from core.backbone.inference import packed_backbone
    fast = packed_backbone(backbone)          # None where oneDNN bf16 is not available
    z = fast.encode(tokens, positions)        # (B, T, L), as Backbone.encode under autocast

Shapes: B windows, T window length, D token size, C = d_model, L latent dim.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.backbone.losses import Factored
from core.backbone.model import (
    Backbone,
    Stack,
    attention,
    scaled_in,
    scaled_out,
    sinusoidal_3d,
    standardize_tokens,
)

# below this width CPU bf16 does not pay (its casts cost what the matmuls save; measured with
# the ci backbone, d_model 64: ``weightatlas bench sample`` bf16 67.7 s vs fp32 64.4 s)
BF16_MIN_WIDTH = 256

# the M (rows per call) oneDNN packs the weights for: 64 windows of 64 tokens (SampleConfig)
PACK_ROWS = 4096


def _mkldnn_ops() -> tuple[Any, Any] | None:
    """``(linear_pointwise, reorder_linear_weight)`` of this torch build, or None."""
    ops = torch.ops.mkldnn
    try:
        return ops._linear_pointwise, ops._reorder_linear_weight
    except (AttributeError, RuntimeError):
        return None


class _Linear:
    """One ``nn.Linear`` as bf16 weights packed for oneDNN, optionally with GELU fused."""

    def __init__(self, lin: nn.Linear, gelu: bool = False):
        ops = _mkldnn_ops()
        if ops is None:
            raise RuntimeError("this torch build has no oneDNN linear")
        self._op, reorder = ops
        w = lin.weight.detach().to(torch.bfloat16).contiguous()
        self.weight = reorder(w, PACK_ROWS)
        self.bias = None if lin.bias is None else lin.bias.detach().to(torch.bfloat16)
        # "none" is the exact (erf) GELU of nn.GELU(); "" is no activation
        self._attr, self._algo = ("gelu", "none") if gelu else ("none", "")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._op(x, self.weight, self.bias, self._attr, [], self._algo)


class _Norm:
    """One ``nn.LayerNorm`` with bf16 affine parameters."""

    def __init__(self, ln: nn.LayerNorm):
        self.shape, self.eps = ln.normalized_shape, ln.eps
        self.weight = ln.weight.detach().to(torch.bfloat16)
        self.bias = ln.bias.detach().to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


class _PackedStack:
    """One side of the autoencoder (``core.backbone.model.Stack``) in packed bf16."""

    def __init__(self, stack: Stack):
        self.inp, self.outp, self.ln = _Linear(stack.inp), _Linear(stack.outp), _Norm(stack.ln)
        self.skip = None if stack.skip is None else _Linear(stack.skip)
        self.blocks = [
            (
                b.attn.n_heads,
                _Norm(b.ln1),
                _Linear(b.attn.qkv),
                _Linear(b.attn.out),
                _Norm(b.ln2),
                _Linear(b.mlp[0], gelu=True),
                _Linear(b.mlp[2]),
            )
            for b in stack.blocks
        ]

    def __call__(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        h = self.inp(x) + code.to(torch.bfloat16)  # (B, T, C)
        B, T, C = h.shape
        for heads, ln1, qkv, out, ln2, fc1, fc2 in self.blocks:
            q, k, v = qkv(ln1(h)).split(C, dim=-1)
            q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))
            h = h + out(attention(q, k, v, 0.0).transpose(1, 2).reshape(B, T, C))
            h = h + fc2(fc1(ln2(h)))
        y = self.outp(self.ln(h))
        return y if self.skip is None else y + self.skip(x)


class PackedBackbone:
    """``Backbone.encode`` / ``decode`` in packed bf16 (inference only; outputs bf16)."""

    def __init__(self, backbone: Backbone):
        self.cfg = backbone.cfg
        self.encoder = _PackedStack(backbone.encoder)
        self.decoder = _PackedStack(backbone.decoder)

    def _code(self, positions: torch.Tensor, code: torch.Tensor | None) -> torch.Tensor:
        return (
            sinusoidal_3d(positions, self.cfg.d_model, self.cfg.pos_base) if code is None else code
        )

    @torch.inference_mode()
    def encode(
        self, tokens: torch.Tensor, positions: torch.Tensor, code: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-token latents ``(B, T, L)`` of tokens ``(B, T, D)``, as ``Backbone.encode``."""
        tokens = (
            standardize_tokens(tokens.float())
            if self.cfg.token_norm
            else scaled_in(tokens, self.cfg)
        )
        return self.encoder(tokens, self._code(positions, code))

    @torch.inference_mode()
    def decode(
        self, z: torch.Tensor, positions: torch.Tensor, code: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reconstructed tokens ``(B, T, D)`` from latents ``(B, T, L)``, as ``Backbone.decode``."""
        out = self.decoder(z, self._code(positions, code))
        if not self.cfg.token_norm:
            return scaled_out(out, self.cfg)
        D = self.cfg.token_size
        return Factored(out[..., :D], out[..., D : D + 1], out[..., D + 1 :]).compose()


# backbone -> (its parameters' versions when packed, the copy or None, which sides agree)
_PACKED: weakref.WeakKeyDictionary[
    Backbone, tuple[tuple[int, ...], PackedBackbone | None, tuple[bool, bool]]
] = weakref.WeakKeyDictionary()


def packed_backbone(backbone: Backbone, decode: bool = True) -> PackedBackbone | None:
    """The packed bf16 copy of a CPU backbone, or None where this torch build has no oneDNN
    bf16 linear or the copy disagrees with autocast.

    Made once per backbone object and made again after any in-place change to its weights
    (tensor version counters). The copy is checked against ``Backbone.encode`` / ``decode``
    under bf16 autocast on random windows: relative mean squared difference below 1e-3 (bf16
    rounding is ~1e-5). ``decode=False``: only the encoder is checked (what embedding uses;
    the demo backbone's packed decoder differs from autocast by 5.8e-3 on the random windows
    while its encoder agrees to 3e-6).
    """
    versions = tuple(p._version for p in backbone.parameters())
    cached = _PACKED.get(backbone)
    if cached is None or cached[0] != versions:
        packed: PackedBackbone | None = None
        ok = (False, False)
        if _mkldnn_ops() is not None and next(backbone.parameters()).device.type == "cpu":
            try:
                packed = PackedBackbone(backbone)
                ok = _agrees(backbone, packed)
            except RuntimeError:  # no bf16 kernels for this CPU in this build
                packed = None
        cached = (versions, packed, ok)
        _PACKED[backbone] = cached
    _, packed, (enc_ok, dec_ok) = cached
    return packed if enc_ok and (dec_ok or not decode) else None


def _agrees(backbone: Backbone, packed: PackedBackbone) -> tuple[bool, bool]:
    """Whether the packed encoder and decoder each agree with autocast (see packed_backbone)."""
    g = torch.Generator().manual_seed(0)
    T = int(backbone.cfg.window)
    x = torch.randn(2, T, backbone.cfg.token_size, generator=g) * 0.05
    pos = torch.zeros(2, T, 3, dtype=torch.long)
    pos[..., 0] = torch.arange(T)
    pos[..., 2] = torch.arange(T)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        z_ref = backbone.encode(x, pos).float()
        rec_ref = backbone.decode(z_ref, pos).float()
    z = packed.encode(x, pos).float()
    rec = packed.decode(z_ref, pos).float()

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b) ** 2).mean() / (b**2).mean().clamp_min(1e-30))

    return rel(z, z_ref) < 1e-3, rel(rec, rec_ref) < 1e-3
