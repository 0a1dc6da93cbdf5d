"""Fingerprints of a model's weights for lineage: a fixed sample of every weight tensor and its
exact norm and kurtosis, read once from the safetensors files.

Only floating tensors with two or more dimensions count (weight matrices, convolutions,
embeddings): biases and norm scales start at the same constants in every model, so they say
little about descent. Each tensor ``(name, shape)`` is sampled at the same positions in every
model (seeded by its name and shape), so two models compare value for value on the tensors they
share, and a child with a new head still compares on the rest. The work per model is one pass
over its tensors; the sample bounds every later pairwise comparison, whatever the model's size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from core.models.io import weight_files

LOW_PRECISION = ("F16", "BF16", "F8_E4M3", "F8_E5M2", "I8", "U8")


@dataclass
class Fingerprint:
    """One model's tensors for lineage: ``(name, shape) -> sample`` plus exact statistics.

    ``samples`` holds float32 values at fixed positions; ``norms`` the exact L2 norm and
    ``kurtosis`` the exact (Pearson, non-excess) kurtosis of each tensor; ``dtype`` the
    safetensors dtype of the weights (the lowest precision found).
    """

    samples: dict[tuple[str, tuple[int, ...]], np.ndarray] = field(default_factory=dict)
    norms: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)
    kurtosis: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)
    dtype: str = "F32"

    @property
    def low_precision(self) -> bool:
        """Whether the weights are stored below 32 bits (a precision copy's mark)."""
        return self.dtype in LOW_PRECISION


@lru_cache(maxsize=4096)
def sample_positions(name: str, shape: tuple[int, ...], k: int) -> np.ndarray:
    """The fixed positions sampled from tensor ``name`` of ``shape`` (all if it has <= k)."""
    n = int(np.prod(shape))
    if n <= k:
        return np.arange(n)
    rng = np.random.default_rng(zlib.crc32(f"{name}{shape}".encode()))
    return np.sort(rng.choice(n, size=k, replace=False))


def fingerprint(path: str | Path, per_tensor: int = 1024) -> Fingerprint:
    """Read a model directory's safetensors files into a :class:`Fingerprint`.

    Args:
        path: a model directory (``config.json`` + ``*.safetensors``).
        per_tensor: values sampled per tensor (fewer when the tensor is smaller).
    """
    fp = Fingerprint()
    rank = {"F64": 0, "F32": 1}
    worst = "F32"
    for f in weight_files(path):
        with safe_open(str(f), framework="pt") as g:
            for name in g.keys():
                sl = g.get_slice(name)
                dtype = sl.get_dtype()
                shape = tuple(int(s) for s in sl.get_shape())
                if dtype not in ("F64", "F32", "F16", "BF16") or len(shape) < 2:
                    continue
                if rank.get(dtype, 2) > rank.get(worst, 2) or dtype in LOW_PRECISION:
                    worst = dtype
                t = g.get_tensor(name).to(torch.float64).flatten()
                key = (name, shape)
                centred = t - t.mean()
                var = float((centred**2).mean())
                fp.norms[key] = float(torch.linalg.vector_norm(t))
                fp.kurtosis[key] = float((centred**4).mean()) / var**2 if var > 0 else 0.0
                idx = torch.from_numpy(sample_positions(name, shape, per_tensor))
                fp.samples[key] = t[idx].to(torch.float32).numpy()
    fp.dtype = worst
    return fp
