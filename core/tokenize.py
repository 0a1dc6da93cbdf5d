"""Weight tokenization: models <-> fixed-size weight tokens, and the ``tokenize`` stage.

A model becomes a sequence of ``N`` tokens of ``D`` values (papers 001 sec. 3.3, 003 sec. 2):

- ``dense`` (001): flatten each tensor, cut it into tokens of ``D``, zero-pad its last token.
- ``sparse`` (SANE): view each tensor as ``(c_out, rest)`` (1-d as ``(c, 1)``, 0-d as
  ``(1, 1)``), cut every row into tokens of ``D`` and zero-pad each row's last token.

Both are one vectorised strided copy per tensor into a preallocated ``(N, D)`` array. Real
values always form a prefix of a token, so ``valid (N,)`` (real values per token) is the mask.
Positions are 0-based ``[n, l, k]``: token index in the model, tensor (layer) index among the
tokenized tensors, token index within that tensor. Each tokenized tensor has a ``LayerEntry``
(name, shape, dtype, offset, count, rows, row_len, kind) that makes ``detokenize`` exact
(``torch.equal``) for every float dtype whose values fit float32 (fp32, fp16, bf16, fp8);
float64 is rounded to float32. Integer/bool/complex tensors and non-trainable buffers (batch-norm
statistics, ``num_batches_tracked``, decided from the module structure) are left out and
recorded in ``excluded`` so that generation can rebuild them.

The stage (``weightatlas tokenize ATLAS [--scheme dense|sparse] [--token-size D]``) streams each
accepted model tensor by tensor from its safetensors files (``safe_open``) into memory-mapped
shards ``ATLAS/tokens/shard-<hash>.safetensors`` (``tokens (N, D) f32``, ``valid (N,) i32``,
``positions (N, 3) i64``), appends one row per model to ``tokens/parts/rank-XXXXX.jsonl`` and
merges them into ``tokens/index.json`` and ``tokens/stats.json``. It is resumable (models already
indexed are skipped; shards are written atomically) and sharded by ``RANK``/``WORLD_SIZE``.
The default token size is 64: our zoo models are small (thousands of weights per tensor), and
64 keeps the dense padding low while giving the backbone enough tokens per model; the paper
uses 230 (dense) and 288 (sparse), available as presets ``paper-dense`` / ``paper-sparse``.

    weightatlas tokenize ATLAS --scheme dense --token-size 64
    weightatlas bench tokenize
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.atlas import Atlas, append_jsonl, atomic_path, read_json, read_jsonl, write_json
from core.config import build_config
from core.errors import RejectedModel, WeightAtlasError

DEFAULT_TOKEN_SIZE = 64


@dataclass
class TokenizeConfig:
    """How models are cut into tokens and how the store is sharded.

    Attributes:
        scheme: a registered scheme (``dense`` or ``sparse``).
        token_size: values per token ``D``.
        shard_bytes: target source-weight bytes per shard file (a larger model gets its own).
    """

    scheme: str = "dense"
    token_size: int = DEFAULT_TOKEN_SIZE
    shard_bytes: int = 256 * 2**20


TOKENIZE_PRESETS: dict[str, dict[str, Any]] = {
    "ci": {"scheme": "dense", "token_size": 64, "shard_bytes": 16 * 2**20},
    "demo": {"scheme": "dense", "token_size": 64},
    "paper-dense": {"scheme": "dense", "token_size": 230, "shard_bytes": 2**30},
    "paper-sparse": {"scheme": "sparse", "token_size": 288, "shard_bytes": 2**30},
}


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
    """Names of trainable tensors: ``core.architectures.trainable_names`` when available."""
    try:
        from core.architectures import trainable_names
    except ImportError:
        return {n for n, _ in model.named_parameters()}
    return set(trainable_names(model))


# --------------------------------------------------------------------------- data types


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


_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; a one-line error for anything else."""
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise WeightAtlasError(f"unknown dtype {name!r} in layer table")
    return dt


# --------------------------------------------------------------------------- tensor sources


@dataclass
class _Meta:
    shape: tuple[int, ...]
    dtype: torch.dtype | None  # None: a dtype torch cannot represent


class _SafetensorsSource:
    """Tensors of one or more safetensors files, read one at a time with ``safe_open``."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self.handles: list[Any] = []
        self.where: dict[str, Any] = {}
        self._metas: dict[str, _Meta] = {}
        try:
            for path in files:
                h = safe_open(str(path), framework="pt")
                self.handles.append(h)
                for k in h.keys():
                    if k in self.where:
                        raise RejectedModel("duplicate tensor", f"{k} in more than one file")
                    s = h.get_slice(k)
                    self.where[k] = h
                    self._metas[k] = _Meta(tuple(s.get_shape()), _ST_DTYPES.get(s.get_dtype()))
        except RejectedModel:
            self.close()
            raise
        except Exception as e:  # a corrupt header is bad input, not a crash
            self.close()
            raise RejectedModel("unreadable safetensors", f"{type(e).__name__}: {e}") from e

    def metas(self) -> dict[str, _Meta]:
        return self._metas

    def get(self, name: str) -> torch.Tensor:
        return self.where[name].get_tensor(name)

    def close(self) -> None:
        for h in self.handles:
            if hasattr(h, "__exit__"):
                h.__exit__(None, None, None)
        self.handles = []


def _weight_files(path: str | Path) -> list[Path]:
    """Safetensors files of a model directory (or the file itself)."""
    from core.architectures import weight_files

    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return [path]
    if not path.is_dir():
        raise RejectedModel("not a model directory", str(path))
    return weight_files(path)


class _ModuleSource:
    """Tensors of a library-loaded module's canonical state dict (legacy key layouts)."""

    def __init__(self, sd: dict[str, torch.Tensor]):
        self.sd = sd

    def metas(self) -> dict[str, _Meta]:
        return {k: _Meta(tuple(v.shape), v.dtype) for k, v in self.sd.items()}

    def get(self, name: str) -> torch.Tensor:
        return self.sd[name]

    def close(self) -> None:
        self.sd = {}


