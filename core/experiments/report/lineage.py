"""The model-trees section (issue 26): ``results/lineage.md`` and its verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.atlas import (
    Atlas,
    atomic_write_bytes,
    write_json,
)
from core.experiments.report.rules import verdict_line
from core.experiments.report.tables import md_table


def lineage_table(atlas: str | Path | Atlas) -> Path:
    """Write ``results/lineage.md``: recovered trees vs declared lineage, MoTHer beside ours
    where a zoo truth was scored into the lineage info, and the task probes within/across
    trees (``core.trees``)."""
    from core.trees.probes import FEATURES
    from core.trees.table import STATUSES, LineageTable

    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    info = LineageTable(a.root).info()
    st = info["status"]
    rows = [[s, st.get(s, 0), STATUSES[s]] for s in STATUSES]
    note = (
        f"`weightatlas lineage`: {info['models']} models, {info['trees']} trees of 2+ models, "
        f"{info['edges']} parent edges recovered from the weights in "
        f"{info['fingerprint_seconds'] + info['recover_seconds']:.1f} s "
        f"({info['pairs_compared']} model pairs compared on fixed samples). Declared "
        "`base_model` vs the weights, per model:"
    )
    text = note + "\n\n" + md_table(["status", "models", "meaning"], rows) + "\n"
    score = info.get("score")
    if score:
        ours, mother = score["ours"], score.get("mother") or {}
        srows = [
            ["tree membership ARI", ours["ari"], mother.get("ari")],
            ["parent edge accuracy (directed)", ours["edge_accuracy"], mother.get("edge_accuracy")],
            ["roots found as roots", ours["root_accuracy"], mother.get("root_accuracy")],
        ]
        text += (
            f"\nAgainst the zoo's ground truth ({score['tree_models']} tree models, "
            f"{ours['edges']} true parent edges): planted wrong or missing declarations found "
            f"{score['planted_found']} of {score['planted']}, false alarms "
            f"{len(score['false_alarms'])}.\n\n"
            + md_table(["", "ours (per-tensor deltas)", "MoTHer"], srows)
            + "\n"
        )
    probes = (info.get("probes") or {}).get("pooled") or {}
    if probes:
        prow = [
            [f, probes.get(f"within/{f}"), probes.get(f"across/{f}")]
            for f in (*FEATURES, "majority")
        ]
        fams = info["probes"]["families"]
        sizes = ", ".join(f"{k} {v['models']} ({v['trees']} trees)" for k, v in fams.items())
        text += (
            "\nTask probes (ProbeX's claim): which task a fine-tune was trained on, from its "
            f"weights; logistic regression, pooled over families ({sizes} fine-tunes). Within "
            "trees: leave one model out; across trees: leave its whole tree out.\n\n"
            + md_table(["features", "within trees", "across trees"], prow)
            + "\n"
        )
    path = a.results_dir / "lineage.md"
    atomic_write_bytes(path, text.encode())
    write_json(a.results_dir / "lineage.json", info)
    return path


def lineage_verdicts(out: dict[str, Any]) -> list[str]:
    """Flags and the probes against the majority rate."""
    st = out.get("status") or {}
    lines = [
        verdict_line(
            "info",
            "declarations",
            f"{st.get('missing', 0)} missing and {st.get('contradicts', 0)} contradicted "
            f"declarations flagged, {st.get('agrees', 0)} agree",
        )
    ]
    probes = out.get("probes") or {}
    pooled = probes.get("pooled") or {}
    tasks = max((f.get("tasks", 1) for f in (probes.get("families") or {}).values()), default=1)
    for setting in ("within", "across"):
        maj = pooled.get(f"{setting}/majority")
        if maj is not None:  # leave-one-out majority can fall below chance; compare with both
            maj = max(maj, 1.0 / tasks)
        best = max(
            (
                (v, k.split("/", 1)[1])
                for k, v in pooled.items()
                if k.startswith(setting + "/") and not k.endswith("/majority")
            ),
            default=None,
        )
        if best is not None and maj is not None:
            verdict = "holds" if best[0] > maj + 0.1 else "not shown"
            lines.append(
                verdict_line(
                    verdict,
                    f"task probe {setting} trees",
                    f"best {best[1]} {best[0]:.3f} vs max(majority, chance) {maj:.3f}",
                )
            )
    return lines
