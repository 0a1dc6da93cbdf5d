"""The lineage table of an atlas: ``ATLAS/lineage/lineage.jsonl`` (one row per model) and
``ATLAS/lineage/lineage.json`` (config, counts, timings). :class:`LineageTable` alone knows
these files.

A row: ``id``, ``tree`` (``t000``...), ``tree_size``, ``parent`` (an id, a list of two ids for a
merge, or null for a root), ``relation`` (``finetune`` / ``merge`` / ``quantized`` / null),
``distance``, ``confidence`` (0-1), ``declared`` and ``declared_relation`` (the card's
``base_model`` as collected), ``status`` (see ``STATUSES``), ``note`` (``declares X, the weights
say Y`` where they disagree), and MoTHer's ``mother_tree`` / ``mother_parent`` beside ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.atlas import (
    Atlas,
    AtlasError,
    atomic_write_bytes,
    dumps,
    read_json,
    read_jsonl,
    write_json,
)

LINEAGE_VERSION = 1
# declared vs recovered, per model
STATUSES = {
    "agrees": "the declared base model is the recovered parent",
    "root": "declares nothing and the weights find no parent (a root)",
    "independent": "declares nothing and shares a tree with no other model",
    "checkpoint": "declares nothing; the recovered parent is an earlier checkpoint of its run",
    "missing": "declares nothing, the weights find a parent",
    "differs": "declares a model of its own tree, the weights say another one of that tree",
    "contradicts": "declares a model the weights place in another tree",
    "unverifiable": "declares a base model that is not in the atlas",
}
FLAGS = ("missing", "contradicts")  # what the app and the summary flag


class LineageTable:
    """Reader and writer of ``ATLAS/lineage/``."""

    DIR = "lineage"

    def __init__(self, root: str | Path):
        self.dir = Path(root) / self.DIR
        self.rows_path = self.dir / "lineage.jsonl"
        self.info_path = self.dir / "lineage.json"

    def exists(self) -> bool:
        """Whether the atlas has a finished lineage table."""
        return self.rows_path.is_file() and self.info_path.is_file()

    def write(self, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
        """Replace the table atomically (rows first, then the info that marks it finished)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.info_path.unlink(missing_ok=True)
        atomic_write_bytes(self.rows_path, "".join(dumps(r) + "\n" for r in rows).encode())
        write_json(self.info_path, {"version": LINEAGE_VERSION, **info})

    def update_info(self, **fields: Any) -> None:
        """Add fields to the summary of a finished table (e.g. a score against a zoo's truth)."""
        write_json(self.info_path, {**self.info(), **fields})

    def rows(self) -> list[dict[str, Any]]:
        """All rows; AtlasError with the command to run if there is no table."""
        if not self.exists():
            raise AtlasError(
                f"{self.dir.parent} has no lineage table; run `weightatlas lineage {self.dir.parent}`"
            )
        return list(read_jsonl(self.rows_path))

    def info(self) -> dict[str, Any]:
        """The summary written with the rows."""
        if not self.exists():
            raise AtlasError(f"{self.dir.parent} has no lineage table")
        return read_json(self.info_path)

    def by_id(self) -> dict[str, dict[str, Any]]:
        """Rows keyed by model id."""
        return {r["id"]: r for r in self.rows()}


def _parents(value: Any) -> list[str]:
    """A row's ``parent`` as a list (none, one id, or the two of a merge)."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def lineage_table(root: str | Path) -> LineageTable:
    """The lineage table of the atlas at ``root`` (the atlas must exist)."""
    return LineageTable(Atlas.open(root).root)


def family(rows: dict[str, dict[str, Any]], model_id: str) -> dict[str, Any]:
    """The family of one model from the lineage rows: parent(s), children, siblings, its tree.

    Args:
        rows: lineage rows keyed by id (``LineageTable.by_id``).
        model_id: the model.
    """
    row = rows[model_id]
    parents = _parents(row.get("parent"))
    children = [m for m, r in rows.items() if model_id in _parents(r.get("parent"))]
    siblings = sorted(
        m
        for m, r in rows.items()
        if m != model_id and parents and set(_parents(r.get("parent"))) & set(parents)
    )
    tree = sorted(m for m, r in rows.items() if r["tree"] == row["tree"])
    return {
        "row": row,
        "parents": parents,
        "children": sorted(children),
        "siblings": siblings,
        "tree": tree,
    }