def canonical_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The module's canonical state dict, loaded by its library from safetensors.

    ``core.architectures.load_model_dir`` maps old key names the way the library does
    (transformers' ``from_pretrained``: ``LayerNorm.gamma/beta``, pre-v5 ViT keys, ...), never
    with ``trust_remote_code``. Tied aliases (a second name for a tensor already listed) are
    left out, as a current-layout file stores them once.

    Returns:
        ``(state_dict, excluded)``: module order; ``excluded`` records the tied aliases.
    """
    from core.architectures import load_model_dir

    model = load_model_dir(path).model
    sd: dict[str, torch.Tensor] = {}
    tied: list[dict[str, Any]] = []
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            tied.append(
                {
                    "name": name,
                    "shape": list(t.shape),
                    "dtype": dtype_name(t.dtype),
                    "reason": f"tied to {seen[key]}",
                }
            )
            continue
        seen.setdefault(key, name)
        sd[name] = t.detach()
    return sd, tied


def renamed_layout(plan: ModelPlan, stored: Iterable[str], trainable: set[str] | None) -> bool:
    """Whether stored tensors carry names the module renames on load (a legacy key layout).

    True when some stored tensors have no place in the module while module tensors are absent
    under their own names (unused extras alone, e.g. a pre-training head, are not a layout).
    """
    unplaced = any(e["reason"] == "not in the architecture" for e in plan.excluded)
    return unplaced and bool((trainable or set()) - set(stored))


# Duplicate rule: two models are copies when their tokenized tensors have the same canonical
# names, shapes and values, values compared exactly after upcasting (so an fp16 copy of fp32
# weights is a duplicate only if every fp32 value is exactly representable in fp16; -0.0 and
# +0.0 differ, as they do in the tokens). Canonical bytes: float32 for every value float32 holds
# exactly (fp8/fp16/bf16 always, float64 where lossless), float64 otherwise (per block of 1 M
# values, tagged), so the hash runs at SHA-256 speed on fp32 weights.
HASH_SCHEME = "sha256/canonical-order/float32-exact-v2"


class _Hasher:
    """Wraps a tensor getter; hashes every tensor it hands out, in plan (module) order."""

    def __init__(self, get: Callable[[str], torch.Tensor]):
        self._get = get
        self._h = hashlib.sha256()

    def __call__(self, name: str) -> torch.Tensor:
        x = self._get(name)
        self._h.update(f"{name}|{tuple(x.shape)}|".encode())
        flat = x.detach().reshape(-1)
        if flat.dtype == torch.float32:
            self._h.update(flat.contiguous().numpy())
            return x
        for i in range(0, flat.numel(), 1 << 20):  # 1 M values at a time
            block = flat[i : i + (1 << 20)]
            f32 = block.to(torch.float32)
            if block.dtype == torch.float64 and not torch.equal(f32.to(torch.float64), block):
                self._h.update(b"|f64|")  # values float32 cannot hold: hash them as they are
                self._h.update(block.contiguous().numpy())
            else:
                self._h.update(f32.contiguous().numpy())
        return x

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def weights_digest(plan: ModelPlan, get: Callable[[str], torch.Tensor]) -> str:
    """The duplicate hash (``HASH_SCHEME``) of a planned model's tensors."""
    h = _Hasher(get)
    for e in plan.layers:
        h(e.name)
    return h.hexdigest()


# --------------------------------------------------------------------------- planning + filling


@dataclass
class ModelPlan:
    """Layer table and exclusions of one model, computed from shapes and dtypes only."""

    layers: list[LayerEntry]
    excluded: list[dict[str, Any]]
    n_tokens: int
    scheme: str
    token_size: int
    layout: str = "current"  # "legacy": tensors come from the library-loaded module

    @property
    def n_values(self) -> int:
        return sum(e.rows * e.row_len for e in self.layers)


def plan_tokens(
    metas: dict[str, _Meta],
    scheme: str,
    token_size: int,
    trainable: set[str] | None = None,
    order: Iterable[str] | None = None,
    kinds: dict[str, str] | None = None,
    buffers: set[str] | None = None,
) -> ModelPlan:
    """Lay out tokens for tensors described by ``metas`` (no tensor data is read).

    Args:
        metas: name -> shape/dtype.
        scheme: registered scheme name.
        token_size: D.
        trainable: names to tokenize; others are excluded as buffers. None: all float tensors.
        order: sequence order of names (module order); names not in it follow in ``metas`` order.
        kinds: name -> layer kind from the module structure; else guessed from rank.
        buffers: names the module structure knows as buffers (to tell them from unknown keys).
    """
    fn = get_scheme(scheme)
    if token_size < 1:
        raise WeightAtlasError(f"token size must be >= 1, got {token_size}")
    names = list(dict.fromkeys([*(n for n in (order or ()) if n in metas), *metas]))
    layers: list[LayerEntry] = []
    excluded: list[dict[str, Any]] = []
    offset = 0
    for name in names:
        m = metas[name]
        rec = {
            "name": name,
            "shape": list(m.shape),
            "dtype": dtype_name(m.dtype) if m.dtype else None,
        }
        if m.dtype is None or not m.dtype.is_floating_point:
            excluded.append({**rec, "reason": "not a float tensor"})
            continue
        if trainable is not None and name not in trainable:
            known = buffers is None or name in buffers
            excluded.append({**rec, "reason": "buffer" if known else "not in the architecture"})
            continue
        rows, row_len = fn(m.shape)
        count = rows * (-(-row_len // token_size))
        kind = (kinds or {}).get(name) or kind_from_rank(len(m.shape))
        layers.append(
            LayerEntry(
                name, m.shape, dtype_name(m.dtype), offset, count, rows, row_len, kind, len(layers)
            )
        )
        offset += count
    return ModelPlan(layers, excluded, offset, scheme, token_size)


def fill_tokens(
    plan: ModelPlan,
    get: Callable[[str], torch.Tensor],
    tokens: torch.Tensor,
    valid: torch.Tensor,
    positions: torch.Tensor,
) -> None:
    """Write a planned model into preallocated outputs, one tensor at a time.

    Args:
        plan: from ``plan_tokens``.
        get: name -> tensor (read lazily, so only one tensor is in memory at a time).
        tokens: (N, D) float32; any content (every value, padding included, is written).
        valid: (N,) int32.
        positions: (N, 3) int64.
    """
    d = plan.token_size
    n = plan.n_tokens
    if (
        tuple(tokens.shape) != (n, d)
        or tuple(valid.shape) != (n,)
        or tuple(positions.shape) != (n, 3)
    ):
        raise ValueError("output buffers do not match the plan")
    counts = torch.tensor([e.count for e in plan.layers], dtype=torch.int64)
    offsets = torch.tensor([e.offset for e in plan.layers], dtype=torch.int64)
    ar = torch.arange(n, dtype=torch.int64)
    positions[:, 0] = ar
    positions[:, 1] = torch.repeat_interleave(torch.arange(len(plan.layers)), counts, output_size=n)
    positions[:, 2] = ar - torch.repeat_interleave(offsets, counts, output_size=n)
    for e in plan.layers:
        x = get(e.name)
        if tuple(x.shape) != e.shape:
            raise RejectedModel("tensor shape changed", f"{e.name}: {tuple(x.shape)} != {e.shape}")
        if e.count == 0:
            continue
        per_row = e.count // e.rows
        v = valid[e.offset : e.offset + e.count].view(e.rows, per_row)
        v.fill_(d)
        v[:, -1] = e.row_len - (per_row - 1) * d
        block = tokens[e.offset : e.offset + e.count].view(e.rows, per_row * d)
        src = x.reshape(e.rows, e.row_len)
        if e.row_len == per_row * d:
            block.copy_(src)
        else:
            block[:, : e.row_len].copy_(src)
            block[:, e.row_len :].zero_()


def _apply(plan: ModelPlan, get: Callable[[str], torch.Tensor], digest: bool = False) -> Tokenized:
    tokens = torch.empty(plan.n_tokens, plan.token_size, dtype=torch.float32)
    valid = torch.empty(plan.n_tokens, dtype=torch.int32)
    positions = torch.empty(plan.n_tokens, 3, dtype=torch.int64)
    h = _Hasher(get) if digest else None
    fill_tokens(plan, h or get, tokens, valid, positions)
    return Tokenized(
        tokens,
        valid,
        positions,
        plan.layers,
        plan.excluded,
        plan.scheme,
        plan.token_size,
        digest=h.hexdigest() if h else None,
        layout=plan.layout,
    )


def _structure(
    model: nn.Module | None,
) -> tuple[list[str] | None, dict[str, str] | None, set[str] | None]:
    if model is None:
        return None, None, None
    order = list(model.state_dict(keep_vars=True).keys())
    buffers = {n for n, _ in model.named_buffers()}
    return order, layer_kinds(model), buffers


def tokenize_state_dict(
    sd: dict[str, torch.Tensor],
    scheme: str = "dense",
    token_size: int = DEFAULT_TOKEN_SIZE,
    trainable: set[str] | None = None,
    model: nn.Module | None = None,
) -> Tokenized:
    """Tokenize an in-memory state dict.

    Args:
        sd: name -> tensor.
        scheme: ``dense`` or ``sparse``.
        token_size: D.
        trainable: names to tokenize (default: from ``model``, else every float tensor).
        model: the module the state dict belongs to (meta device is fine); gives the trainable
            set, the sequence order and the layer kinds.
    """
    order, kinds, buffers = _structure(model)
    if trainable is None and model is not None:
        trainable = trainable_of(model)
    metas = {k: _Meta(tuple(v.shape), v.dtype) for k, v in sd.items()}
    plan = plan_tokens(metas, scheme, token_size, trainable, order, kinds, buffers)
    return _apply(plan, sd.__getitem__)


def detokenize(
    tokens: torch.Tensor, layers: Iterable[LayerEntry | dict[str, Any]]
) -> dict[str, torch.Tensor]:
    """Rebuild the tokenized tensors (exactly, for dtypes that fit float32).

    Args:
        tokens: (N, D) tokens of one model (reconstructed or sampled tokens work too).
        layers: its layer table (entries or their dicts).
    """
    d = tokens.shape[1]
    out: dict[str, torch.Tensor] = {}
    for e in layers:
        if isinstance(e, dict):
            e = LayerEntry.from_dict(e)
        t = torch.empty(e.shape, dtype=dtype_from_name(e.dtype))
        if e.count:
            per_row = e.count // e.rows
            block = tokens[e.offset : e.offset + e.count].reshape(e.rows, per_row * d)
            t.view(e.rows, e.row_len).copy_(block[:, : e.row_len])
        out[e.name] = t
    return out


# --------------------------------------------------------------------------- model directories


@dataclass
class ModelStructure:
    """What the architecture says about a model directory's tensors."""

    trainable: set[str] | None
    order: list[str] | None
    kinds: dict[str, str] | None
    buffers: set[str] | None


def model_structure(path: str | Path) -> ModelStructure:
    """Build the model of ``path/config.json`` empty (meta device) and read its structure.

    Structures are cached by config, so checkpoints of one architecture build it once.
    Raises RejectedModel when the config cannot be built (unknown type, ``auto_map``, ...).
    """
    from core.architectures import read_config

    return _structure_of_config(json.dumps(read_config(path), sort_keys=True))


@functools.lru_cache(maxsize=64)
def _structure_of_config(config_json: str) -> ModelStructure:
    from core.architectures import empty_model

    config = json.loads(config_json)
    try:
        with torch.device("meta"):
            model, _ = empty_model(config)
    except RejectedModel:
        raise
    except Exception:
        model, _ = empty_model(config)  # some inits need real tensors
    order, kinds, buffers = _structure(model)
    return ModelStructure(trainable_of(model), order, kinds, buffers)


def _plan_dir(
    path: str | Path, scheme: str, token_size: int, trainable: set[str] | None
) -> tuple[ModelPlan, _SafetensorsSource | _ModuleSource]:
    files = _weight_files(path)
    if trainable is None:
        st = model_structure(path)
    else:
        st = ModelStructure(trainable, None, None, None)
    src: _SafetensorsSource | _ModuleSource = _SafetensorsSource(files)
    try:
        plan = plan_tokens(
            src.metas(), scheme, token_size, st.trainable, st.order, st.kinds, st.buffers
        )
        if trainable is None and renamed_layout(plan, src.metas(), st.trainable):
            # a legacy key layout: tokenize what the library loads, under canonical names
            src.close()
            sd, tied = canonical_state_dict(path)
            src = _ModuleSource(sd)
            plan = plan_tokens(
                src.metas(), scheme, token_size, st.trainable, st.order, st.kinds, st.buffers
            )
            plan.excluded.extend(tied)
            plan.layout = "legacy"
        if plan.n_tokens == 0:
            raise RejectedModel("nothing to tokenize", "no trainable float tensors")
    except BaseException:
        src.close()
        raise
    return plan, src


def plan_model_dir(path: str | Path, scheme: str, token_size: int) -> ModelPlan:
    """The tokenize stage's plan of a model directory (legacy key layouts included).

    Raises:
        RejectedModel: the architecture cannot be built, the library cannot load a renamed
            layout, or nothing is tokenizable.
    """
    plan, src = _plan_dir(path, scheme, token_size, None)
    src.close()
    return plan


def _open_source(path: str | Path, plan: ModelPlan) -> _SafetensorsSource | _ModuleSource:
    """The tensors a plan was made from: the files, or the library-loaded module."""
    if plan.layout == "legacy":
        return _ModuleSource(canonical_state_dict(path)[0])
    return _SafetensorsSource(_weight_files(path))


def tokenize_model_dir(
    path: str | Path,
    scheme: str = "dense",
    token_size: int = DEFAULT_TOKEN_SIZE,
    trainable: set[str] | None = None,
) -> Tokenized:
    """Tokenize a model directory (or one safetensors file), streaming tensor by tensor.

    Args:
        path: snapshot directory with ``config.json`` and safetensors weights.
        scheme: ``dense`` or ``sparse``.
        token_size: D.
        trainable: names to tokenize; default: from ``core.architectures`` and ``config.json``.
            A checkpoint in a legacy key layout (``LayerNorm.gamma``, pre-v5 ViT names) is
            loaded by its library and tokenized under the module's canonical names, so
            ``detokenize`` gives the canonical layout.
    """
    plan, src = _plan_dir(path, scheme, token_size, trainable)
    try:
        return _apply(plan, src.get, digest=True)
    finally:
        src.close()


# --------------------------------------------------------------------------- shard files

_SHARD_DTYPES = {"positions": ("I64", 8), "tokens": ("F32", 4), "valid": ("I32", 4)}


def shard_layout(
    n: int, d: int, metadata: dict[str, str] | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Header bytes (length prefix included) and tensor table of a shard of ``n`` tokens."""
    shapes = {"positions": [n, 3], "tokens": [n, d], "valid": [n]}
    table: dict[str, Any] = {}
    begin = 0
    for name, (st_dtype, size) in _SHARD_DTYPES.items():
        nbytes = int(np.prod(shapes[name])) * size
        table[name] = {
            "dtype": st_dtype,
            "shape": shapes[name],
            "data_offsets": [begin, begin + nbytes],
        }
        begin += nbytes
    header = dict(table)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 64)  # data starts 64-byte aligned
    return len(raw).to_bytes(8, "little") + raw, table


def _write_shard(
    path: Path,
    plans: list[tuple[str, ModelPlan, Callable[[], Any]]],
    d: int,
    metadata: dict[str, str],
    digests: dict[str, str] | None = None,
) -> dict[str, int]:
    """Write the planned models into one shard file atomically; return id -> token offset.

    ``digests`` (if given) receives id -> duplicate hash of every model written.
    """
    n = sum(p.n_tokens for _, p, _ in plans)
    head, table = shard_layout(n, d, metadata)
    offsets: dict[str, int] = {}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(head)
            # reserve the blocks now: a full disk is an OSError (ENOSPC) here, not a SIGBUS
            # on a write through the memory map (issue 12)
            size = len(head) + table["valid"]["data_offsets"][1]
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), 0, size)
            else:
                f.truncate(size)
        mm = np.memmap(tmp, dtype=np.uint8, mode="r+")
        try:
            views = {}
            for name, (st_dtype, _) in _SHARD_DTYPES.items():
                b, e = table[name]["data_offsets"]
                np_dtype = {"I64": np.int64, "F32": np.float32, "I32": np.int32}[st_dtype]
                arr = mm[len(head) + b : len(head) + e].view(np_dtype).reshape(table[name]["shape"])
                views[name] = torch.from_numpy(arr)
            at = 0
            for mid, plan, open_src in plans:
                src = open_src()
                try:
                    sl = slice(at, at + plan.n_tokens)
                    h = _Hasher(src.get)
                    fill_tokens(
                        plan,
                        h,
                        views["tokens"][sl],
                        views["valid"][sl],
                        views["positions"][sl],
                    )
                    if digests is not None:
                        digests[mid] = h.hexdigest()
                finally:
                    src.close()
                offsets[mid] = at
                at += plan.n_tokens
            mm.flush()
        finally:
            del mm
    return offsets


# --------------------------------------------------------------------------- the stage


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if world < 1 or not 0 <= rank < world:
        raise WeightAtlasError(f"bad rank {rank} for world size {world}")
    return rank, world


def read_index(tokens_dir: str | Path) -> dict[str, Any]:
    """The merged token index: ``index.json`` plus rows of ``parts/*.jsonl`` not yet merged.

    Returns ``{"scheme", "token_size", "models": {id: entry}, "failed": {id: reason}}``.
    """
    tokens_dir = Path(tokens_dir)
    index: dict[str, Any] = {"scheme": None, "token_size": None, "models": {}, "failed": {}}
    if (tokens_dir / "index.json").exists():
        index.update(read_json(tokens_dir / "index.json"))
    rows = []
    for part in sorted((tokens_dir / "parts").glob("*.jsonl")):
        rows.extend(read_jsonl(part))
    rows.sort(key=lambda r: (r.get("status") != "ok", r.get("shard", ""), r["id"]))
    for r in rows:
        mid = r["id"]
        if mid in index["models"]:
            continue
        if r.get("status") == "ok":
            index["models"][mid] = {k: v for k, v in r.items() if k not in ("id", "status")}
            index["failed"].pop(mid, None)
        else:  # the latest failure's reason wins
            index["failed"][mid] = r.get("reason", "unknown")
        for key in ("scheme", "token_size"):
            if index[key] is None and r.get(key) is not None:
                index[key] = r[key]
    return index


def _model_path(atlas: Atlas, row: dict[str, Any]) -> Path:
    p = Path(row["path"])
    return p if p.is_absolute() else atlas.root / p


def _groups(
    rows: list[dict[str, Any]], atlas: Atlas, shard_bytes: int
) -> list[list[dict[str, Any]]]:
    """Consecutive groups of models with about ``shard_bytes`` of weight files each."""
    groups: list[list[dict[str, Any]]] = []
    cur: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        try:
            b = sum(f.stat().st_size for f in _weight_files(_model_path(atlas, row)))
        except (WeightAtlasError, OSError, KeyError, TypeError):
            b = 0  # an unreadable model fails (with a record) when its group is tokenized
        if cur and size + b > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(row)
        size += b
    if cur:
        groups.append(cur)
    return groups


def _check_scheme(
    atlas: Atlas, index: dict[str, Any], scheme: str | None, token_size: int | None
) -> tuple[str, int]:
    info = atlas.info()
    have = (index.get("scheme"), index.get("token_size"))
    if have == (None, None) and "token_scheme" in info and (index["models"] or index["failed"]):
        have = (info["token_scheme"], info.get("token_size"))
    if have[0] is not None:
        scheme = have[0] if scheme is None else scheme
        token_size = have[1] if token_size is None else token_size
        if (scheme, token_size) != have:
            raise WeightAtlasError(
                f"{atlas.tokens_dir} holds scheme={have[0]} token_size={have[1]}, not "
                f"scheme={scheme} token_size={token_size}; use those or remove {atlas.tokens_dir}"
            )
    return scheme or "dense", token_size or DEFAULT_TOKEN_SIZE


def tokenize(
    atlas: str | Path | Atlas,
    scheme: str | None = None,
    token_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    shard_bytes: int | None = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Tokenize the atlas' accepted models into ``ATLAS/tokens/`` (resumable, rank-sharded).

    Args:
        atlas: atlas directory.
        scheme: ``dense``/``sparse``; default: what the store already holds, else ``dense``.
        token_size: D; default: what the store already holds, else 64.
        rank, world_size: this process' share (default: env ``RANK``/``WORLD_SIZE``, else 0/1).
            Models are grouped into shards independently of the world size, and group ``g``
            goes to rank ``g % world_size``.
        shard_bytes: target weight bytes per shard.
        progress: show a tqdm bar.
        retry_failed: tokenize again the models that failed before (else they stay recorded).

    Returns:
        ``stats.json`` as a dict (merged over all ranks' results so far).
    """
    atlas = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    rank, world = _rank_world(rank, world_size)
    tokens_dir = atlas.tokens_dir
    index = read_index(tokens_dir)
    scheme, token_size = _check_scheme(atlas, index, scheme, token_size)
    get_scheme(scheme)
    if token_size < 1:
        raise WeightAtlasError(f"token size must be >= 1, got {token_size}")
    overrides: dict[str, Any] = {"scheme": scheme, "token_size": token_size}
    if shard_bytes is not None:
        overrides["shard_bytes"] = shard_bytes
    cfg = build_config(TokenizeConfig, TOKENIZE_PRESETS, None, overrides=overrides)
    if rank == 0:
        atlas.update_info(token_scheme=scheme, token_size=token_size)
    done = set(index["models"]) | (set() if retry_failed else set(index["failed"]))
    # Groups are cut from the whole sorted manifest, so they do not depend on the world size
    # or on what other ranks have finished; done models are skipped inside their group.
    # rows without weights (a slim atlas such as assets/demo keeps only some) are skipped
    rows = sorted((r for r in atlas.accepted() if r.get("path")), key=lambda r: r["id"])
    groups = [g for i, g in enumerate(_groups(rows, atlas, cfg.shard_bytes)) if i % world == rank]
    mine = [todo for g in groups if (todo := [r for r in g if r["id"] not in done])]
    part = tokens_dir / "parts" / f"rank-{rank:05d}.jsonl"
    meta = {"format": "pt", "scheme": scheme, "token_size": str(token_size)}
    bar = tqdm(
        total=sum(len(g) for g in mine),
        desc=f"tokenize[{rank}/{world}]",
        disable=not progress,
        unit="model",
    )
    for group in mine:
        digest = hashlib.sha1("\n".join(r["id"] for r in group).encode()).hexdigest()[:16]
        records = _tokenize_group(
            atlas, group, f"shard-{digest}.safetensors", scheme, token_size, meta
        )
        append_jsonl(part, records)
        bar.update(len(group))
    bar.close()
    stats = merge_index(atlas)
    index = read_index(tokens_dir)
    if {r["id"] for r in rows} <= set(index["models"]) | set(index["failed"]):
        stats["duplicates"] = len(mark_duplicates(atlas, index))  # the last rank to finish
    return stats


def find_duplicates(index: dict[str, Any], order: list[str] | None = None) -> dict[str, str]:
    """Duplicate id -> original id, from the token index' weight digests (``HASH_SCHEME``).

    The original of a group of copies is the first in ``order`` (manifest order: the copy
    collected first), else the smallest id; models without a digest are never duplicates.
    """
    rank = {mid: i for i, mid in enumerate(order or [])}
    groups: dict[str, list[str]] = {}
    for mid, m in index["models"].items():
        if m.get("digest"):
            groups.setdefault(m["digest"], []).append(mid)
    out: dict[str, str] = {}
    for ids in groups.values():
        ids.sort(key=lambda i: (rank.get(i, len(rank)), i))
        out.update({dup: ids[0] for dup in ids[1:]})
    return out


def mark_duplicates(
    atlas: str | Path | Atlas, index: dict[str, Any] | None = None
) -> dict[str, str]:
    """Record ``duplicate_of`` in the manifest and give every duplicate its original's split.

    Rows whose ``duplicate_of`` or ``split`` change are appended to ``manifest.jsonl`` (the last
    row per id wins); a duplicate's collect-time split is kept as ``split_collected``. Training
    leaves duplicates out; embeddings show each original once with a ``copies`` count.

    Returns:
        Duplicate id -> original id.
    """
    atlas = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    index = index if index is not None else read_index(atlas.tokens_dir)
    rows = atlas.manifest()
    dups = find_duplicates(index, [r["id"] for r in rows])
    by_id = {r["id"]: r for r in rows}
    changed = []
    for r in rows:
        orig = dups.get(r["id"])
        split = by_id[orig].get("split") if orig in by_id else r.get("split")
        if r.get("duplicate_of") == orig and r.get("split") == split:
            continue
        new = {**r, "duplicate_of": orig, "split": split}
        if orig is not None and "split_collected" not in r:
            new["split_collected"] = r.get("split")
        changed.append(new)
    if changed:
        append_jsonl(atlas.manifest_path, changed)
    return dups


def copies_of(manifest: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Original id -> ids of its duplicates (``duplicate_of`` in manifest rows)."""
    out: dict[str, list[str]] = {}
    for r in manifest:
        if r.get("duplicate_of"):
            out.setdefault(r["duplicate_of"], []).append(r["id"])
    return {k: sorted(v) for k, v in out.items()}


def _tokenize_group(
    atlas: Atlas,
    group: list[dict[str, Any]],
    shard: str,
    scheme: str,
    token_size: int,
    meta: dict[str, str],
) -> list[dict[str, Any]]:
    """Plan, then stream one group of models into one shard; failures become records."""
    failed: list[dict[str, Any]] = []
    planned: list[tuple[dict[str, Any], ModelPlan, Path]] = []
    for row in group:
        try:
            path = _model_path(atlas, row)
            plan, src = _plan_dir(path, scheme, token_size, None)
            src.close()
            planned.append((row, plan, path))
        except Exception as e:  # one bad model never stops the run
            failed.append(_failure(row, e, scheme, token_size))
    while planned:
        jobs = [
            (r["id"], p, (lambda path=path, p=p: _open_source(path, p))) for r, p, path in planned
        ]
        digests: dict[str, str] = {}
        try:
            offsets = _write_shard(atlas.tokens_dir / shard, jobs, token_size, meta, digests)
            break
        except Exception as e:  # drop the model that failed mid-stream and rewrite the shard
            bad = _failing_model(jobs)
            if bad is None:
                raise
            row = next(r for r, _, _ in planned if r["id"] == bad)
            failed.append(_failure(row, e, scheme, token_size))
            planned = [t for t in planned if t[0]["id"] != bad]
    else:
        offsets = {}
    ok = []
    for row, plan, _ in planned:
        ok.append(
            {
                "id": row["id"],
                "status": "ok",
                "scheme": scheme,
                "token_size": token_size,
                "shard": shard,
                "offset": offsets[row["id"]],
                "n_tokens": plan.n_tokens,
                "n_values": plan.n_values,
                "family": row.get("family"),
                "split": row.get("split"),
                "digest": digests[row["id"]],
                "layout": plan.layout,
                "layers": [e.to_dict() for e in plan.layers],
                "excluded": plan.excluded,
            }
        )
    return ok + failed


def _failing_model(
    jobs: list[tuple[str, ModelPlan, Callable[[], Any]]],
) -> str | None:
    """Find the first model whose tensors cannot be streamed (read each into a scratch buffer)."""
    for mid, plan, open_src in jobs:
        try:
            src = open_src()
        except Exception:
            return mid
        try:
            _apply(plan, src.get)
        except Exception:
            return mid
        finally:
            src.close()
    return None


def _failure(row: dict[str, Any], e: Exception, scheme: str, token_size: int) -> dict[str, Any]:
    reason = e.reason if isinstance(e, RejectedModel) else type(e).__name__
    detail = e.detail if isinstance(e, RejectedModel) else str(e)
    msg = f"{reason}: {detail}" if detail else reason
    return {
        "id": row["id"],
        "status": "failed",
        "reason": msg.splitlines()[0][:500],
        "scheme": scheme,
        "token_size": token_size,
    }


def merge_index(atlas: str | Path | Atlas) -> dict[str, Any]:
    """Merge per-rank parts into ``tokens/index.json`` and write ``tokens/stats.json``.

    Every rank merges when it finishes; a merge that raced with another rank's last rows is
    redone, so the last rank to finish leaves the complete index (readers use ``read_index``,
    which also reads unmerged parts, either way).
    """
    atlas = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    atlas.tokens_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        index = read_index(atlas.tokens_dir)
        index["models"] = dict(sorted(index["models"].items()))
        index["failed"] = dict(sorted(index["failed"].items()))
        write_json(atlas.tokens_dir / "index.json", index)
        stats = index_stats(index)
        write_json(atlas.tokens_dir / "stats.json", stats)
        again = read_index(atlas.tokens_dir)
        if again["models"].keys() == index["models"].keys() and again["failed"] == index["failed"]:
            break
    return stats


def index_stats(index: dict[str, Any]) -> dict[str, Any]:
    """Dataset statistics: tokens, real values, padding fraction, per family and per kind."""
    d = index.get("token_size") or 0
    fam: dict[str, dict[str, int]] = {}
    kinds: Counter[str] = Counter()
    n_tok = n_val = 0
    for m in index["models"].values():
        f = fam.setdefault(m.get("family") or "unknown", {"models": 0, "tokens": 0, "values": 0})
        f["models"] += 1
        f["tokens"] += m["n_tokens"]
        f["values"] += m["n_values"]
        n_tok += m["n_tokens"]
        n_val += m["n_values"]
        for e in m["layers"]:
            kinds[e["kind"]] += e["count"]
    for f in fam.values():
        f["padding_fraction"] = 1 - f["values"] / (f["tokens"] * d) if f["tokens"] else 0.0
    return {
        "scheme": index.get("scheme"),
        "token_size": index.get("token_size"),
        "models": len(index["models"]),
        "failed": len(index["failed"]),
        "tokens": n_tok,
        "values": n_val,
        "padding_fraction": 1 - n_val / (n_tok * d) if n_tok else 0.0,
        "token_bytes": n_tok * d * 4,
        "per_family": dict(sorted(fam.items())),
        "tokens_per_kind": dict(sorted(kinds.items())),
    }


def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("atlas", help="atlas directory (after `weightatlas collect`)")
    p.add_argument(
        "--scheme",
        choices=sorted(SCHEMES),
        default=None,
        help="token scheme (default: the store's, else dense)",
    )
    p.add_argument(
        "--token-size",
        type=int,
        default=None,
        help=f"values per token (default: the store's, else {DEFAULT_TOKEN_SIZE})",
    )
    p.add_argument(
        "--preset",
        choices=sorted(TOKENIZE_PRESETS),
        default=None,
        help="TokenizeConfig preset (scheme, token size, shard size); flags override it",
    )
    p.add_argument("--shard-mb", type=float, default=None, help="target weight MiB per shard file")
    p.add_argument("--rank", type=int, default=None, help="this process' rank (default: env RANK)")
    p.add_argument(
        "--retry-failed", action="store_true", help="tokenize models that failed before again"
    )
    p.add_argument(
        "--world-size", type=int, default=None, help="number of processes (default: env WORLD_SIZE)"
    )
    from core.cli import add_json_flag

    add_json_flag(p)


def run_cli(args: argparse.Namespace) -> int:
    preset = TOKENIZE_PRESETS.get(args.preset, {}) if args.preset else {}
    shard_bytes = preset.get("shard_bytes")
    if args.shard_mb is not None:
        shard_bytes = int(args.shard_mb * 2**20)
    stats = tokenize(
        args.atlas,
        scheme=args.scheme if args.scheme is not None else preset.get("scheme"),
        token_size=args.token_size if args.token_size is not None else preset.get("token_size"),
        rank=args.rank,
        world_size=args.world_size,
        shard_bytes=shard_bytes,
        retry_failed=args.retry_failed,
    )
    from core.cli import emit

    where = Path(args.atlas) / "tokens"
    if not stats.get("models") and not stats.get("failed"):
        text = (
            f"tokenize: nothing to tokenize in {args.atlas} (no accepted model in its manifest)\n"
            f"first: weightatlas collect {args.atlas} --source SOURCE"
        )
    else:
        text = (
            f"tokenize: {stats['models']} models cut into {stats['tokens']:,} tokens of "
            f"{stats['token_size']} values ({stats['scheme']} scheme, "
            f"{100 * stats['padding_fraction']:.1f}% padding); {stats['failed']} failed\n"
            f"token store: {where}\n"
            f"next: weightatlas train {args.atlas} --preset demo"
        )
    emit(args, {**stats, "out": str(where)}, text)
    return 0


# --------------------------------------------------------------------------- benchmark


def _best(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _memcpy(sd: dict[str, torch.Tensor]) -> None:
    total = sum(t.numel() for t in sd.values())
    dst = torch.empty(total, dtype=torch.float32)
    at = 0
    for t in sd.values():
        dst[at : at + t.numel()].copy_(t.reshape(-1))
        at += t.numel()


def bench_tokenize(args: argparse.Namespace) -> dict[str, Any]:
    """GB/s of dense/sparse tokenization and detokenization vs a memcpy of the same bytes.

    Also: windows/s read from a token store (``--n`` windows of 256 tokens, default 20000).
    """
    import tempfile

    import timm

    from core.store import TokenStore, WindowDataset

    repeat = max(1, args.repeat)
    d = DEFAULT_TOKEN_SIZE
    out: dict[str, Any] = {"token_size": d, "threads": torch.get_num_threads(), "models": {}}
    for arch in ("resnet18", "vit_small_patch16_224"):
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False)
        trainable = trainable_of(model)
        sd = {k: v.detach() for k, v in model.state_dict().items() if k in trainable}
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        r: dict[str, Any] = {"weights": sum(t.numel() for t in sd.values()), "bytes": nbytes}
        t_copy = _best(lambda sd=sd: _memcpy(sd), repeat)
        r["memcpy_gb_per_s"] = nbytes / t_copy / 1e9
        for scheme in SCHEMES:
            tk = tokenize_state_dict(sd, scheme, d, trainable=trainable, model=model)
            t_tok = _best(
                lambda sd=sd, s=scheme, tr=trainable, m=model: tokenize_state_dict(
                    sd, s, d, trainable=tr, model=m
                ),
                repeat,
            )
            t_det = _best(lambda tk=tk: detokenize(tk.tokens, tk.layers), repeat)
            r[f"{scheme}_tokenize_gb_per_s"] = nbytes / t_tok / 1e9
            r[f"{scheme}_tokenize_vs_memcpy"] = t_copy / t_tok
            r[f"{scheme}_detokenize_gb_per_s"] = nbytes / t_det / 1e9
            r[f"{scheme}_detokenize_vs_memcpy"] = t_copy / t_det
            r[f"{scheme}_tokens"] = tk.n_tokens
            r[f"{scheme}_padding_fraction"] = 1 - tk.valid.sum().item() / max(1, tk.tokens.numel())
        out["models"][arch] = r
        if arch == "resnet18":
            store_sd, store_model, store_trainable = sd, model, trainable

    n = args.n or 20000
    ws = 256
    with tempfile.TemporaryDirectory() as tmp:
        atlas = Atlas.create(tmp)
        tk = tokenize_state_dict(store_sd, "dense", d, trainable=store_trainable, model=store_model)
        write_store(atlas.tokens_dir, {f"m{i}": tk for i in range(4)}, "dense", d)
        store = TokenStore(atlas.tokens_dir)
        ds = WindowDataset(store, store.ids, ws, seed=0)
        m = len(ds)

        def read_windows() -> None:
            for i in range(n):
                ds[i % m]

        t_win = _best(read_windows, repeat)
        src = tk.tokens.numpy()
        rng = np.random.default_rng(0)
        starts = rng.integers(0, src.shape[0] - ws, size=n)

        def copy_windows() -> None:
            for s in starts:
                torch.from_numpy(src[s : s + ws].copy())

        t_base = _best(copy_windows, repeat)
        out["store"] = {
            "window_tokens": ws,
            "windows": n,
            "windows_per_s": n / t_win,
            "baseline_in_memory_slice_windows_per_s": n / t_base,
            "seconds": t_win,
        }
    return out


def write_store(
    tokens_dir: Path, models: dict[str, Tokenized], scheme: str, token_size: int
) -> None:
    """Write in-memory tokenized models as one shard plus an index part (bench, tests, generated sets)."""
    rows = []
    at = 0
    shard = "shard-" + hashlib.sha1("\n".join(models).encode()).hexdigest()[:16] + ".safetensors"
    head, table = shard_layout(
        sum(t.n_tokens for t in models.values()), token_size, {"format": "pt"}
    )
    tokens_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(tokens_dir / shard) as tmp, open(tmp, "wb") as f:
        f.write(head)
        for name in _SHARD_DTYPES:
            for tk in models.values():
                t = {"positions": tk.positions, "tokens": tk.tokens, "valid": tk.valid}[name]
                f.write(t.contiguous().numpy().tobytes())
    for mid, tk in models.items():
        rows.append(
            {
                "id": mid,
                "status": "ok",
                "scheme": scheme,
                "token_size": token_size,
                "shard": shard,
                "offset": at,
                "n_tokens": tk.n_tokens,
                "n_values": int(tk.valid.sum()),
                "family": None,
                "split": None,
                "layers": [e.to_dict() for e in tk.layers],
                "excluded": tk.excluded,
            }
        )
        at += tk.n_tokens
    append_jsonl(tokens_dir / "parts" / "rank-00000.jsonl", rows)
