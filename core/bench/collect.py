"""``weightatlas bench collect``: scanning a Hugging Face cache of many repos, against
a plain walk-and-read of the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.collection.checks import inspect_model_dir
from core.collection.config import CollectConfig
from core.collection.facts import ModelFacts
from core.collection.sources import cache_repos
from core.errors import RejectedModel


def scan_cache(root: str | Path, cfg: CollectConfig | None = None) -> list[dict[str, Any]]:
    """Header-only scan of an HF cache: per repo, card + config + safetensors headers, no tensor data.

    Returns:
        ``{"id", "status", "reason", "params", "n_tensors"}`` per repo.
    """
    cfg = cfg or CollectConfig()
    out = []
    for model_id, rev, snap in cache_repos(Path(root)):
        facts = ModelFacts(model_id, rev, "hf-cache")
        try:
            inspect_model_dir(snap, cfg, facts)
            out.append(
                {
                    "id": model_id,
                    "status": "ok",
                    "reason": None,
                    "params": facts.params,
                    "n_tensors": len(facts.tensors),
                }
            )
        except RejectedModel as e:
            out.append(
                {
                    "id": model_id,
                    "status": "rejected",
                    "reason": e.reason,
                    "params": facts.params,
                    "n_tensors": 0,
                }
            )
    return out


def _walk_read(root: Path) -> int:
    """Baseline: os.walk + read the same bytes as the scan (config, card, 8 + n header bytes)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if name.endswith(".safetensors"):
                with open(p, "rb") as f:
                    n = int.from_bytes(f.read(8), "little")
                    total += 8 + len(f.read(n))
            elif name in ("config.json", "README.md"):
                with open(p, "rb") as f:
                    total += len(f.read())
    return total


def _bench_seed_repos(tmp: Path) -> list[Path]:
    """Snapshot folders to replicate: those of the zoo ``$WEIGHTATLAS_ZOO`` names, else two tiny
    transformers models made here."""
    zoo = Path(os.environ["WEIGHTATLAS_ZOO"]) if os.environ.get("WEIGHTATLAS_ZOO") else None
    if zoo is not None and zoo.is_dir():
        snaps = [snap for _id, _rev, snap in cache_repos(zoo)]
        if snaps:
            return snaps
    import transformers

    seeds = []
    for i, cfg in enumerate(
        (
            transformers.BertConfig(
                vocab_size=64,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
            ),
            transformers.ViTConfig(
                image_size=8,
                patch_size=4,
                num_channels=1,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                num_labels=10,
            ),
        )
    ):
        model = (transformers.BertModel if i == 0 else transformers.ViTForImageClassification)(cfg)
        d = tmp / "seed" / str(i)
        model.save_pretrained(d)
        (d / "README.md").write_text("---\nlicense: mit\ntags: [bench]\n---\n")
        seeds.append(d)
    return seeds


def make_bench_cache(root: Path, n: int, seeds: list[Path]) -> None:
    """``n`` HF-cache repos ``models--bench--mI`` hardlinking the seed snapshots' files."""
    for i in range(n):
        seed = seeds[i % len(seeds)]
        rev = hashlib.sha1(f"bench-{i}".encode()).hexdigest()
        repo = root / f"models--bench--m{i:05d}"
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(rev)
        for f in seed.iterdir():
            if f.is_file():
                os.link(f.resolve(), snap / f.name)


def bench_collect(args: argparse.Namespace) -> dict[str, Any]:
    """Header-only scan of N cached repos vs. os.walk + reading the same bytes (models/s)."""
    n = args.n or 1000
    repeat = max(1, args.repeat or 3)
    tmp = Path(tempfile.mkdtemp(prefix="wa-bench-collect-"))
    try:
        seeds = _bench_seed_repos(tmp)
        cache = tmp / "cache"
        cache.mkdir()
        make_bench_cache(cache, n, seeds)

        def best(fn: Callable[[], Any]) -> tuple[float, Any]:
            times, out = [], None
            for _ in range(repeat):
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            return min(times), out

        t_base, nbytes = best(lambda: _walk_read(cache))
        t_scan, rows = best(lambda: scan_cache(cache))
        ok = sum(r["status"] == "ok" for r in rows)
        return {
            "n_repos": n,
            "seed_repos": len(seeds),
            "repeat": repeat,
            "scan_seconds": t_scan,
            "scan_models_per_s": n / t_scan,
            "baseline_seconds": t_base,
            "baseline_models_per_s": n / t_base,
            "scan_over_baseline_time": t_scan / t_base,
            "bytes_read_per_repo": nbytes / n,
            "scan_ok": ok,
            "scan_rejected": dict(Counter(r["reason"] for r in rows if r["status"] != "ok")),
            "target_seconds_for_1000": 10.0,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
