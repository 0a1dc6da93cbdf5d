"""``weightatlas bench lineage``: recovering model trees from many models (a zoo plus
permuted copies), fingerprints and pair comparisons timed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core.bench.common import cpu_name

BENCH_TREES = {  # the seed trees when $WEIGHTATLAS_TREES_ZOO is not set (~1 minute to train)
    "families": "cnn,mlp",
    "tasks": "digits10:1",
    "checkpoints": "8",
    "trees": "cnn/digits10:2,mlp/digits10:2",
    "tree_wrong": "1",
    "tree_undeclared": "1",
}


def _permuted_copies(zoo_dir: Path, out: Path, n: int) -> tuple[list[Path], list[str], dict]:
    """``n`` model folders: the zoo's models, then copies whose every tensor is shuffled by one
    fixed permutation per copy (and tensor shape): distances inside a copy are the zoo's
    exactly, copies are unrelated to each other. Returns folders, ids and the copied truth."""
    import safetensors.torch

    from core.trees.score import zoo_truth
    from core.zoos.zoo import read_zoo

    rows = read_zoo(zoo_dir)
    truth = zoo_truth(zoo_dir)
    dirs, ids, copied = [], [], {}
    for k in range(-(-n // len(rows))):
        perms: dict[tuple[int, ...], torch.Tensor] = {}
        for r in rows:
            if len(dirs) == n:
                break
            src = zoo_dir / r["path"]
            sd = safetensors.torch.load_file(src / "model.safetensors")
            if k:
                g = torch.Generator().manual_seed(k)
                for name, t in sd.items():
                    if t.is_floating_point() and t.dim() >= 2:
                        if t.shape not in perms:
                            perms[t.shape] = torch.randperm(t.numel(), generator=g)
                        sd[name] = t.flatten()[perms[t.shape]].reshape(t.shape).contiguous()
            d = out / f"c{k}" / r["id"].split("/")[1]
            d.mkdir(parents=True)
            shutil.copy(src / "config.json", d / "config.json")
            safetensors.torch.save_file(sd, str(d / "model.safetensors"))
            model_id = f"c{k}/{r['id']}"
            dirs.append(d)
            ids.append(model_id)
            t = truth.get(r["id"])
            if t is not None:
                copied[model_id] = {
                    **t,
                    "tree": f"c{k}/{t['tree']}",
                    "parents": [f"c{k}/{p}" for p in t["parents"]],
                }
    return dirs, ids, copied


def bench_lineage(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of lineage recovery on N models (the trees zoo repeated as unrelated copies) at
    several N and samples per tensor, ours against MoTHer on the same fingerprints, with the
    accuracy of both against the copied truth."""
    from core.zoos.zoo import zoo

    n = args.n or 1000
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="wa-bench-lineage-"))
    try:
        zoo_dir = os.environ.get("WEIGHTATLAS_TREES_ZOO")
        if zoo_dir is None:
            zoo_dir = zoo("ci", tmp / "zoo", overrides=BENCH_TREES, progress=False)
        dirs, ids, truth = _permuted_copies(Path(zoo_dir), tmp / "models", n)
        sizes = sorted({m for m in (100, 300, n) if m <= n})
        runs = []
        for per_tensor in (256, 1024, 4096):
            for m in sizes if per_tensor == 1024 else [n]:
                runs.append(_lineage_run(dirs[:m], ids[:m], truth, per_tensor))
        weights = sum(d.joinpath("model.safetensors").stat().st_size for d in dirs[:n])
        big_mb, t_big = _large_model_fingerprint(tmp / "big")
        return {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "models": n,
            "seed_zoo": str(zoo_dir),
            "weights_mb": round(weights / 2**20, 2),
            "target_seconds_for_1000": 60.0,
            "runs": runs,
            "large_model_mb": round(big_mb, 1),
            "large_model_fingerprint_seconds": round(t_big, 3),
            "fingerprint_mb_per_s": round(big_mb / t_big, 1),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lineage_run(dirs: list[Path], ids: list[str], truth: dict, per_tensor: int) -> dict[str, Any]:
    """Fingerprint ``dirs`` with ``per_tensor`` samples, recover the trees with ours and with
    MoTHer on the same fingerprints; seconds and both scores against ``truth``."""
    from core.trees.lineage import compare, fingerprints
    from core.trees.recover import recover
    from core.trees.score import score

    m = len(dirs)
    t0 = time.perf_counter()
    fps = fingerprints(dirs, per_tensor)
    t_fp = time.perf_counter() - t0
    t0 = time.perf_counter()
    own = recover(fps, "deltas")
    t_own = time.perf_counter() - t0
    t0 = time.perf_counter()
    mother = recover(fps, "mother")
    t_mother = time.perf_counter() - t0
    rows = compare(ids, own, [[] for _ in range(m)], [None] * m, None, mother)
    s_own = score(rows, truth)
    s_mother = score(rows, truth, "mother_tree", "mother_parent")
    return {
        "models": m,
        "per_tensor": per_tensor,
        "fingerprint_seconds": round(t_fp, 3),
        "recover_seconds": round(t_own, 3),
        "lineage_seconds": round(t_fp + t_own, 3),
        "mother_recover_seconds": round(t_mother, 3),
        "pairs_compared": own.pairs_compared,
        "ari": s_own["ari"],
        "edge_accuracy": s_own["edge_accuracy"],
        "mother_ari": s_mother["ari"],
        "mother_edge_accuracy": s_mother["edge_accuracy"],
    }


def _large_model_fingerprint(big: Path) -> tuple[float, float]:
    """Megabytes and fingerprint seconds of one checkpoint shaped like 12 BERT-base
    feed-forward blocks (57 M values), written to the new folder ``big``."""
    import safetensors.torch

    from core.trees.lineage import fingerprints

    big.mkdir()
    g = torch.Generator().manual_seed(0)
    safetensors.torch.save_file(
        {
            f"layer.{i}.{w}.weight": torch.randn(*shape, generator=g) * 0.02
            for i in range(12)
            for w, shape in (("up", (3072, 768)), ("down", (768, 3072)))
        },
        str(big / "model.safetensors"),
    )
    big_mb = (big / "model.safetensors").stat().st_size / 2**20
    t0 = time.perf_counter()
    fingerprints([big], 1024)
    return big_mb, time.perf_counter() - t0
