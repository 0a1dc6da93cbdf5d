"""Safetensors headers, read and checked before any tensor data is touched."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from core.dtypes import DTYPES
from core.errors import RejectedModel

# ------------------------------------------------------------------- safetensors headers


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header: dtype code, shape, byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(
    path: str | Path, max_header_bytes: int = 100_000_000
) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header without reading any tensor data.

    Checks the 8-byte little-endian header length against the file size, the JSON structure,
    every dtype and shape, that each byte range matches its shape and dtype, and that the
    ranges tile the data section exactly (no gap, overlap or trailing bytes).

    Raises:
        RejectedModel: ``truncated safetensors``, ``bad safetensors header`` or
            ``inconsistent offsets``.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise RejectedModel(
                "truncated safetensors", f"{path.name}: {size} bytes, no header length"
            )
        n = int.from_bytes(head, "little")
        if n > max_header_bytes:
            raise RejectedModel(
                "bad safetensors header", f"{path.name}: header length {n} over {max_header_bytes}"
            )
        if 8 + n > size:
            raise RejectedModel(
                "truncated safetensors", f"{path.name}: header needs {8 + n} bytes, file has {size}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RejectedModel("bad safetensors header", f"{path.name}: not JSON ({e})") from None
    except RecursionError:
        raise RejectedModel("bad safetensors header", f"{path.name}: nested too deeply") from None
    if not isinstance(header, dict):
        raise RejectedModel("bad safetensors header", f"{path.name}: header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise RejectedModel(
            "bad safetensors header", f"{path.name}: __metadata__ is not a str -> str map"
        )
    tensors: dict[str, TensorInfo] = {}
    for name, e in header.items():
        try:
            dtype, shape, (start, end) = e["dtype"], e["shape"], e["data_offsets"]
            ok = (
                dtype in DTYPES
                and isinstance(shape, list)
                and all(type(d) is int and d >= 0 for d in shape)
                and type(start) is int
                and type(end) is int
                and 0 <= start <= end
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise RejectedModel("bad safetensors header", f"{path.name}: malformed entry {name!r}")
        info = TensorInfo(dtype, tuple(shape), start, end)
        need = -(-info.numel * DTYPES[dtype].bits // 8)
        if end - start != need:
            raise RejectedModel(
                "inconsistent offsets",
                f"{path.name}: {name} {dtype}{list(shape)} needs {need} bytes, offsets span {end - start}",
            )
        tensors[name] = info
    data_len = size - 8 - n
    pos = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != pos:
            what = (
                "overlaps the previous tensor"
                if info.start < pos
                else f"leaves a gap at byte {pos}"
            )
            raise RejectedModel("inconsistent offsets", f"{path.name}: {name} {what}")
        pos = info.end
    if pos > data_len:
        raise RejectedModel(
            "truncated safetensors", f"{path.name}: data ends at byte {pos}, file has {data_len}"
        )
    if pos < data_len:
        raise RejectedModel(
            "inconsistent offsets", f"{path.name}: {data_len - pos} bytes after the last tensor"
        )
    return tensors
