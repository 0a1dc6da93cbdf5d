"""Sources of models: the Hub (own bounded HTTP client), a local HF cache, a plain folder.

Each source lists candidates and fetches one at a time into the atlas; ``make_source`` is the
factory over the registered kinds. The parts: ``candidates`` (``Query``, ``Candidate``, the
``Source`` base class and ``register_source``), ``local`` (``hf-cache``, ``dir``), ``hub`` (the
Hub's listing and fetch) over ``http`` (the bounded client and verified downloads). Every name
is importable from here.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants as hf_constants

from core.collection.candidates import SOURCES, Candidate, Query, Source, register_source
from core.collection.config import CollectConfig
from core.collection.http import Transient
from core.collection.hub import HubSource
from core.collection.local import CacheSource, DirSource, cache_repos
from core.errors import WeightAtlasError

__all__ = [
    "SOURCES",
    "CacheSource",
    "Candidate",
    "DirSource",
    "HubSource",
    "Query",
    "Source",
    "Transient",
    "cache_repos",
    "make_source",
    "register_source",
]


def make_source(spec: str, query: Query, cfg: CollectConfig, endpoint: str | None = None) -> Source:
    """``hub``; ``hf-cache``, this user's Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME``'s
    ``hub/``, as ``huggingface_hub`` resolves it); an HF cache folder (``models--*``, or a folder
    with ``hub/models--*``); or a plain dir of model folders."""
    if spec in SOURCES and spec not in ("hf-cache", "dir"):
        return SOURCES[spec](spec, query, cfg, endpoint)
    if spec == "hf-cache":
        spec = str(hf_constants.HF_HUB_CACHE)  # read now: tests and users may set it late
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise WeightAtlasError(f"--source {spec}: not 'hub' and not a directory")
    for candidate_root in (root, root / "hub"):
        if candidate_root.is_dir() and any(
            p.name.startswith("models--") for p in candidate_root.iterdir()
        ):
            return SOURCES["hf-cache"](str(candidate_root), query, cfg, endpoint)
    return SOURCES["dir"](str(root), query, cfg, endpoint)
