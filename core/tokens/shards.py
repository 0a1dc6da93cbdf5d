"""The token shard format: one safetensors file per group of models, written and read here only.

Each model's rows (its ``tokens``, ``valid`` and ``positions``) have a checksum (``checksum``),
computed when the shard is written and recorded in the token index; ``TokenStore`` checks it the
first time it reads the model, so a damaged shard is one line naming it, not a NaN deep inside
training or an SVD that does not converge. Indexes written before checksums existed still read.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atlas import atomic_path
from core.dtypes import DTYPES
from core.errors import WeightAtlasError
from core.tokens.plan import ModelPlan, _Hasher, fill_tokens

# --------------------------------------------------------------------------- shard files

# the tensors of a shard, in file order: name -> (safetensors dtype code, ndim)
SHARD_TENSORS = {"positions": ("I64", 2), "tokens": ("F32", 2), "valid": ("I32", 1)}


def shard_layout(
    n: int, d: int, metadata: dict[str, str] | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Header bytes (length prefix included) and tensor table of a shard of ``n`` tokens."""
    shapes = {"positions": [n, 3], "tokens": [n, d], "valid": [n]}
    table: dict[str, Any] = {}
    begin = 0
    for name, (st_dtype, _) in SHARD_TENSORS.items():
        nbytes = int(np.prod(shapes[name])) * DTYPES[st_dtype].bits // 8
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


CHECKSUM_PREFIX = "bsum64:"
_CHECKSUM_BLOCK = 8192  # bytes summed per uint64 block sum


def model_checksum(arrays: dict[str, Any], offset: int, n: int) -> str:
    """``bsum64:XXXXXXXX``: a checksum of rows ``[offset, offset + n)`` of a shard's tensors.

    ``arrays`` maps ``tokens``, ``valid`` and ``positions`` to numpy arrays or CPU tensors (the
    shard's memory map). The bytes are read in place as 8 KiB blocks of uint64 words; each
    block's wrapping sum, and the bytes past the last whole block, go through CRC-32. A damaged
    block changes its sum (a swap of two words inside one block would not); the cost is one
    vectorised pass over the bytes, several times faster than the copy a read makes (CRC-32 of
    all bytes ran at half the copy's speed).
    """
    crc = 0
    for name in SHARD_TENSORS:
        a = arrays[name][offset : offset + n]
        a = a.numpy() if isinstance(a, torch.Tensor) else a
        b = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        whole = len(b) // _CHECKSUM_BLOCK * _CHECKSUM_BLOCK
        sums = b[:whole].view(np.uint64).reshape(-1, _CHECKSUM_BLOCK // 8).sum(axis=1)
        crc = zlib.crc32(np.ascontiguousarray(sums, dtype="<u8").tobytes(), crc)
        crc = zlib.crc32(b[whole:].tobytes(), crc)
    return f"{CHECKSUM_PREFIX}{crc:08x}"


def write_shard(
    path: Path,
    plans: list[tuple[str, ModelPlan, Callable[[], Any]]],
    d: int,
    metadata: dict[str, str],
    digests: dict[str, str] | None = None,
    checksums: dict[str, str] | None = None,
) -> dict[str, int]:
    """Write the planned models into one shard file atomically; return id -> token offset.

    ``digests`` (if given) receives id -> duplicate hash of every model written, ``checksums``
    id -> ``model_checksum`` of its rows as written.
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
            for name, (st_dtype, _) in SHARD_TENSORS.items():
                b, e = table[name]["data_offsets"]
                np_dtype = DTYPES[st_dtype].numpy
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
                    if checksums is not None:
                        checksums[mid] = model_checksum(views, at, plan.n_tokens)
                finally:
                    src.close()
                offsets[mid] = at
                at += plan.n_tokens
            mm.flush()
        finally:
            del mm
    return offsets


def read_shard(path: str | Path) -> dict[str, np.ndarray]:
    """Memory-map a token shard: ``tokens (N, D) f32``, ``valid (N,) i32``, ``positions (N, 3) i64``.

    Only the JSON header is read; the arrays are read-only views into one ``np.memmap``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            hlen = int.from_bytes(f.read(8), "little")
            if not 0 < hlen <= min(size - 8, 100 * 2**20):
                raise ValueError("bad header length")
            header = json.loads(f.read(hlen))
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        out: dict[str, np.ndarray] = {}
        for name, (st_dtype, ndim) in SHARD_TENSORS.items():
            h = header[name]
            b, e = h["data_offsets"]
            shape = tuple(int(s) for s in h["shape"])
            if h["dtype"] != st_dtype or len(shape) != ndim or not 0 <= b <= e <= size - 8 - hlen:
                raise ValueError(f"unexpected tensor {name}: {h}")
            arr = mm[8 + hlen + b : 8 + hlen + e].view(DTYPES[st_dtype].numpy)
            out[name] = arr.reshape(shape)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightAtlasError(f"{path}: not a readable token shard ({e})") from e
    n = out["tokens"].shape[0]
    if out["valid"].shape != (n,) or out["positions"].shape != (n, 3):
        raise WeightAtlasError(f"{path}: token shard tensors disagree on N")
    return out
