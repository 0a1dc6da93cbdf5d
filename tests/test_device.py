"""core.backbone.device: the compute dtype follows the CPU's bf16 flags; explicit choices win."""

import pytest
import torch

from core.backbone.config import build_configs
from core.backbone.device import compute_dtype, cpu_bf16_flags
from core.config import ConfigError


def test_dtype_auto_follows_the_cpu_flags_and_explicit_choices_win():
    amd = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
    intel = "flags\t: avx512f amx_bf16 amx_tile avx512_bf16\n"
    old = "flags\t: sse avx2 fma\n"
    assert cpu_bf16_flags(amd) == {"avx512_bf16"}
    assert cpu_bf16_flags(intel) == {"amx_bf16", "avx512_bf16"}
    assert cpu_bf16_flags(old) == set()
    cpu = torch.device("cpu")
    fast = bool(cpu_bf16_flags())
    assert compute_dtype("auto", cpu) == (torch.bfloat16 if fast else torch.float32)
    assert compute_dtype("fp32", cpu) == torch.float32
    assert compute_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError):
        build_configs("ci", {"dtype": "fp16"})
