"""The family-tree panel of the Atlas page (issue 26): a model's recovered parent, children and
siblings from ``weightatlas lineage``, beside what its card declares.

UI only: the rows come from ``core.trees.table`` through the map table, the family from
``core.trees.lineage.family``. Model ids and notes are untrusted strings: they are shown in
tables or escaped, never rendered as markdown.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.catalog import MapTable
from core.trees.table import STATUSES, family
from explorer.common import escape_md


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return " + ".join(str(v) for v in value)
    return str(value)


def family_panel_ui(table: MapTable, model_id: str) -> None:
    """The selected model's family tree; a note when the atlas has no lineage table."""
    st.markdown("**Family tree** (recovered from the weights by `weightatlas lineage`)")
    if not table.lineage:
        st.caption("No lineage table in this atlas: run `weightatlas lineage ATLAS` to recover it.")
        return
    if model_id not in table.lineage:
        st.caption("This model has no lineage row (its weights were not in reach).")
        return
    fam = family(table.lineage, model_id)
    row = fam["row"]
    if row["status"] in ("missing", "contradicts"):
        st.warning(
            escape_md(str(row.get("note") or STATUSES[row["status"]])), icon=":material/flag:"
        )
    elif row["status"] == "differs":
        st.info(escape_md(str(row.get("note"))), icon=":material/call_split:")
    conf = row.get("confidence")
    facts = [
        ("tree", f"{row['tree']} ({row['tree_size']} models)"),
        ("parent (weights)", _fmt(row.get("parent"))),
        ("relation (weights)", _fmt(row.get("relation"))),
        ("confidence", "" if conf is None else f"{conf:.2f}"),
        ("declared base_model", _fmt(row.get("declared"))),
        ("declared relation", _fmt(row.get("declared_relation"))),
        ("declared vs weights", f"{row['status']}: {STATUSES[row['status']]}"),
    ]
    if "mother_parent" in row:
        facts.append(("parent (MoTHer baseline)", _fmt(row.get("mother_parent"))))
    st.table({"field": [k for k, _ in facts], "value": [v for _, v in facts]})
    members = (
        [("parent", m) for m in fam["parents"]]
        + [("child", m) for m in fam["children"]]
        + [("sibling", m) for m in fam["siblings"]]
    )
    if members:
        conf = [table.lineage[m].get("confidence") for _, m in members]
        st.table(  # an HTML table: a few rows, ids as plain text
            {
                "kin": [kin for kin, _ in members],
                "id": [m for _, m in members],
                "relation": [_fmt(table.lineage[m].get("relation")) for _, m in members],
                "confidence": ["" if c is None else f"{c:.2f}" for c in conf],
                "declared vs weights": [table.lineage[m]["status"] for _, m in members],
            }
        )
    else:
        st.caption("No parent, child or sibling among the atlas' models.")
