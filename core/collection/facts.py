"""Model facts read from a folder without loading it: config, card labels, sizes, run keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.collection.config import SPLITS
from core.errors import WeightAtlasError
from core.models.formats import TensorInfo

# --------------------------------------------------------------------------- model facts


@dataclass
class ModelFacts:
    """What is known about one candidate; filled in as the checks proceed."""

    id: str
    revision: str | None
    source: str
    path: Path | None = None
    card: dict[str, Any] = field(default_factory=dict)
    hub_tags: list[str] | None = None
    hub_pipeline_tag: str | None = None
    config: dict[str, Any] | None = None
    library: str | None = None
    model_type: str | None = None
    architecture: str | None = None
    family: str | None = None
    params: int | None = None
    files: list[Path] = field(default_factory=list)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, list | tuple) else [v]


def card_tags(card: dict[str, Any]) -> list[str]:
    """Tags as the Hub derives them from a card: its tags, library, pipeline tag, datasets, license."""
    tags = [str(t) for t in _as_list(card.get("tags"))]
    for key, prefix in (("library_name", ""), ("pipeline_tag", ""), ("license", "license:")):
        if isinstance(card.get(key), str):
            tags.append(prefix + card[key])
    tags += [f"dataset:{d}" for d in _as_list(card.get("datasets")) if isinstance(d, str)]
    return list(dict.fromkeys(tags))


def card_metrics(card: dict[str, Any]) -> dict[str, float]:
    """``model-index`` results flattened to ``{metric type (or name): value}``."""
    out: dict[str, float] = {}
    for entry in _as_list(card.get("model-index")):
        if not isinstance(entry, dict):
            continue
        for result in _as_list(entry.get("results")):
            if not isinstance(result, dict):
                continue
            for m in _as_list(result.get("metrics")):
                if (
                    isinstance(m, dict)
                    and isinstance(m.get("value"), int | float)
                    and not isinstance(m["value"], bool)
                ):
                    key = m.get("type") or m.get("name")
                    if isinstance(key, str):
                        out[key] = float(m["value"])
    return out


def base_model_of(
    card: dict[str, Any], files: list[str]
) -> tuple[str | list[str] | None, str | None]:
    """``base_model`` and its relation: the card's ``base_model_relation``, else the Hub's rule
    (adapter files -> adapter, several bases -> merge, quantized tag -> quantized, else finetune)."""
    bases = [b for b in _as_list(card.get("base_model")) if isinstance(b, str)]
    if not bases:
        return None, None
    base: str | list[str] = bases[0] if len(bases) == 1 else bases
    relation = card.get("base_model_relation")
    if isinstance(relation, str):
        return base, relation
    if "adapter_config.json" in files:
        return base, "adapter"
    if len(bases) > 1:
        return base, "merge"
    if "quantized" in card_tags(card):
        return base, "quantized"
    return base, "finetune"


def zoo_labels(card: dict[str, Any]) -> dict[str, Any]:
    """The flat ``weightatlas:`` block of a zoo card (task, run, epoch, accuracies, ...)."""
    block = card.get("weightatlas")
    return dict(block) if isinstance(block, dict) else {}


def run_key(model_id: str, labels: dict[str, Any]) -> str:
    """``family-task-rN`` for zoo checkpoints (one run never straddles splits), else the id."""
    if all(labels.get(k) is not None for k in ("family", "task", "run")):
        return f"{labels['family']}-{labels['task']}-r{labels['run']}"
    return model_id


def run_of(row: dict[str, Any]) -> str:
    """:func:`run_key` of a manifest row (its zoo labels, the row's family if they lack one)."""
    return run_key(str(row["id"]), {"family": row.get("family"), **(row.get("labels") or {})})


def split_of(key: str, fractions: tuple[float, ...] = (0.7, 0.15, 0.15)) -> str:
    """Deterministic train/val/test from a SHA-256 of ``key``."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise WeightAtlasError(
            f"split_fractions must be 3 non-negative shares summing to 1, got {fractions}"
        )
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac
        if u < acc:
            return name
    return next(s for s, f in zip(reversed(SPLITS), reversed(fractions)) if f > 0)
