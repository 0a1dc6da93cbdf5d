"""What several benchmarks share: best-of timing, the CPU's name, a throwaway atlas
with an untrained backbone, and a token store written from random tokens.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.atlas import (
    Atlas,
    TokenTable,
    append_jsonl,
    atomic_path,
    write_json,
)
from core.backbone.model import (
    BACKBONE_PRESETS,
    Backbone,
    BackboneConfig,
    save_backbone,
)
from core.config import build_config
from core.tokens.schemes import Tokenized
from core.tokens.shards import SHARD_TENSORS, model_checksum, shard_layout


def best_seconds(fn: Callable[[], Any], repeat: int) -> float:
    """The fastest of ``repeat`` timed calls of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_store(
    tokens_dir: Path, models: dict[str, Tokenized], scheme: str, token_size: int
) -> None:
    """Write in-memory tokenized models as one shard plus an index part (bench, tests, generated sets)."""
    rows = []
    at = 0
    shard = "shard-" + hashlib.sha1("\n".join(models).encode()).hexdigest()[:16] + ".safetensors"
    head, table = shard_layout(
        sum(t.n_tokens for t in models.values()), token_size, {"format": "pt"}
    )
    tokens_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(tokens_dir / shard) as tmp, open(tmp, "wb") as f:
        f.write(head)
        for name in SHARD_TENSORS:
            for tk in models.values():
                t = {"positions": tk.positions, "tokens": tk.tokens, "valid": tk.valid}[name]
                f.write(t.contiguous().numpy().tobytes())
    for mid, tk in models.items():
        rows.append(
            {
                "id": mid,
                "status": "ok",
                "scheme": scheme,
                "token_size": token_size,
                "shard": shard,
                "offset": at,
                "n_tokens": tk.n_tokens,
                "n_values": int(tk.valid.sum()),
                "family": None,
                "split": None,
                "layers": [e.to_dict() for e in tk.layers],
                "excluded": tk.excluded,
                "checksum": model_checksum(
                    {"tokens": tk.tokens, "valid": tk.valid, "positions": tk.positions},
                    0,
                    tk.n_tokens,
                ),
            }
        )
        at += tk.n_tokens
    append_jsonl(TokenTable(tokens_dir).parts_dir / "rank-00000.jsonl", rows)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass

    return platform.processor() or "cpu"


def random_backbone_atlas(root: Path, preset: str, scheme: str = "dense") -> None:
    """A throwaway atlas holding only an untrained backbone and a token-store index (bench)."""

    a = Atlas.create(root)
    cfg = build_config(BackboneConfig, BACKBONE_PRESETS, preset)
    torch.manual_seed(0)
    save_backbone(Backbone(cfg), a.backbone_dir)
    write_json(a.tokens.index_path, {"scheme": scheme, "token_size": cfg.token_size, "models": {}})
