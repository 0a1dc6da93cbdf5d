"""Sources on this machine: ``hf-cache`` (a Hugging Face cache, ``models--*`` repos) and
``dir`` (a folder of model folders); cards and configs read with bounded readers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.atlas import Atlas
from core.collection.candidates import Candidate, Query, Source, register_source
from core.collection.config import PICKLE_SUFFIXES
from core.collection.facts import card_tags
from core.errors import RejectedModel, WeightAtlasError
from core.models.formats import read_card, read_model_config
from core.models.registry import library_of
from core.safety import (
    check_filename,
    read_regular,
)


def _matches(query: Query, card: dict[str, Any], config_library: str | None = None) -> bool:
    tags = set(card_tags(card))
    if config_library:
        tags.add(config_library)
    if not set(query.tags) <= tags:
        return False
    if query.pipeline_tag and card.get("pipeline_tag") != query.pipeline_tag:
        return False
    return not (query.library and query.library not in tags)


def _local_candidate(
    model_id: str, revision: str | None, path: Path, query: Query
) -> Candidate | None:
    try:
        card = read_card(path)
    except RejectedModel as e:  # a hostile card: recorded with its reason, never parsed
        return Candidate(model_id, revision, path=path, error=e)
    library = None
    if query.library and not isinstance(card.get("library_name"), str):
        try:  # a card without library_name: the config says which library it is
            library = library_of(read_model_config(path))
        except RejectedModel:
            library = None
    if (query.tags or query.pipeline_tag or query.library) and not _matches(query, card, library):
        return None
    return Candidate(model_id, revision, path=path, card=card)


class _LocalSource(Source):
    """A source on this machine: its candidates are folders already in place, taken as they
    are (``fetch`` returns the folder)."""

    def folders(self) -> Iterator[tuple[str, str, Path]]:
        """``(model id, revision, folder)`` of every model folder, in order."""
        raise NotImplementedError

    def candidates(self) -> Iterator[Candidate]:
        n = 0
        for model_id, rev, path in self.folders():
            if self.query.limit is not None and n >= self.query.limit:
                return
            cand = _local_candidate(model_id, rev, path, self.query)
            if cand is not None:
                n += 1
                yield cand

    def fetch(self, cand: Candidate, atlas: Atlas) -> Path:
        assert cand.path is not None
        return cand.path


@register_source("hf-cache")
class CacheSource(_LocalSource):
    """A Hugging Face cache: ``models--org--name/snapshots/REV`` (``refs/main`` picks REV)."""

    def folders(self) -> Iterator[tuple[str, str, Path]]:
        """Every model repo of the cache (``cache_repos``)."""
        return cache_repos(Path(self.spec))


def cache_repos(root: Path) -> Iterator[tuple[str, str, Path]]:
    """``(id, revision, snapshot dir)`` for every model repo of an HF cache, sorted by id."""
    for d in sorted(root.iterdir()):
        if not d.name.startswith("models--") or not d.is_dir():
            continue
        parts = d.name[len("models--") :].split("--", 1)
        model_id = "/".join(parts)
        snaps = d / "snapshots"
        rev = None
        ref = d / "refs" / "main"
        if ref.is_file():
            try:  # a plain snapshot name, never a path (bounded read, regular file only)
                rev = check_filename(read_regular(ref, 4096).decode("ascii").strip())
            except (RejectedModel, WeightAtlasError, UnicodeDecodeError):
                rev = None
        if not rev or not (snaps / rev).is_dir():
            dirs = (
                sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime) if snaps.is_dir() else []
            )
            if not dirs:
                continue
            rev = dirs[-1].name
        yield model_id, rev, snaps / rev


def _looks_like_model(path: Path) -> bool:
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return "config.json" in names or any(
        n.endswith((".safetensors", *PICKLE_SUFFIXES)) for n in names
    )


@register_source("dir")
class DirSource(_LocalSource):
    """A plain directory of model folders (``NAME/`` or ``ORG/NAME/``), or one model folder."""

    def folders(self) -> Iterator[tuple[str, str, Path]]:
        """The model folders: the folder itself, else its ``NAME/`` and ``ORG/NAME/`` ones."""
        root = Path(self.spec)
        if _looks_like_model(root):
            folders = [root]
        else:
            folders = []
            for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if _looks_like_model(d):
                    folders.append(d)
                else:
                    folders += sorted(p for p in d.iterdir() if p.is_dir() and _looks_like_model(p))
        for d in folders:
            yield (d.name if d == root else d.relative_to(root).as_posix()), "local", d
