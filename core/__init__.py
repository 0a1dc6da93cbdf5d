"""Weight Atlas: weight-space learning on heterogeneous models.

The pipeline, one module per stage, each with a function of the same name:

    zoo -> collect -> tokenize -> train -> embed / evaluate / sample

Public stage functions are imported lazily so that ``import core`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_STAGES = {
    "zoo": "core.zoo",
    "collect": "core.hub",
    "tokenize": "core.tokenize",
    "train": "core.train",
    "embed": "core.embed",
    "evaluate": "core.evaluate",
    "sample": "core.sample",
    "pipeline": "core.pipeline",
    "demo": "core.demo",
}

__all__ = list(_STAGES)


def __getattr__(name: str) -> Any:
    if name in _STAGES:
        return getattr(importlib.import_module(_STAGES[name]), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
