"""Token schemes (``dense``, ``sparse``), layer kinds, and the layout of a tokenized model."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from core.atlas import TokenTable
from core.errors import WeightAtlasError
from core.models.registry import trainable_names

# the token table owns the defaults (core.atlas.TokenTable); these names are for the configs
DEFAULT_TOKEN_SIZE = TokenTable.DEFAULT_TOKEN_SIZE
DEFAULT_SCHEME = TokenTable.DEFAULT_SCHEME


@dataclass
class LayerEntry:
    """One tokenized tensor: where its tokens are and how to put it back together.

    Attributes:
        name: state-dict key.
        shape: original shape.
        dtype: original dtype as a torch name (``float32``, ``bfloat16``, ...).
        offset: index of its first token in the model's sequence.
        count: number of tokens (``rows * ceil(row_len / D)``).
        rows: rows the scheme cut the tensor into.
        row_len: values per row (``rows * row_len == numel``).
        kind: coarse layer kind (see ``KINDS``).
        layer: its layer index ``l`` (position in the layer table).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    count: int
    rows: int
    row_len: int
    kind: str
    layer: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerEntry:
        return cls(**{**d, "shape": tuple(d["shape"])})


@dataclass
class Tokenized:
    """A tokenized model. ``mask`` (N, D) bool is derived from ``valid`` on demand.

    Attributes:
        tokens: (N, D) float32 tokens, zero where padded.
        valid: (N,) int32 number of real values per token (they form a prefix).
        positions: (N, 3) int64 ``[n, l, k]``.
        layers: layer table, one entry per tokenized tensor, in sequence order.
        excluded: ``{name, reason, shape, dtype}`` for every tensor left out.
        scheme: scheme name.
        token_size: D.
        digest: duplicate hash of the tokenized tensors (``HASH_SCHEME``), if computed.
        layout: ``current`` (stored names are the module's) or ``legacy`` (renamed on load).
    """

    tokens: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    layers: list[LayerEntry]
    excluded: list[dict[str, Any]] = field(default_factory=list)
    scheme: str = "dense"
    token_size: int = DEFAULT_TOKEN_SIZE
    digest: str | None = None  # duplicate hash (``HASH_SCHEME``) when computed
    layout: str = "current"  # "legacy": read through the library's loader (renamed keys)

    @property
    def mask(self) -> torch.Tensor:
        """(N, D) bool, True on real values."""
        return valid_to_mask(self.valid, self.tokens.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])


def valid_to_mask(valid: torch.Tensor, token_size: int) -> torch.Tensor:
    """(N,) counts of real values -> (N, D) bool mask of real values."""
    return torch.arange(token_size) < valid.reshape(-1, 1)


# --------------------------------------------------------------------------- schemes

# A scheme maps a tensor shape to (rows, row_len): the tensor is viewed as (rows, row_len) and
# every row is cut into ceil(row_len / D) tokens, the last one zero-padded.
SchemeFn = Callable[[tuple[int, ...]], tuple[int, int]]
SCHEMES: dict[str, SchemeFn] = {}


def register_scheme(name: str) -> Callable[[SchemeFn], SchemeFn]:
    """Register a tokenization scheme under ``name``."""

    def deco(fn: SchemeFn) -> SchemeFn:
        SCHEMES[name] = fn
        return fn

    return deco


def get_scheme(name: str) -> SchemeFn:
    """The scheme registered as ``name``; a one-line error for unknown names."""
    if name not in SCHEMES:
        raise WeightAtlasError(f"unknown token scheme {name!r}; choose from {', '.join(SCHEMES)}")
    return SCHEMES[name]


@register_scheme("dense")
def _dense(shape: tuple[int, ...]) -> tuple[int, int]:
    """The whole tensor is one row: only its last token is padded."""
    return 1, int(np.prod(shape, dtype=np.int64))


@register_scheme("sparse")
def _sparse(shape: tuple[int, ...]) -> tuple[int, int]:
    """One row per outgoing channel ``(c_out, rest)``: every row's last token is padded."""
    if len(shape) == 0:
        return 1, 1
    return int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))


# --------------------------------------------------------------------------- layer kinds

# Coarse layer kinds (per-layer-type metrics), decided from the module owning each parameter.
KINDS = ("conv", "linear", "norm", "embedding", "bias", "vector", "other")
_KIND_TYPES: list[tuple[tuple[type, ...], str]] = [
    ((nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm), "norm"),
    ((nn.modules.conv._ConvNd,), "conv"),
    ((nn.Linear, nn.Bilinear, nn.MultiheadAttention), "linear"),
    ((nn.Embedding, nn.EmbeddingBag), "embedding"),
]
if hasattr(nn, "RMSNorm"):
    _KIND_TYPES[0] = (_KIND_TYPES[0][0] + (nn.RMSNorm,), "norm")


def register_kind(kind: str, *types: type) -> None:
    """Classify parameters owned by modules of ``types`` as ``kind`` (checked first)."""
    if kind not in KINDS:
        raise ValueError(f"unknown layer kind {kind!r}; choose from {KINDS}")
    _KIND_TYPES.insert(0, (tuple(types), kind))


def _library_kind_types() -> list[tuple[tuple[type, ...], str]]:
    """Layer types of libraries that are already imported (never imports them)."""
    out: list[tuple[tuple[type, ...], str]] = []
    pu = sys.modules.get("transformers.pytorch_utils")
    if pu is not None and hasattr(pu, "Conv1D"):
        out.append(((pu.Conv1D,), "linear"))
    tl = sys.modules.get("timm.layers")
    if tl is not None:
        norms = tuple(
            getattr(tl, n) for n in ("RmsNorm", "RmsNorm2d", "SimpleNorm") if hasattr(tl, n)
        )
        if norms:
            out.append((norms, "norm"))
    return out


def kind_from_rank(rank: int) -> str:
    """Layer kind guessed from a tensor's rank when no module structure is available."""
    if rank >= 3:
        return "conv"
    if rank == 2:
        return "linear"
    return "vector"


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """Kind of every state-dict entry of ``model``, from the type of the module owning it."""
    table = _library_kind_types() + _KIND_TYPES
    out: dict[str, str] = {}
    for prefix, module in model.named_modules():
        kind = next((k for types, k in table if isinstance(module, types)), None)
        for local, t in list(module.named_parameters(recurse=False)) + list(
            module.named_buffers(recurse=False)
        ):
            name = f"{prefix}.{local}" if prefix else local
            if kind is None:
                out[name] = "other"
            elif kind in ("conv", "linear", "embedding") and t.dim() <= 1:
                out[name] = "bias"
            else:
                out[name] = kind
    return out


def trainable_of(model: nn.Module) -> set[str]:
    """Names of trainable tensors (``core.models.registry.trainable_names``)."""
    return set(trainable_names(model))
