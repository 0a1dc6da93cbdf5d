"""Score recovered lineage against a zoo's ground truth (``zoo.json``'s ``trees``).

Tree membership: adjusted Rand index of the recovered trees against the true ones (a model of
no tree is its own, or one with the other checkpoints of its zoo run). Parent edges: a model with a true parent counts as right when its
recovered parent is one of its true parents (the direction is part of it: a reversed edge is
wrong). Declarations: every planted wrong declaration (another tree's model) must be flagged
``contradicts`` and every planted missing one ``missing``; either flag on another model is a
false alarm. ``differs`` (a parent of the same tree other than the declared one) is no flag:
it is counted apart (``differs``), and on a zoo whose declarations are right it is exactly the
recovery's own edge errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sklearn.metrics import adjusted_rand_score

from core.atlas import Atlas, read_json
from core.collection.facts import _as_list, run_of
from core.errors import WeightAtlasError
from core.trees.table import FLAGS, LineageTable


def zoo_truth(zoo_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The true lineage of a zoo's tree nodes, keyed by model id."""
    info = read_json(Path(zoo_dir) / "zoo.json")
    if "trees" not in info:
        raise WeightAtlasError(f"{zoo_dir} holds no model trees (zoo.json has no 'trees')")
    return {t["id"]: t for t in info["trees"]}


def score(
    rows: list[dict[str, Any]],
    truth: dict[str, dict[str, Any]],
    tree_key: str = "tree",
    parent_key: str = "parent",
    runs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Tree ARI and parent-edge accuracy of one method's columns of the lineage rows.

    A model outside the truth is a tree of its own, or, given ``runs`` (id -> training run
    key), one tree with the other checkpoints of its run (they share an init: real lineage).
    """
    ids = [r["id"] for r in rows]
    runs = runs or {}
    true_tree = [
        truth[i]["tree"] if i in truth else f"run:{runs[i]}" if i in runs else f"solo:{i}"
        for i in ids
    ]
    got_tree = [r[tree_key] for r in rows]
    right = total = roots_right = roots = 0
    wrong: list[str] = []
    for r in rows:
        t = truth.get(r["id"])
        got = _as_list(r.get(parent_key))
        if t is None or not t["parents"]:
            roots += 1
            roots_right += not got
            continue
        total += 1
        if got and got[0] in t["parents"]:
            right += 1
        else:
            wrong.append(r["id"])
    return {
        "ari": round(float(adjusted_rand_score(true_tree, got_tree)), 4),
        "edge_accuracy": round(right / total, 4) if total else None,
        "edges": total,
        "edges_right": right,
        "root_accuracy": round(roots_right / roots, 4) if roots else None,
        "wrong_edges": wrong,
    }


def score_atlas(atlas: str | Path, zoo_dir: str | Path) -> dict[str, Any]:
    """Both methods against the zoo's truth, and the declaration checks, for one atlas."""
    truth = zoo_truth(zoo_dir)
    rows = LineageTable(atlas).rows()
    runs = {r["id"]: run_of(r) for r in Atlas.open(atlas).accepted()}
    planted = {i: t["planted"] for i, t in truth.items() if t.get("planted")}
    found, alarms = [], []
    for r in rows:
        kind = planted.get(r["id"])
        flagged = r["status"] in FLAGS
        ok = (kind == "wrong" and r["status"] == "contradicts") or (
            kind == "undeclared" and r["status"] == "missing"
        )
        if kind and ok:
            found.append(r["id"])
        elif flagged and not kind:
            alarms.append(r["id"])
    out = {
        "models": len(rows),
        "tree_models": sum(r["id"] in truth for r in rows),
        "ours": score(rows, truth, runs=runs),
        "planted": len(planted),
        "planted_found": len(found),
        "missed": sorted(set(planted) - set(found)),
        "false_alarms": alarms,
        "differs": sorted(r["id"] for r in rows if r["status"] == "differs"),
    }
    if rows and "mother_tree" in rows[0]:
        out["mother"] = score(rows, truth, "mother_tree", "mother_parent", runs)
    return out
