"""Contrastive views of token windows: function-preserving permutations, noise, other windows.

Paper 003 §3: "As augmentations, we use noise and permutation"; the two views of a model are
its (aligned) weights and a permuted copy. A permutation of a layer's hidden units, applied to
the rows of the weights that write those units and to the columns of the weights that read
them, leaves the model's function unchanged: the backbone should map both copies close.

Which axes move together is a ``UnitGroup``: ``units`` hidden units, and the ``members``
(tensor, axis, span) that index them, each span holding ``units`` contiguous blocks of equal
length (a unit of an attention *head* group is a whole head: a block of ``head_dim`` rows of
the query, key and value maps). ``blocks > 1`` keeps the permutation inside each of that many
contiguous blocks of units (within-head permutations of the query/key or value/output dims).
``unit_groups`` knows these families (the state-dict names the project's families write):

- native ``mlp``: the hidden units of every hidden layer; native ``cnn``: the channels of every
  conv block (conv rows, batch-norm vectors and buffers, the next conv's or head's columns);
- transformer MLP blocks (BERT ``intermediate``/``output.dense``, GPT-2 ``c_fc``/``c_proj``,
  ``fc1``/``fc2`` of ViT, Swin and timm ViT/ConvNeXt, HF ConvNeXt ``pwconv1``/``pwconv2``):
  their intermediate units;
- attention (BERT, ViT, Swin, timm ViT, GPT-2): whole heads (with Swin's relative position
  bias columns), and the query/key and value/output dims within each head;
- ResNet basic blocks (HF and timm): the inner channels between the block's two convs.

Tokens of a view are the permuted tensors cut again by the store's layout (``permute_tokens``);
a window of them sits at the same positions as the original's, so any window of a permuted
model is a valid positive of any window of the original.

    groups = unit_groups("cnn", shapes, config)
    sd2 = permute_state_dict(sd, groups, torch.Generator().manual_seed(0))   # same function
    tok2 = permute_tokens(tokens, layers, groups, generator)                  # the same, tokenized
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.tokens.schemes import LayerEntry


@dataclass(frozen=True)
class Member:
    """One tensor axis a group's units index: ``length`` entries from ``offset`` (None: to the end)."""

    name: str
    axis: int
    offset: int = 0
    length: int | None = None


@dataclass(frozen=True)
class UnitGroup:
    """``units`` hidden units permuted together in every member; ``blocks`` > 1: only within
    each of ``blocks`` equal contiguous blocks of units."""

    units: int
    members: tuple[Member, ...]
    blocks: int = 1


def draw_permutation(group: UnitGroup, generator: torch.Generator) -> torch.Tensor:
    """A random permutation (units,) of the group's units (block-diagonal when ``blocks`` > 1)."""
    if group.blocks <= 1:
        return torch.randperm(group.units, generator=generator)
    size = group.units // group.blocks
    parts = [b * size + torch.randperm(size, generator=generator) for b in range(group.blocks)]
    return torch.cat(parts)


def _member_index(m: Member, dim_len: int, units: int, perm: torch.Tensor) -> torch.Tensor:
    """Index (dim_len,) along ``m.axis``: identity outside the span, units permuted inside."""
    length = dim_len - m.offset if m.length is None else m.length
    k = length // units
    idx = torch.arange(dim_len)
    inner = (perm[:, None] * k + torch.arange(k)).reshape(-1) + m.offset
    idx[m.offset : m.offset + length] = inner
    return idx


def permute_tensor(
    name: str, t: torch.Tensor, groups: Iterable[UnitGroup], perms: list[torch.Tensor]
) -> torch.Tensor:
    """``t`` (the tensor ``name``) with every group's permutation applied to its members' axes."""
    for g, p in zip(groups, perms, strict=True):
        for m in g.members:
            if m.name == name:
                t = t.index_select(m.axis, _member_index(m, t.shape[m.axis], g.units, p))
    return t


