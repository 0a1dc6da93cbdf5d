"""Weight Atlas: weight-space learning on heterogeneous models.

The pipeline, one subpackage per concept (``docs/architecture.md`` has the map):

    zoos -> collection -> tokens -> backbone -> embeddings -> generation ; experiments

The stage functions are re-exported here under their stage names, and no module of ``core`` has
one of these names, so ``core.tokens`` is the function whatever was imported before:

    zoo, collect, tokenize, train, embed, evaluate, sample, pipeline, demo, lineage

They are imported on first use so that ``import core`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# stage name -> the module that defines it
STAGES: dict[str, str] = {
    "zoo": "core.zoos.zoo",
    "collect": "core.collection.collect",
    "tokenize": "core.tokens.tokenize",
    "train": "core.backbone.train",
    "embed": "core.embeddings.embed",
    "evaluate": "core.embeddings.probes",
    "sample": "core.generation.sample",
    "pipeline": "core.experiments.pipeline",
    "demo": "core.experiments.demo",
    "lineage": "core.trees.lineage",
}

__all__ = list(STAGES)


def __getattr__(name: str) -> Any:
    if name in STAGES:
        return getattr(importlib.import_module(STAGES[name]), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
