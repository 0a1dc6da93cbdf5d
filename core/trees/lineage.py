"""The lineage stage: recover model trees from an atlas' weights and compare them with the
declared ``base_model`` of every card.

    weightatlas lineage ATLAS                      # writes ATLAS/lineage/ (core.trees.table)
    python -c "from core import lineage; lineage('ATLAS')"

Every accepted model with its safetensors in reach is fingerprinted once
(``core.trees.fingerprints``); ``core.trees.recover`` finds the trees by the project's method
and by MoTHer's; each model's row says what its card declares, what the weights say, and
whether they agree (``core.trees.table.STATUSES``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from core.atlas import Atlas, AtlasError
from core.collection.facts import _as_list, run_of
from core.config import build_config, register_presets, to_dict
from core.trees.fingerprints import Fingerprint, fingerprint
from core.trees.recover import Recovered, recover
from core.trees.table import FLAGS, STATUSES, LineageTable


@dataclass
class LineageConfig:
    """How lineage is recovered (``core.trees.recover``).

    ``per_tensor``: values sampled per weight tensor (bounds all pairwise work);
    ``threshold``: models closer than this (median per-tensor relative distance; independent
    inits sit near 1) share a tree; ``quant_tol`` / ``merge_tol``: precision copy and merge
    tolerances; ``tie_band``: relative distance band of a model's nearest earlier one inside
    which the shallowest is its parent's first candidate; ``descend_t`` / ``descend_cos``: how
    far a model must continue a recovered edge's delta to go down it (``core.trees.recover``).
    """

    per_tensor: int = 1024
    threshold: float = 0.7
    quant_tol: float = 0.02
    merge_tol: float = 0.05
    tie_band: float = 0.25
    descend_t: float = 0.5
    descend_cos: float = 0.5
    mother: bool = True  # also run the MoTHer baseline (mother_* columns)
    probes: bool = True  # task probes within and across trees (core.trees.probes)


LINEAGE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"per_tensor": 256, "mother": False, "probes": False},
}
# the names every config table shares: ``ci`` is the smoke test, ``demo`` what the demo atlas used
LINEAGE_PRESETS["ci"] = LINEAGE_PRESETS["fast"]
LINEAGE_PRESETS["demo"] = LINEAGE_PRESETS["default"]
register_presets("lineage", LineageConfig, LINEAGE_PRESETS)


def fingerprints(
    dirs: Sequence[Path], per_tensor: int, progress: bool = False
) -> list[Fingerprint]:
    """:func:`core.trees.fingerprints.fingerprint` of every model directory."""
    return [
        fingerprint(d, per_tensor)
        for d in tqdm(dirs, desc="lineage: fingerprints", unit="model", disable=not progress)
    ]


def _ids(rec: Recovered, ids: list[str], i: int) -> str | list[str] | None:
    parents = [ids[p] for p in rec.parents[i]]
    return None if not parents else parents[0] if len(parents) == 1 else parents


def compare(
    ids: list[str],
    rec: Recovered,
    declared: list[list[str]],
    declared_relation: list[str | None],
    runs: list[str] | None = None,
    mother: Recovered | None = None,
) -> list[dict[str, Any]]:
    """The lineage rows: recovered lineage beside each model's declared ``base_model``.

    Args:
        ids: model ids, aligned with ``rec``.
        rec: recovered lineage (ours).
        declared: each model's declared base model ids (empty: none).
        declared_relation: each model's declared ``base_model_relation``.
        runs: each model's training run key (zoo checkpoints of one run share it), if known.
        mother: MoTHer's recovered lineage, for the ``mother_*`` columns.
    """
    index = {m: i for i, m in enumerate(ids)}
    sizes: dict[int, int] = {}
    for t in rec.tree:
        sizes[t] = sizes.get(t, 0) + 1
    rows = []
    for i, model in enumerate(ids):
        parents = [ids[p] for p in rec.parents[i]]
        said = declared[i]
        note = None
        if not said:
            if not parents:
                status = "independent" if sizes[rec.tree[i]] == 1 else "root"
            elif runs is not None and all(runs[index[p]] == runs[i] for p in parents):
                status = "checkpoint"
            else:
                status = "missing"
                note = f"declares no base model, the weights say {', '.join(parents)}"
        elif not all(s in index for s in said):
            status = "unverifiable"
        elif set(said) == set(parents) or (len(said) == 1 and said[0] in parents):
            status = "agrees"
        elif any(rec.tree[index[s]] != rec.tree[i] for s in said):
            status = "contradicts"
            note = (
                f"declares {', '.join(said)}, the weights say "
                f"{', '.join(parents) if parents else 'it is a root'} (another tree)"
            )
        else:
            status = "differs"
            note = (
                f"declares {', '.join(said)}, the weights say "
                f"{', '.join(parents) if parents else 'it is the root'}"
            )
        row = {
            "id": model,
            "tree": f"t{rec.tree[i]:03d}",
            "tree_size": sizes[rec.tree[i]],
            "parent": _ids(rec, ids, i),
            "relation": rec.relation[i],
            "distance": round(rec.distance[i], 6),
            "confidence": round(rec.confidence[i], 4) if parents else None,
            "declared": None if not said else said[0] if len(said) == 1 else said,
            "declared_relation": declared_relation[i],
            "status": status,
            "note": note,
        }
        if mother is not None:
            row["mother_tree"] = f"t{mother.tree[i]:03d}"
            row["mother_parent"] = _ids(mother, ids, i)
        rows.append(row)
    return rows


def lineage(
    atlas: str | Path,
    preset: str = "default",
    overrides: dict[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Recover the atlas' model trees and write ``ATLAS/lineage/``; returns the summary.

    Args:
        atlas: the atlas directory (after ``collect``; weights must be in reach).
        preset: ``default`` (= ``demo``) or ``fast`` (= ``ci``); see ``LINEAGE_PRESETS``.
        overrides: LineageConfig fields that win over the preset.
        config_file: optional JSON/YAML file of LineageConfig fields.
        progress: show a tqdm bar while fingerprinting.
    """
    cfg = build_config(LineageConfig, LINEAGE_PRESETS, preset, config_file, overrides)
    a = Atlas.open(atlas)
    rows = [r for r in a.accepted() if r.weights_dir(a.root) is not None]
    if not rows:
        raise AtlasError(f"{a.root} has no accepted model with its weights in reach")
    start = time.perf_counter()
    fps = fingerprints([r.weights_dir(a.root) for r in rows], cfg.per_tensor, progress)
    t_fp = time.perf_counter() - start
    kw = dict(threshold=cfg.threshold, quant_tol=cfg.quant_tol, merge_tol=cfg.merge_tol)
    t0 = time.perf_counter()
    rule = dict(tie_band=cfg.tie_band, descend_t=cfg.descend_t, descend_cos=cfg.descend_cos)
    rec = recover(fps, "deltas", **rule, **kw)
    t_own = time.perf_counter() - t0
    t0 = time.perf_counter()
    mother = recover(fps, "mother", **kw) if cfg.mother else None
    t_mother = time.perf_counter() - t0
    ids = [r["id"] for r in rows]
    out = compare(
        ids,
        rec,
        [_as_list(r.get("base_model")) for r in rows],
        [r.get("base_model_relation") for r in rows],
        [run_of(r) for r in rows],
        mother,
    )
    counts = {s: sum(r["status"] == s for r in out) for s in STATUSES}
    info = {
        "config": to_dict(cfg),
        "preset": preset,
        "models": len(out),
        "trees": len({r["tree"] for r in out if r["tree_size"] > 1}),
        "edges": sum(r["parent"] is not None for r in out),
        "status": counts,
        "flagged": sum(counts[s] for s in FLAGS),
        "pairs_compared": rec.pairs_compared,
        "fingerprint_seconds": round(t_fp, 3),
        "recover_seconds": round(t_own, 3),
        "mother_seconds": round(t_mother, 3) if cfg.mother else None,
    }
    LineageTable(a.root).write(out, info)
    if cfg.probes:
        from core.trees.probes import tree_probes

        info["probes"] = tree_probes(a.root, dict(zip(ids, fps)))
        LineageTable(a.root).write(out, info)
    return info
