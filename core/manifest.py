"""The manifest table (``ATLAS/manifest.jsonl``): one typed row per collected model.

A row is written by ``collect`` (and the demo export) as a JSON object; ``ModelRow`` is that
object with typed readers on top, so the facts every reader needs (the model's accuracy, its
task) are read one way. ``ModelRow`` is a ``dict``: code that reads fields by key keeps working.

Accuracy is read from the row's zoo label block first, then from its model card's metrics
(``model-index``), each under the keys of :data:`TEST_ACCURACY_KEYS` in order; the validation
accuracy (``val_accuracy``) is read the same way. The map, the report and generation's prompt
choice all go through these two properties.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.jsonl"

# keys of a held-out (test) accuracy, most specific first: the zoo's label, then the names the
# Hub's model-index uses for a single accuracy figure
TEST_ACCURACY_KEYS = ("test_accuracy", "accuracy", "eval_accuracy", "top1")
VAL_ACCURACY_KEYS = ("val_accuracy",)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools and non-numbers are not accuracies)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class ModelRow(dict[str, Any]):
    """One manifest row: the JSON object as written, with typed readers of its facts."""

    @property
    def id(self) -> str:
        """The model id (a Hub repo id or a zoo name)."""
        return str(self["id"])

    @property
    def labels(self) -> dict[str, Any]:
        """The zoo label block (``{}`` for Hub models)."""
        labels = self.get("labels")
        return labels if isinstance(labels, dict) else {}

    @property
    def metrics(self) -> dict[str, Any]:
        """The card's ``model-index`` metrics, flattened (``{}`` if none)."""
        metrics = self.get("metrics")
        return metrics if isinstance(metrics, dict) else {}

    def _first(self, keys: Iterable[str]) -> float | None:
        for source in (self.labels, self.metrics):
            for key in keys:
                value = _number(source.get(key))
                if value is not None:
                    return value
        return None

    @property
    def accuracy(self) -> float | None:
        """Test accuracy: labels first, then card metrics, keys in ``TEST_ACCURACY_KEYS`` order."""
        return self._first(TEST_ACCURACY_KEYS)

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy, read like :attr:`accuracy` (labels first, then metrics)."""
        return self._first(VAL_ACCURACY_KEYS)

    @property
    def selection_accuracy(self) -> float | None:
        """The accuracy models are ranked by when chosen (prompts): validation, else test, so
        that choosing does not look at test data where a validation figure exists."""
        val = self.val_accuracy
        return val if val is not None else self.accuracy

    @property
    def task(self) -> str | None:
        """The zoo task label, or None."""
        task = self.labels.get("task")
        return str(task) if task else None

    @property
    def accepted(self) -> bool:
        """True when collect accepted the model."""
        return self.get("status") == "accepted"

    def weights_dir(self, root: Path) -> Path | None:
        """The model's folder if it holds safetensors weights (a relative ``path`` is inside
        the atlas at ``root``); None without a path or weights."""
        path = self.get("path")
        if not path:
            return None
        p = Path(path)
        p = p if p.is_absolute() else root / p
        return p if p.is_dir() and any(p.glob("*.safetensors")) else None


def as_row(row: dict[str, Any]) -> ModelRow:
    """``row`` as a ModelRow (itself when it already is one)."""
    return row if isinstance(row, ModelRow) else ModelRow(row)


def in_id_order(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows sorted by model id, rows of one id kept in their written order (stable).

    The order the manifest is stored in: it depends only on the rows, not on which worker
    finished first, so runs that train in manifest order are reproducible given the seed.
    """
    return sorted(rows, key=lambda row: str(row["id"]))


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[ModelRow]:
    """Rows as ModelRows, the last row per model id winning (the manifest is append-only)."""
    by_id: dict[str, ModelRow] = {}
    for row in rows:
        by_id[row["id"]] = as_row(row)
    return list(by_id.values())
