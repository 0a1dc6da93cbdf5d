"""Bounded readers of a Hub-format model folder's files, used before anything is loaded.

Safetensors headers (read and checked before any tensor data is touched), ``config.json`` and
the ``README.md`` card's YAML front matter, each read as a regular file inside the model's
folder with a byte limit. ``collect`` passes its configured limits; other callers get the
defaults below (the same as ``CollectConfig``'s).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.dtypes import DTYPES
from core.errors import RejectedModel
from core.safety import HostileInput, load_json_bytes, load_yaml_text, read_regular

MAX_CONFIG_BYTES = 4 * 2**20  # largest config.json read (CollectConfig.max_config_bytes)
MAX_CARD_BYTES = 2 * 2**20  # largest README.md read (CollectConfig.max_card_bytes)

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
    raw, size = _header_bytes(path, max_header_bytes)
    header = _header_json(path.name, raw)
    tensors = {name: _tensor_info(path.name, name, e) for name, e in header.items()}
    _check_tiling(path.name, tensors, size - 8 - len(raw))
    return tensors


def _header_bytes(path: Path, max_header_bytes: int) -> tuple[bytes, int]:
    """The header's JSON bytes and the file's size, the length checked against both limits."""
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
        return f.read(n), size


def _header_json(fname: str, raw: bytes) -> dict[str, Any]:
    """The header as a JSON object, its ``__metadata__`` (a str -> str map) checked and removed."""
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RejectedModel("bad safetensors header", f"{fname}: not JSON ({e})") from None
    except RecursionError:
        raise RejectedModel("bad safetensors header", f"{fname}: nested too deeply") from None
    if not isinstance(header, dict):
        raise RejectedModel("bad safetensors header", f"{fname}: header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise RejectedModel(
            "bad safetensors header", f"{fname}: __metadata__ is not a str -> str map"
        )
    return header


def _tensor_info(fname: str, name: str, e: Any) -> TensorInfo:
    """One header entry, checked: a known dtype, a shape of naturals, a byte range that is
    exactly the shape's size in that dtype."""
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
        raise RejectedModel("bad safetensors header", f"{fname}: malformed entry {name!r}")
    info = TensorInfo(dtype, tuple(shape), start, end)
    need = -(-info.numel * DTYPES[dtype].bits // 8)
    if end - start != need:
        raise RejectedModel(
            "inconsistent offsets",
            f"{fname}: {name} {dtype}{list(shape)} needs {need} bytes, offsets span {end - start}",
        )
    return info


def _check_tiling(fname: str, tensors: dict[str, TensorInfo], data_len: int) -> None:
    """The byte ranges tile the ``data_len`` bytes of the data section: no gap, no overlap,
    nothing after the last tensor."""
    pos = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != pos:
            what = (
                "overlaps the previous tensor"
                if info.start < pos
                else f"leaves a gap at byte {pos}"
            )
            raise RejectedModel("inconsistent offsets", f"{fname}: {name} {what}")
        pos = info.end
    if pos > data_len:
        raise RejectedModel(
            "truncated safetensors", f"{fname}: data ends at byte {pos}, file has {data_len}"
        )
    if pos < data_len:
        raise RejectedModel(
            "inconsistent offsets", f"{fname}: {data_len - pos} bytes after the last tensor"
        )


# ------------------------------------------------------------------- config and card


def snapshot_root(path: Path) -> Path:
    """The folder a model's files may link within: the repo of an HF cache snapshot
    (``models--x/snapshots/REV`` links into ``models--x/blobs``), else the folder itself."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "snapshots" else path


def read_card(
    path: Path, root: Path | None = None, max_bytes: int = MAX_CARD_BYTES
) -> dict[str, Any]:
    """YAML front matter of ``README.md``; {} if absent or plain malformed YAML.

    Same block as ``huggingface_hub.metadata_load`` (its ``REGEX_YAML_BLOCK``). The card is read
    as a regular file inside ``root`` (default: ``snapshot_root(path)``) with a byte limit, and
    parsed with libyaml's safe loader without aliases (``core.safety.load_yaml_text``).

    Raises:
        RejectedModel: ``bad card``: not a regular file, over the limit, YAML aliases (a
            billion laughs), or nested too deeply.
    """
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    readme = Path(path) / "README.md"
    if not os.path.lexists(readme):
        return {}
    try:
        raw = read_regular(readme, max_bytes, snapshot_root(path) if root is None else root)
    except RejectedModel as e:
        raise RejectedModel("bad card", e.detail) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return {}
    match = REGEX_YAML_BLOCK.search(text)
    if not match:
        return {}
    try:
        meta = load_yaml_text(match.group(2), "README.md front matter")
    except HostileInput as e:
        raise RejectedModel("bad card", str(e)) from None
    except ValueError:  # malformed YAML in an untrusted card: no metadata, not a rejection
        return {}
    return meta if isinstance(meta, dict) else {}


def read_model_config(
    path: Path, root: Path | None = None, max_bytes: int = MAX_CONFIG_BYTES
) -> dict[str, Any]:
    """``config.json`` as a regular file (byte limit) parsed with a JSON depth limit.

    Raises:
        RejectedModel: ``no config`` or ``bad config`` (not a regular file, over the limit, not
            JSON, nested too deeply, not an object).
    """
    cfg_path = Path(path) / "config.json"
    if not os.path.lexists(cfg_path):
        raise RejectedModel("no config", f"{path} has no config.json")
    try:
        raw = read_regular(cfg_path, max_bytes, snapshot_root(path) if root is None else root)
        config = load_json_bytes(raw, "config.json")
    except RejectedModel as e:
        raise RejectedModel("bad config", e.detail) from None
    except ValueError as e:
        raise RejectedModel("bad config", str(e)) from None
    if not isinstance(config, dict):
        raise RejectedModel("bad config", "config.json is not a JSON object")
    return config
