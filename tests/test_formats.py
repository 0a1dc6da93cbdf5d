"""core.models.formats: the safetensors header checks catch truncation and lies."""

from __future__ import annotations

import pytest
import torch
from conftest import lying_offsets as _lying_offsets
from safetensors.torch import save_file

from core.errors import RejectedModel
from core.models.formats import read_safetensors_header


def test_safetensors_header_checks_catch_truncation_and_lies(tmp_path):
    sd = {"a": torch.randn(4, 3), "b": torch.randn(4, 3), "c": torch.zeros(5, dtype=torch.int64)}
    save_file(sd, str(tmp_path / "ok.safetensors"))
    ok = (tmp_path / "ok.safetensors").read_bytes()
    info = read_safetensors_header(tmp_path / "ok.safetensors")
    assert {k: (v.dtype, v.shape) for k, v in info.items()} == {
        "a": ("F32", (4, 3)),
        "b": ("F32", (4, 3)),
        "c": ("I64", (5,)),
    }
    assert sum(v.end - v.start for v in info.values()) == len(ok) - 8 - int.from_bytes(
        ok[:8], "little"
    )

    cases = {
        "truncated safetensors": ok[:-1],
        "inconsistent offsets": _lying_offsets(ok),
        "bad safetensors header": ok[:8] + b"x" + ok[9:],
    }
    cases["truncated safetensors (short)"] = ok[:5]
    huge = (10**12).to_bytes(8, "little") + ok[8:]
    for reason, data in {
        **cases,
        "bad safetensors header (huge)": huge,
        "inconsistent offsets (trailing)": ok + b"\0" * 4,
    }.items():
        p = tmp_path / "x.safetensors"
        p.write_bytes(data)
        with pytest.raises(RejectedModel) as e:
            read_safetensors_header(p)
        assert e.value.reason == reason.split(" (")[0], (reason, e.value)