def permute_state_dict(
    sd: dict[str, torch.Tensor], groups: list[UnitGroup], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A copy of ``sd`` with one random permutation per group applied (function-preserving)."""
    perms = [draw_permutation(g, generator) for g in groups]
    return {k: permute_tensor(k, v, groups, perms) if v.dim() else v for k, v in sd.items()}


def _touched(groups: list[UnitGroup]) -> set[str]:
    return {m.name for g in groups for m in g.members}


# ------------------------------------------------------------------------------ canonical order


def _unit_keys(
    group: UnitGroup, get: Callable[[str], torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit (units,): the squared norm and the sum of every member's slice of that unit.

    Both are unchanged by any other group's permutation (it only reorders entries inside a
    unit's slice), so sorting by them gives an order that depends on the model's function
    class, not on how its hidden units happen to be numbered. Members ``get`` returns None for
    (tensors that are not tokenized) do not count."""
    sq = torch.zeros(group.units, dtype=torch.float64)
    total = torch.zeros(group.units, dtype=torch.float64)
    for m in group.members:
        t = get(m.name)
        if t is None or t.dim() == 0:
            continue
        length = t.shape[m.axis] - m.offset if m.length is None else m.length
        x = t.narrow(m.axis, m.offset, length).movedim(m.axis, 0).double()
        x = x.reshape(group.units, -1)
        sq += (x * x).sum(1)
        total += x.sum(1)
    return sq, total


def canonical_permutation(
    group: UnitGroup, get: Callable[[str], torch.Tensor | None]
) -> torch.Tensor:
    """The permutation (units,) that sorts the group's units by decreasing squared norm (ties:
    by decreasing sum); within each block when ``blocks`` > 1."""
    sq, total = _unit_keys(group, get)
    size = group.units // max(group.blocks, 1)
    parts = []
    for b in range(max(group.blocks, 1)):
        lo = b * size
        order = np.lexsort((-total[lo : lo + size].numpy(), -sq[lo : lo + size].numpy()))
        parts.append(lo + torch.from_numpy(order.astype(np.int64)))
    return torch.cat(parts)


def canonical_permutations(
    groups: list[UnitGroup], get: Callable[[str], torch.Tensor | None]
) -> list[torch.Tensor]:
    """One canonical permutation per group, each computed after the previous groups' are
    applied (a head's inner dims are sorted where the head sorting put it).

    Any function-preserving permutation of the model (``permute_state_dict``) has the same
    canonical form: ``canonicalize_state_dict(permuted) == canonicalize_state_dict(original)``
    up to units whose keys tie exactly."""
    last = {m.name: i for i, g in enumerate(groups) for m in g.members}  # last group reading it
    current: dict[str, torch.Tensor | None] = {}  # tensors with the groups so far applied
    perms: list[torch.Tensor] = []
    for i, g in enumerate(groups):
        for name in {m.name for m in g.members} - current.keys():
            current[name] = get(name)
        perm = canonical_permutation(g, current.__getitem__)
        perms.append(perm)
        for name in {m.name for m in g.members}:
            t = current[name]
            if last[name] == i:
                del current[name]  # no later group reads it: the copy goes
            elif t is not None:
                current[name] = permute_tensor(name, t, [g], [perm])
    return perms


def canonicalize_state_dict(
    sd: dict[str, torch.Tensor], groups: list[UnitGroup], keys: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """``sd`` with every group's units in canonical order (the same function).

    Args:
        sd: the state dict (buffers included: they move with their units).
        groups: its ``unit_groups``.
        keys: the tensors whose values set the order (default: all of ``sd``); pass the
            tokenized names so the order matches ``canonicalize_tokens``.
    """
    perms = canonical_permutations(
        groups, lambda n: sd.get(n) if keys is None or n in keys else None
    )
    return {k: permute_tensor(k, v, groups, perms) if v.dim() else v for k, v in sd.items()}


def _layer_tensors(
    tokens: torch.Tensor, layers: list[LayerEntry], names: set[str]
) -> dict[str, torch.Tensor]:
    """The tensors ``names`` rebuilt from one model's tokens (N, D)."""
    d = tokens.shape[1]
    out = {}
    for e in layers:
        if e.name in names and e.count:
            block = tokens[e.offset : e.offset + e.count].reshape(e.rows, (e.count // e.rows) * d)
            out[e.name] = block[:, : e.row_len].reshape(e.shape)
    return out


def canonicalize_tokens(
    tokens: torch.Tensor,
    layers: list[LayerEntry],
    groups: list[UnitGroup],
    inplace: bool = False,
) -> torch.Tensor:
    """Tokens (N, D) of the model's canonical form (``canonical_permutations`` on the tensors the
    tokens hold); unchanged when the model has no groups. Padding and positions do not move.
    ``inplace``: rewrite ``tokens`` itself (a bert-base holds 0.44 GB of them) instead of a copy."""
    if not groups:
        return tokens
    tensors = _layer_tensors(tokens, layers, _touched(groups))
    perms = canonical_permutations(groups, tensors.get)
    del tensors
    return _apply_permutations(tokens, layers, groups, perms, inplace=inplace)


class CanonicalStore:
    """A token store seen in canonical form: ``get``, ``window`` and ``iter_chunks`` give each
    model's tokens in its canonical unit order (``canonicalize_tokens``; models without groups
    as stored); everything else is the store's. Canonical tokens are computed once per model.

        store = CanonicalStore(TokenStore(a.tokens_dir), store_groups(a, store, ids))
    """

    def __init__(self, store: Any, groups: dict[str, list[UnitGroup]]):
        self.store, self.groups = store, groups
        self._tokens: dict[str, torch.Tensor] = {}

    def __getattr__(self, name: str) -> Any:
        if name in ("store", "groups", "_tokens"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.store, name)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.store

    def __len__(self) -> int:
        return len(self.store)

    def _canonical(self, model_id: str) -> torch.Tensor:
        if model_id not in self._tokens:
            tok = self.store.get(model_id)
            tokens = torch.as_tensor(tok.tokens, dtype=torch.float32)
            self._tokens[model_id] = canonicalize_tokens(tokens, tok.layers, self.groups[model_id])
        return self._tokens[model_id]

    def window(self, model_id: str, start: int, ws: int) -> dict[str, torch.Tensor]:
        """The store's window (mask, positions, valid) with canonical tokens."""
        w = self.store.window(model_id, start, ws)
        if self.groups.get(model_id):
            part = self._canonical(model_id)[start : start + ws]
            w["tokens"] = w["tokens"].clone()
            w["tokens"][: len(part)] = part
        return w

    def get(self, model_id: str) -> Any:
        """All tokens of one model, canonical (``Tokenized``)."""
        tok = self.store.get(model_id)
        if not self.groups.get(model_id):
            return tok
        return dataclasses.replace(tok, tokens=self._canonical(model_id).clone())

    def iter_chunks(self, model_id: str, size: int) -> Any:
        """As ``TokenStore.iter_chunks``, canonical."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        for start in range(0, self.store.n_tokens(model_id), size):
            yield start, self.window(model_id, start, size)


# ------------------------------------------------------------------------------ random views


def permute_tokens(
    tokens: torch.Tensor,
    layers: list[LayerEntry],
    groups: list[UnitGroup],
    generator: torch.Generator,
    span: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Tokens (N, D) of the permuted model: each touched tensor is rebuilt from its tokens,
    permuted and cut again by its layer entry (padding stays zero, positions are unchanged).

    Args:
        tokens: (N, D) one model's tokens (padding zero).
        layers: its layer table.
        groups: ``unit_groups`` of the model.
        generator: the permutations' random source (one permutation per group).
        span: only tensors overlapping tokens ``[start, end)`` are permuted (a window's worth);
            None: all.
    """
    perms = [draw_permutation(g, generator) for g in groups]
    return _apply_permutations(tokens, layers, groups, perms, span)


def _apply_permutations(
    tokens: torch.Tensor,
    layers: list[LayerEntry],
    groups: list[UnitGroup],
    perms: list[torch.Tensor],
    span: tuple[int, int] | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """``tokens`` with ``perms`` (one per group) applied to every touched tensor (in a copy,
    or in ``tokens`` itself when ``inplace``)."""
    names = _touched(groups)
    out = tokens if inplace else tokens.clone()
    d = tokens.shape[1]
    for e in layers:
        if e.name not in names or e.count == 0:
            continue
        if span is not None and (e.offset >= span[1] or e.offset + e.count <= span[0]):
            continue
        per_row = e.count // e.rows
        block = out[e.offset : e.offset + e.count].view(e.rows, per_row * d)
        t = block[:, : e.row_len].reshape(e.shape)
        block[:, : e.row_len] = permute_tensor(e.name, t, groups, perms).reshape(e.rows, e.row_len)
    return out


# ------------------------------------------------------------------------------ the families


def _chain(
    shapes: dict[str, tuple[int, ...]],
    writers: list[str],
    norms: list[list[str]],
    readers: list[str],
) -> list[UnitGroup]:
    """Groups of a feed-forward chain: unit i is written by ``writers[i]`` (+ its ``.bias``),
    scaled by ``norms[i]`` vectors and read by ``readers[i]`` (axis 1)."""
    out = []
    for w, ns, r in zip(writers, norms, readers, strict=True):
        if w not in shapes or r not in shapes:
            continue
        n = shapes[w][0]
        members = [Member(w, 0)]
        members += [Member(x, 0) for x in [w.removesuffix("weight") + "bias", *ns] if x in shapes]
        members.append(Member(r, 1))
        out.append(UnitGroup(n, tuple(members)))
    return out


def _native_mlp(shapes: dict[str, tuple[int, ...]]) -> list[UnitGroup]:
    n = sum(1 for k in shapes if re.fullmatch(r"layers\.\d+\.weight", k))
    writers = [f"layers.{i}.weight" for i in range(n)]
    readers = [f"layers.{i + 1}.weight" for i in range(n - 1)] + ["head.weight"]
    return _chain(shapes, writers, [[] for _ in range(n)], readers)


_BN = ("weight", "bias", "running_mean", "running_var")


def _native_cnn(shapes: dict[str, tuple[int, ...]]) -> list[UnitGroup]:
    n = sum(1 for k in shapes if re.fullmatch(r"blocks\.\d+\.0\.weight", k))
    writers = [f"blocks.{i}.0.weight" for i in range(n)]
    norms = [[f"blocks.{i}.1.{s}" for s in _BN] for i in range(n)]
    readers = [f"blocks.{i + 1}.0.weight" for i in range(n - 1)] + ["head.weight"]
    return _chain(shapes, writers, norms, readers)


# (first map, second map, the first map's output axis, the second map's input axis)
_MLP_PAIRS = (
    ("intermediate.dense.weight", "output.dense.weight", 0, 1),  # BERT (encoder layer prefix)
    ("mlp.fc1.weight", "mlp.fc2.weight", 0, 1),  # ViT / Swin (transformers), timm ViT / ConvNeXt
    ("pwconv1.weight", "pwconv2.weight", 0, 1),  # ConvNeXt (transformers)
    ("mlp.c_fc.weight", "mlp.c_proj.weight", 1, 0),  # GPT-2 Conv1D: (in, out)
)


def _transformer_mlps(shapes: dict[str, tuple[int, ...]]) -> list[UnitGroup]:
    out = []
    for name in shapes:
        for first, second, ax_out, ax_in in _MLP_PAIRS:
            if not name.endswith(first):
                continue
            pre = name[: -len(first)]
            if pre + second not in shapes:
                continue
            n = shapes[name][ax_out]
            members = [Member(name, ax_out), Member(pre + second, ax_in)]
            bias = name.removesuffix("weight") + "bias"
            if bias in shapes:
                members.insert(1, Member(bias, 0))
            out.append(UnitGroup(n, tuple(members)))
    return out


def _head_groups(
    writers: list[Member],
    qk: list[Member],
    vo: list[Member],
    extra: list[Member],
    width: int,
    heads: int,
) -> list[UnitGroup]:
    """Whole heads (every member, ``extra`` indexed one entry per head), then the query/key
    dims and the value/output dims within each head."""
    out = [UnitGroup(heads, tuple(writers + extra))] if heads > 1 else []
    out.append(UnitGroup(width, tuple(qk), blocks=heads))
    out.append(UnitGroup(width, tuple(vo), blocks=heads))
    return out


def _n_heads(config: dict[str, Any], name: str) -> int | None:
    """Attention heads of the layer ``name`` from its model's config (None: unknown)."""
    for key in ("num_attention_heads", "n_head"):
        if isinstance(config.get(key), int):
            return config[key]
    heads = config.get("num_heads") or (config.get("model_args") or {}).get("num_heads")
    if isinstance(heads, int):
        return heads
    if isinstance(heads, list):  # Swin: per stage
        m = re.search(r"layers\.(\d+)\.", name)
        if m and int(m.group(1)) < len(heads):
            return int(heads[int(m.group(1))])
    return None


def _attention(shapes: dict[str, tuple[int, ...]], config: dict[str, Any]) -> list[UnitGroup]:
    out: list[UnitGroup] = []

    def bias(w: str) -> str | None:
        b = w.removesuffix("weight") + "bias"
        return b if b in shapes else None

    for name in shapes:
        sep = None
        if name.endswith("q_proj.weight"):  # ViT / Swin (transformers)
            pre = name[: -len("q_proj.weight")]
            q, k, v, o = (pre + f"{x}_proj.weight" for x in "qkvo")
        elif name.endswith("attention.self.query.weight"):  # BERT
            pre = name[: -len("self.query.weight")]
            q, k, v = (pre + f"self.{x}.weight" for x in ("query", "key", "value"))
            o = pre + "output.dense.weight"
        elif name.endswith("attn.qkv.weight") or name.endswith("attn.c_attn.weight"):
            sep = name  # fused q, k, v: timm (rows) or GPT-2 Conv1D (columns)
            pre = name[: -len("qkv.weight")] if "qkv" in name else name[: -len("c_attn.weight")]
            o = pre + ("proj.weight" if "qkv" in name else "c_proj.weight")
        else:
            continue
        heads = _n_heads(config, name)
        if heads is None or o not in shapes:
            continue
        if sep is None:
            if any(x not in shapes for x in (q, k, v)):
                continue
            width = shapes[q][0]
            parts = {
                x: [Member(w, 0)] + ([Member(b, 0)] if (b := bias(w)) else [])
                for x, w in zip("qkv", (q, k, v))
            }
            o_in = [Member(o, 1)]
        else:
            gpt2 = "c_attn" in name
            ax = 1 if gpt2 else 0
            width = shapes[name][ax] // 3
            b = bias(name)
            parts = {
                x: [Member(name, ax, j * width, width)]
                + ([Member(b, 0, j * width, width)] if b else [])
                for j, x in enumerate("qkv")
            }
            o_in = [Member(o, 0 if gpt2 else 1)]
        if width % heads:
            continue
        table = pre + "relative_position_bias.relative_position_bias_table"  # Swin
        extra = [Member(table, 1)] if table in shapes else []
        writers = parts["q"] + parts["k"] + parts["v"] + o_in
        out += _head_groups(
            writers, parts["q"] + parts["k"], parts["v"] + o_in, extra, width, heads
        )
    return out


def _resnet_blocks(shapes: dict[str, tuple[int, ...]]) -> list[UnitGroup]:
    out = []
    for name in shapes:
        if (
            name.endswith(".conv1.weight")
            and name[: -len("conv1.weight")] + "conv2.weight" in shapes
        ):
            pre = name[: -len("conv1.weight")]  # timm BasicBlock
            out += _chain(shapes, [name], [[pre + f"bn1.{s}" for s in _BN]], [pre + "conv2.weight"])
        elif name.endswith(".layer.0.convolution.weight"):  # transformers ResNetBasicLayer
            pre = name[: -len("0.convolution.weight")]
            if pre + "2.convolution.weight" in shapes:  # bottleneck: not a basic block
                continue
            norms = [pre + f"0.normalization.{s}" for s in _BN]
            out += _chain(shapes, [name], [norms], [pre + "1.convolution.weight"])
    return out


GroupFn = Callable[[dict[str, tuple[int, ...]], dict[str, Any]], list[UnitGroup]]
PERMUTATIONS: dict[str, GroupFn] = {}


def register_permutations(family: str) -> Callable[[GroupFn], GroupFn]:
    """Register the unit groups of a family (``fn(shapes, config) -> groups``)."""

    def deco(fn: GroupFn) -> GroupFn:
        PERMUTATIONS[family] = fn
        return fn

    return deco


register_permutations("mlp")(lambda shapes, config: _native_mlp(shapes))
register_permutations("cnn")(lambda shapes, config: _native_cnn(shapes))
for _fam in ("bert", "gpt2", "vit", "swin"):
    register_permutations(_fam)(lambda s, c: _transformer_mlps(s) + _attention(s, c))
register_permutations("convnext")(lambda shapes, config: _transformer_mlps(shapes))
register_permutations("resnet")(lambda shapes, config: _resnet_blocks(shapes))


def unit_groups(
    family: str | None, shapes: dict[str, tuple[int, ...]], config: dict[str, Any] | None = None
) -> list[UnitGroup]:
    """The function-preserving unit groups of a model (empty for a family without any).

    Args:
        family: the manifest's family (``mlp``, ``cnn``, ``bert``, ...).
        shapes: state-dict name -> shape (a token store's layer table is enough; members that
            are not tokenized, such as batch-norm buffers, are simply absent there).
        config: the model's ``config.json`` (attention head counts).
    """
    fn = PERMUTATIONS.get(family or "")
    return fn(shapes, config or {}) if fn is not None else []


# ------------------------------------------------------------------------------ training views


def store_groups(
    atlas: Any, store: Any, ids: list[str], rows: dict[str, dict[str, Any]] | None = None
) -> dict[str, list[UnitGroup]]:
    """``unit_groups`` of each model of a token store, from its manifest family, its layer table
    and its ``config.json`` (models of families without groups map to ``[]``). ``rows``: the
    manifest by id, when the caller has read it already (default: read here)."""
    from core.atlas import read_json

    if rows is None:
        rows = {r["id"]: r for r in atlas.manifest()}
    out: dict[str, list[UnitGroup]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for mid in ids:
        row = rows.get(mid) or {}
        family = row.get("family")
        if family not in PERMUTATIONS:
            out[mid] = []
            continue
        path = row.get("path")
        config: dict[str, Any] = {}
        if path:
            cfg_path = Path(path) if Path(path).is_absolute() else atlas.root / path
            cfg_path = cfg_path / "config.json"
            key = str(cfg_path)
            if key not in configs:
                configs[key] = read_json(cfg_path) if cfg_path.exists() else {}
            config = configs[key]
        shapes = {e.name: tuple(e.shape) for e in store.layers(mid)}
        out[mid] = unit_groups(family, shapes, config)
    return out


class ViewMaker:
    """The second view of a training window: the same model, at the same window or another
    one of the same model (``positive``), permuted when its family has unit groups (``permute``).

    Row ``i``'s draws (its window start and permutations) depend only on ``(seed, i)``, so data
    parallel ranks and resumed runs see the same views.

        views = ViewMaker(store, groups, window=64, seed=0, positive="any", permute=True)
        w = views.window(row, model_id, start)   # {"tokens", "mask", "positions", "valid"}
    """

    def __init__(
        self,
        store: Any,
        groups: dict[str, list[UnitGroup]],
        window: int,
        seed: int,
        positive: str = "same",
        permute: bool = True,
    ):
        if positive not in POSITIVES:
            raise ValueError(f"positive must be one of {POSITIVES}, got {positive!r}")
        self.store, self.groups, self.window_size = store, groups, window
        self.seed, self.positive, self.permute = seed, positive, permute
        self._cache: dict[str, Any] = {}

    def _tokens(self, model_id: str) -> Any:
        if model_id not in self._cache:
            if len(self._cache) > 512:
                self._cache.clear()
            self._cache[model_id] = self.store.get(model_id)
        return self._cache[model_id]

    def window(self, row: int, model_id: str, start: int) -> dict[str, torch.Tensor]:
        """The second view's clean window (before noise and masking) of stream row ``row``,
        with its ``start``."""
        from core.tokens.store import mix_seeds

        g = torch.Generator().manual_seed(mix_seeds(self.seed, row, 31) & 0x7FFF_FFFF_FFFF)
        n, ws = self.store.n_tokens(model_id), self.window_size
        if self.positive == "any" and n > ws:
            start = int(torch.randint(0, n - ws + 1, (1,), generator=g))
        w = self.store.window(model_id, start, ws)
        w["start"] = torch.tensor(start)
        groups = self.groups.get(model_id) or []
        if self.permute and groups:
            tok = self._tokens(model_id)
            perm = permute_tokens(tok.tokens, tok.layers, groups, g, (start, start + ws))
            k = min(ws, n - start)
            w["tokens"] = w["tokens"].clone()
            w["tokens"][:k] = perm[start : start + k]
        return w


POSITIVES = ("same", "any")
