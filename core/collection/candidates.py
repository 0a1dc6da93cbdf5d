"""What a model source yields and how sources are registered: ``Query`` (what to look
for), ``Candidate`` (one model found), the ``Source`` base class and ``register_source``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atlas import Atlas
from core.collection.config import CollectConfig
from core.config import to_dict
from core.errors import RejectedModel


@dataclass
class Query:
    """What to collect: Hub-style filters (also applied to local cards), order and count."""

    tags: tuple[str, ...] = ()
    pipeline_tag: str | None = None
    library: str | None = None
    sort: str = "downloads"
    limit: int | None = None


@dataclass
class Candidate:
    """One model to check: where it comes from, and what the listing already told us."""

    id: str
    revision: str | None
    path: Path | None = None
    tags: list[str] | None = None
    pipeline_tag: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    remote_files: list[str] | None = None
    remote_params: int | None = None
    error: RejectedModel | None = None  # found while listing (a hostile card): recorded as is


class Source(ABC):
    """A place candidates come from."""

    kind: str = ""

    def __init__(self, spec: str, query: Query, cfg: CollectConfig, endpoint: str | None = None):
        self.spec, self.query, self.cfg, self.endpoint = spec, query, cfg, endpoint

    @abstractmethod
    def candidates(self) -> Iterator[Candidate]:
        """Candidates in collection order (lazily: the Hub is paged)."""

    @abstractmethod
    def fetch(self, cand: Candidate, atlas: Atlas) -> Path:
        """A local folder with the candidate's files."""

    def describe(self) -> dict[str, Any]:
        """What atlas.json records about this source."""
        q = {k: v for k, v in to_dict(self.query).items() if v not in (None, (), [])}
        return {"kind": self.kind, "spec": self.spec, "query": q}


SOURCES: dict[str, type[Source]] = {}


def register_source(name: str) -> Callable[[type[Source]], type[Source]]:
    """Class decorator adding a ``Source`` to ``SOURCES``."""

    def deco(cls: type[Source]) -> type[Source]:
        cls.kind = name
        SOURCES[name] = cls
        return cls

    return deco
