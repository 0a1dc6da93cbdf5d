"""The one table of safetensors dtypes and their torch equivalents."""

from __future__ import annotations

import torch

from core.errors import WeightAtlasError

# --------------------------------------------------------------------------- data types


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
