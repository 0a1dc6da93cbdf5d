"""The one table of safetensors dtypes and their torch equivalents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.errors import WeightAtlasError


@dataclass(frozen=True)
class DType:
    """One safetensors dtype code: its size, whether it is a float, and its torch/numpy types.

    Attributes:
        bits: bits per element (sub-byte float formats included, so their sizes check).
        float: a floating-point format (counted as model values, checked for NaN/Inf).
        torch: the torch dtype, or None where torch has none.
        numpy: the numpy dtype, or None where numpy has none (bf16, fp8).
    """

    bits: int
    float: bool
    torch: torch.dtype | None = None
    numpy: type | None = None


# safetensors dtype code -> DType: the one table every reader of safetensors files uses
DTYPES: dict[str, DType] = {
    "BOOL": DType(8, False, torch.bool, np.bool_),
    "U8": DType(8, False, torch.uint8, np.uint8),
    "I8": DType(8, False, torch.int8, np.int8),
    "I16": DType(16, False, torch.int16, np.int16),
    "U16": DType(16, False, None, np.uint16),
    "I32": DType(32, False, torch.int32, np.int32),
    "U32": DType(32, False, None, np.uint32),
    "I64": DType(64, False, torch.int64, np.int64),
    "U64": DType(64, False, None, np.uint64),
    "C64": DType(64, False, None, np.complex64),
    "F4": DType(4, True),
    "F6_E2M3": DType(6, True),
    "F6_E3M2": DType(6, True),
    "F8_E5M2": DType(8, True, torch.float8_e5m2),
    "F8_E4M3": DType(8, True, torch.float8_e4m3fn),
    "F8_E8M0": DType(8, True),
    "F16": DType(16, True, torch.float16, np.float16),
    "BF16": DType(16, True, torch.bfloat16),
    "F32": DType(32, True, torch.float32, np.float32),
    "F64": DType(64, True, torch.float64, np.float64),
}
FLOAT_CODES = frozenset(code for code, d in DTYPES.items() if d.float)
TORCH_DTYPES: dict[str, torch.dtype] = {
    c: d.torch for c, d in DTYPES.items() if d.torch is not None
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
