"""Devices and precision: torchrun process groups, and bf16 autocast where the hardware runs it fast."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from core.config import ConfigError

# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """Where this process sits: rank, world size, device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over ranks (a copy; no gradient)."""
        t = t.detach().clone()
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_dist(device: str) -> Dist:
    """Join the torchrun process group if WORLD_SIZE > 1; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def cpu_bf16_flags(cpuinfo: str | None = None) -> set[str]:
    """The bf16 matrix/vector features (``amx_bf16``, ``avx512_bf16``) this CPU advertises.

    Read from the ``flags`` line of ``/proc/cpuinfo`` (or the given text); elsewhere (macOS,
    Windows) from torch's own CPU probes where it has them; empty when unknown.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return {f for f in line.split(":", 1)[-1].split() if f in ("amx_bf16", "avx512_bf16")}
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    cpu = getattr(torch._C, "_cpu", None)
    return {f for f, fn in probes.items() if cpu is not None and getattr(cpu, fn, lambda: False)()}


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matmuls beat fp32 on ``device``: CUDA with bf16, or a CPU with AMX /
    AVX-512 BF16 (without them, CPU bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags())
    return False


def compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of a ``TrainConfig.dtype`` on ``device`` (float32: no autocast)."""
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"dtype=bf16 but {device} has no bf16 support; use dtype=auto")
        return torch.bfloat16
    if dtype == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    raise ConfigError(f"dtype: {dtype!r} is not one of auto, fp32, bf16")


def autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    """bf16 autocast on ``device`` (weights stay fp32), or a disabled context for float32."""
    enabled = dtype != torch.float32
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
