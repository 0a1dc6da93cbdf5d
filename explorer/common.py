"""Shared UI pieces of the explorer: the atlas picker and cached wrappers around core readers.

Cached functions take the atlas root as a string plus a ``stamp`` (the modification time of
the files they read), so a re-run of a pipeline stage refreshes the app without a restart.
"""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from typing import Any

import streamlit as st

from core.atlas import Atlas, AtlasError
from core.explore import MapTable, layer_rows_by_model, map_table

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ATLAS = os.environ.get("WEIGHTATLAS_ATLAS") or str(ROOT / "assets" / "demo")


@st.cache_resource(show_spinner=False)
def warm_imports() -> threading.Thread:
    """Import the torch-backed core modules in a background thread, once per server.

    The map needs only numpy and plotly; torch (about 3 s to import) is needed from the first
    neighbour query on, so it loads while the user looks at the map. pandas and PIL are
    imported here first, in the script's thread: plotly looks them up in ``sys.modules``
    while it builds a figure, and a module half-imported by the background thread there
    broke the page ("partially initialized module 'pandas'"). Code that needs torch calls
    :func:`wait_for_imports` first, so no two threads import the same modules at once.
    """
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401

    thread = threading.Thread(target=importlib.import_module, args=("core.embed",), daemon=True)
    thread.start()
    return thread


def wait_for_imports() -> None:
    """Block until the background import of the torch-backed modules has finished."""
    warm_imports().join()


def _take_atlas_input() -> None:
    st.session_state.atlas_path = str(st.session_state.atlas_input).strip()


def atlas_picker_ui() -> str:
    """Sidebar text field for the atlas directory; returns the chosen path (the demo by default).

    The chosen path lives in ``st.session_state.atlas_path``, apart from the widget's own
    state, so it survives page switches.
    """
    if "atlas_path" not in st.session_state:
        st.session_state.atlas_path = DEFAULT_ATLAS
    with st.sidebar:
        st.markdown("### :material/folder_open: Atlas")
        st.text_input(
            "Atlas directory",
            value=st.session_state.atlas_path,
            key="atlas_input",
            on_change=_take_atlas_input,
            help="Any directory written by the pipeline (`weightatlas collect/.../embed`).",
        )
    return str(st.session_state.atlas_path).strip()


def atlas_status(path: str) -> str | None:
    """None if ``path`` is an atlas directory, else a one-line reason."""
    if not path:
        return "no atlas directory given"
    try:
        Atlas.open(Path(path).expanduser())
    except (AtlasError, OSError) as e:
        return str(e)
    return None


def current_atlas() -> Path:
    """The atlas chosen in the sidebar (already checked by app.py)."""
    return Path(str(st.session_state.get("atlas_path") or DEFAULT_ATLAS)).expanduser().resolve()


def stamp(*paths: Path) -> float:
    """Sum of modification times of ``paths`` (0 for missing ones): a cache key for file contents."""
    return float(sum(p.stat().st_mtime for p in paths if p.exists()))


@st.cache_resource(show_spinner=False, max_entries=8)
def cached_map_table(root: str, stamp_: float) -> MapTable:
    """The atlas' map table (read once per atlas version, shared read-only, never copied)."""
    return map_table(root)


def load_map_table(root: Path) -> MapTable:
    """Cached map table of ``root``; raises AtlasError with the command that builds the maps."""
    emb = Atlas(root).embeddings_dir
    return cached_map_table(
        str(root), stamp(emb / "models.jsonl", emb / "maps.json", Atlas(root).manifest_path)
    )


@st.cache_resource(show_spinner=False, max_entries=8)
def cached_manifest(root: str, stamp_: float) -> dict[str, dict[str, Any]]:
    """Manifest rows by id (shared read-only)."""
    return {r["id"]: r for r in Atlas(Path(root)).manifest()}


@st.cache_resource(show_spinner=False, max_entries=8)
def cached_layer_rows(root: str, stamp_: float) -> dict[str, list[dict[str, Any]]]:
    """Per-layer embedding rows of every model, by id (shared read-only)."""
    return layer_rows_by_model(root)


def user_error(e: BaseException) -> None:
    """Show an expected error as one clear line (never a traceback)."""
    st.error(f"{type(e).__name__}: {e}" if not str(e) else str(e), icon=":material/error:")


MARKDOWN_SPECIAL = set("\\`*_{}[]()#+-.!|<>~$:")


def escape_md(text: Any) -> str:
    """``text`` with every markdown-special character backslash-escaped (shown as typed).

    For untrusted strings (model ids, licenses, family names) inside ``st.markdown``: an
    image link in an id then shows as text and loads nothing.
    """
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in str(text))


def fmt(value: Any) -> str:
    """Short display of a metadata value."""
    if isinstance(value, float):
        return "–" if value != value else f"{value:.4g}"
    return str(value)
