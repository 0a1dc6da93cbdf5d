"""Model facts read from a folder without loading it: config, card labels, sizes, run keys."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.collection.config import SPLITS, CollectConfig
from core.collection.headers import TensorInfo
from core.errors import RejectedModel, WeightAtlasError
from core.safety import (
    HostileInput,
    load_json_bytes,
    load_yaml_text,
    read_regular,
)

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


def snapshot_root(path: Path) -> Path:
    """The folder a model's files may link within: the repo of an HF cache snapshot
    (``models--x/snapshots/REV`` links into ``models--x/blobs``), else the folder itself."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "snapshots" else path


def read_card(
    path: Path, root: Path | None = None, max_bytes: int = CollectConfig.max_card_bytes
) -> dict[str, Any]:
    """YAML front matter of ``README.md``; {} if absent or plain malformed YAML.

    Same block as ``huggingface_hub.metadata_load`` (its ``REGEX_YAML_BLOCK``). The card is read
    as a regular file inside ``root`` (default: ``snapshot_root(path)``) with a byte limit, and
    parsed with libyaml's safe loader without aliases (``core.safety.load_yaml_text``).

    Raises:
        RejectedModel: ``bad card``: not a regular file, over the limit, YAML aliases (a
            billion laughs), or nested too deeply.
    """
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    readme = Path(path) / "README.md"
    if not os.path.lexists(readme):
        return {}
    try:
        raw = read_regular(readme, max_bytes, snapshot_root(path) if root is None else root)
    except RejectedModel as e:
        raise RejectedModel("bad card", e.detail) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return {}
    match = REGEX_YAML_BLOCK.search(text)
    if not match:
        return {}
    try:
        meta = load_yaml_text(match.group(2), "README.md front matter")
    except HostileInput as e:
        raise RejectedModel("bad card", str(e)) from None
    except ValueError:  # malformed YAML in an untrusted card: no metadata, not a rejection
        return {}
    return meta if isinstance(meta, dict) else {}


def read_model_config(
    path: Path, root: Path | None = None, max_bytes: int = CollectConfig.max_config_bytes
) -> dict[str, Any]:
    """``config.json`` as a regular file (byte limit) parsed with a JSON depth limit.

    Raises:
        RejectedModel: ``no config`` or ``bad config`` (not a regular file, over the limit, not
            JSON, nested too deeply, not an object).
    """
    cfg_path = Path(path) / "config.json"
    if not os.path.lexists(cfg_path):
        raise RejectedModel("no config", f"{path} has no config.json")
    try:
        raw = read_regular(cfg_path, max_bytes, snapshot_root(path) if root is None else root)
        config = load_json_bytes(raw, "config.json")
    except RejectedModel as e:
        raise RejectedModel("bad config", e.detail) from None
    except ValueError as e:
        raise RejectedModel("bad config", str(e)) from None
    if not isinstance(config, dict):
        raise RejectedModel("bad config", "config.json is not a JSON object")
    return config


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
