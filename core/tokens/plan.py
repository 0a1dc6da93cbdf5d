"""Tokenization plans: where each tensor's tokens go, filled from safetensors files or modules."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.dtypes import TORCH_DTYPES, dtype_from_name, dtype_name
from core.errors import RejectedModel, WeightAtlasError
from core.models.io import load_model_dir, read_config, weight_files
from core.models.registry import empty_model
from core.tokens.schemes import (
    DEFAULT_TOKEN_SIZE,
    LayerEntry,
    Tokenized,
    get_scheme,
    kind_from_rank,
    layer_kinds,
    trainable_of,
)


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
                    self._metas[k] = _Meta(tuple(s.get_shape()), TORCH_DTYPES.get(s.get_dtype()))
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


def safetensors_files(path: str | Path) -> list[Path]:
    """Safetensors files of a model directory (or the file itself)."""

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

    ``core.models.io.load_model_dir`` maps old key names the way the library does
    (transformers' ``from_pretrained``: ``LayerNorm.gamma/beta``, pre-v5 ViT keys, ...), never
    with ``trust_remote_code``. Tied aliases (a second name for a tensor already listed) are
    left out, as a current-layout file stores them once.

    Returns:
        ``(state_dict, excluded)``: module order; ``excluded`` records the tied aliases.
    """

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


def apply_plan(
    plan: ModelPlan, get: Callable[[str], torch.Tensor], digest: bool = False
) -> Tokenized:
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
    return apply_plan(plan, sd.__getitem__)


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

    return _structure_of_config(json.dumps(read_config(path), sort_keys=True))


@functools.lru_cache(maxsize=64)
def _structure_of_config(config_json: str) -> ModelStructure:

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


def plan_dir(
    path: str | Path, scheme: str, token_size: int, trainable: set[str] | None
) -> tuple[ModelPlan, _SafetensorsSource | _ModuleSource]:
    files = safetensors_files(path)
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
    plan, src = plan_dir(path, scheme, token_size, None)
    src.close()
    return plan


def open_source(path: str | Path, plan: ModelPlan) -> _SafetensorsSource | _ModuleSource:
    """The tensors a plan was made from: the files, or the library-loaded module."""
    if plan.layout == "legacy":
        return _ModuleSource(canonical_state_dict(path)[0])
    return _SafetensorsSource(safetensors_files(path))


def tokenize_model_dir(
    path: str | Path,
    scheme: str = "dense",
    token_size: int = DEFAULT_TOKEN_SIZE,
    trainable: set[str] | None = None,
    digest: bool = True,
) -> Tokenized:
    """Tokenize a model directory (or one safetensors file), streaming tensor by tensor.

    Args:
        path: snapshot directory with ``config.json`` and safetensors weights.
        scheme: ``dense`` or ``sparse``.
        token_size: D.
        trainable: names to tokenize; default: from ``core.models`` and ``config.json``.
            A checkpoint in a legacy key layout (``LayerNorm.gamma``, pre-v5 ViT names) is
            loaded by its library and tokenized under the module's canonical names, so
            ``detokenize`` gives the canonical layout.
        digest: compute the duplicate hash (``Tokenized.digest``; sha256 of every weight, ~0.8
            CPU-seconds for bert-base); ``embed --model`` does without it.
    """
    plan, src = plan_dir(path, scheme, token_size, trainable)
    try:
        return apply_plan(plan, src.get, digest=digest)
    finally:
        src.close()
