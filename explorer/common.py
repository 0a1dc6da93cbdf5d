"""Shared UI pieces of the explorer: the atlas picker and cached wrappers around core readers.

Cached functions take the atlas root as a string plus a ``stamp`` (the modification time of
the files they read), so a re-run of a pipeline stage refreshes the app without a restart.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import os
import threading
from pathlib import Path
from typing import Any

import streamlit as st

from core.atlas import Atlas, AtlasError, KnownAtlases, stamp
from core.catalog import MapTable, layer_rows_by_model, map_table

ROOT = Path(__file__).resolve().parent.parent
DEMO_ATLAS = ROOT / "assets" / "demo"
# shown as typed; a relative path is looked up in the working directory, then the repository
DEFAULT_ATLAS = os.environ.get("WEIGHTATLAS_ATLAS") or "assets/demo"
README_SECTION = "README.md, section “From your Hugging Face cache to a map”"


@st.cache_resource(show_spinner=False)
def warm_imports() -> threading.Thread:
    """Import the torch-backed core modules in a background thread, once per server.

    The map and the model panel (neighbours) need only numpy and plotly; torch (about 3 s to
    import) is needed by the Layers and Generate pages and to embed a model folder, so it
    loads while the user looks at the map, :data:`WARM_IMPORT_DELAY_S` after the server's
    first page. The thread imports nothing before pandas and PIL have been imported in a
    script's thread (:func:`preload_in_script`): plotly looks them up in ``sys.modules``
    while it builds a figure, and a module half-imported by the background thread there
    broke the page ("partially initialized module 'pandas'"). Code that needs torch calls
    :func:`wait_for_imports` first, so no two threads import the same modules at once.
    """
    thread = threading.Thread(
        target=_import_and_freeze,
        args=("core.embeddings.embed", WARM_IMPORT_DELAY_S),
        daemon=True,
    )
    thread.start()
    return thread


# app.py starts warm_imports (through after_run) after a page has been sent; the browser then
# downloads and runs plotly.js (about 4.6 MB) from this server and draws the map, which a
# torch import (2-3 s of CPU) slowed down on a 2-core machine: the 3 s this waited before was
# not enough under load (issue 27). Nothing on the Atlas page needs torch until a model folder
# is embedded or the map quality computed (neighbours are read with numpy,
# core.embeddings.reader); a page that needs torch earlier waits for it (wait_for_imports)
# without the delay
WARM_IMPORT_DELAY_S = 20.0
_NOW = threading.Event()
_PRELOADED = threading.Event()  # pandas and PIL imported by a script's thread


def _import_and_freeze(module: str, delay: float = 0.0) -> None:
    _NOW.wait(delay)
    _PRELOADED.wait()
    importlib.import_module(module)
    gc.freeze()  # see freeze_loaded


def preload_in_script() -> None:
    """Import pandas and PIL in this (a script's) thread, then let the background import go."""
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401

    _PRELOADED.set()


def freeze_loaded() -> None:
    """Exclude everything loaded so far (libraries, the atlas tables) from garbage collection.

    These objects live as long as the server. Left in the collector's oldest generation
    (about 370,000 objects with torch, plotly and a 20k-model table), every full collection
    walks them: 0.2-0.6 s, and Streamlit runs one after each script run unless
    ``runner.postScriptGC`` is off (``.streamlit/config.toml`` turns it off). Frozen objects
    are still freed by reference counting; only cycles among them would stay (bounded: one
    freeze per atlas version).
    """
    gc.freeze()


_RUNS_SEEN = itertools.count()  # full script runs this server has finished (after_run)


def after_run() -> None:
    """app.py's last call, after the page has been sent: starts :func:`warm_imports` (once
    per server; torch :data:`WARM_IMPORT_DELAY_S` later) and, from the server's second full
    run on, imports pandas and PIL (:func:`preload_in_script`), which the background import
    waits for.

    The server's first run leaves pandas out: on a cold load the browser is still fetching
    plotly.js (4.7 MB, served by this process) and drawing the first map then, and pandas'
    import (0.3-0.8 s of CPU, holding the interpreter) slowed both on a loaded 2-core
    machine (issue 27). A page that needs torch first calls :func:`wait_for_imports`, which
    imports everything at once; a model panel opened before any second run imports pandas
    for its tables there (a few tenths of a second, once per server).
    """
    warm_imports()
    if next(_RUNS_SEEN) > 0:
        preload_in_script()


def wait_for_imports() -> None:
    """Block until the background import of the torch-backed modules has finished (started
    now if it was waiting out its delay)."""
    preload_in_script()
    thread = warm_imports()
    _NOW.set()
    thread.join()


def resolve_atlas(text: str) -> Path:
    """The directory a typed atlas path means, whichever folder the app was started from.

    ``~`` is expanded and an absolute path taken as it is. A relative one is looked up, in
    order: in the app's working directory; among the atlases this user's pipeline stages ran
    on (``core.atlas.KnownAtlases``, most recent first: ``weightatlas collect my-atlas`` run in
    any folder makes ``my-atlas`` work here); in the repository (``assets/demo``). Not found:
    the working directory's path (the page then says it is not an atlas).
    """
    p = Path(text.strip()).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    known = KnownAtlases().find(str(p))
    if known:
        return known[0]
    if (ROOT / p).exists():
        return (ROOT / p).resolve()
    return p.resolve()


def display_path(path: str | Path) -> str:
    """A path as the app shows it: relative to the repository, or ``~/...`` in the home folder."""
    p = Path(path).expanduser().resolve()
    if p.is_relative_to(ROOT):
        return str(p.relative_to(ROOT)) or "."
    home = Path.home().resolve()
    if p.is_relative_to(home):
        return str(Path("~") / p.relative_to(home))
    return str(p)


def _input_key() -> str:
    """Key of the sidebar's atlas field; a new key (a fresh widget) after "Back to the demo"."""
    return f"atlas_input_{st.session_state.get('atlas_input_version', 0)}"


def _take_atlas_input(key: str) -> None:
    st.session_state.atlas_path = str(st.session_state[key]).strip()


def back_to_demo() -> None:
    """Button callback: open the default (demo) atlas again (the field shows it too)."""
    st.session_state.atlas_path = DEFAULT_ATLAS
    st.session_state.atlas_input_version = st.session_state.get("atlas_input_version", 0) + 1


def help_panel() -> None:
    """What an atlas is and how to make one from your own models (sidebar).

    The commands are inline code, not a fenced block: a block loads the browser's syntax
    highlighter, about 1 s of JavaScript before the first map on a cold load (issue 27).
    """
    with st.expander("What is an atlas?", icon=":material/help:"):
        st.markdown(
            """
An **atlas** is one directory holding a collection of trained models and what Weight Atlas
learned from their weights: the manifest of models, their weight tokens, one backbone
(an autoencoder over weights) and every model's embedding with 2-D maps. The app only reads it.

**Your own models** (safetensors weights only; transformers or timm models, vision and text,
and the zoo's models; no pickles, no remote code, at most 350 M parameters):

1. `weightatlas collect ATLAS --source hf-cache`
2. `weightatlas tokenize ATLAS`
3. `weightatlas train ATLAS`
4. `weightatlas embed ATLAS`

then type `ATLAS` above (from any folder: the atlases your commands ran on are remembered).
Details: """
            + README_SECTION
            + " and docs/collect.md."
        )


def atlas_picker_ui() -> str:
    """Sidebar text field for the atlas directory; returns the chosen path (the demo by default).

    The chosen path lives in ``st.session_state.atlas_path``, apart from the widget's own
    state, so it survives page switches.
    """
    if "atlas_path" not in st.session_state:
        st.session_state.atlas_path = DEFAULT_ATLAS
    with st.sidebar:
        st.markdown("### :material/folder_open: Atlas")
        key = _input_key()
        st.text_input(
            "Atlas directory",
            value=st.session_state.atlas_path,
            key=key,
            on_change=_take_atlas_input,
            args=(key,),
            help="Any directory written by the pipeline (`weightatlas collect` ... `embed`). "
            "A relative name is looked up in the folder the app was started from, then among "
            "the atlases your `weightatlas` commands ran on (from any folder), then in the "
            "repository.",
        )
        typed = str(st.session_state.atlas_path).strip()
        if typed and not Path(typed).expanduser().is_absolute():
            st.caption(f"Opens `{display_path(resolve_atlas(typed))}`")
        if resolve_atlas(st.session_state.atlas_path) != resolve_atlas(DEFAULT_ATLAS):
            st.button(
                "Back to the demo atlas"
                if not os.environ.get("WEIGHTATLAS_ATLAS")
                else "Back to the default atlas",
                icon=":material/undo:",
                key="atlas_back",
                on_click=back_to_demo,
            )
        help_panel()
    return str(st.session_state.atlas_path).strip()


def atlas_status(path: str) -> str | None:
    """None if ``path`` is an atlas directory, else a one-line reason."""
    if not path.strip():
        return "no atlas directory given"
    try:
        Atlas.open(resolve_atlas(path))
    except (AtlasError, OSError) as e:
        return str(e) or type(e).__name__
    return None


def current_atlas() -> Path:
    """The atlas chosen in the sidebar (already checked by app.py)."""
    return resolve_atlas(str(st.session_state.get("atlas_path") or DEFAULT_ATLAS))


@st.cache_resource(show_spinner=False, max_entries=8)
def cached_map_table(root: str, stamp_: float) -> MapTable:
    """The atlas' map table (read once per atlas version, shared read-only, never copied)."""
    return map_table(root)


def load_map_table(root: Path) -> MapTable:
    """Cached map table of ``root``; raises AtlasError with the command that builds the maps."""
    a = Atlas(root)
    stamp_ = a.embeddings.stamp() + stamp(a.manifest_path)
    table = cached_map_table(str(root), stamp_)
    _freeze_once(str(root), stamp_)
    return table


@st.cache_resource(show_spinner=False, max_entries=8)
def _freeze_once(root: str, stamp_: float) -> bool:
    """:func:`freeze_loaded` once per atlas version, after its map table is loaded."""
    freeze_loaded()
    return True


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


class PageBar:
    """A tqdm-like progress bar drawn on the page (``st.progress``), for core functions that
    take a ``progress`` bar (``set_description``, ``reset(total=...)``, ``update(n)``), such as
    :func:`core.embeddings.table.embed_model_dir`. Redrawn at most once per percent."""

    def __init__(self, text: str = "") -> None:
        self.text, self.total, self.n, self._shown = text, 0, 0, -1
        self._bar = st.progress(0.0, text=escape_md(text))

    def set_description(self, text: str) -> None:
        self.text = text
        self._draw(force=True)

    def reset(self, total: int | None = None) -> None:
        self.total, self.n = int(total or 0), 0
        self._draw(force=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def empty(self) -> None:
        """Take the bar off the page."""
        self._bar.empty()

    def _draw(self, force: bool = False) -> None:
        frac = min(self.n / self.total, 1.0) if self.total else 0.0
        if not force and int(100 * frac) == self._shown:
            return
        self._shown = int(100 * frac)
        count = f" ({self.n:,} of {self.total:,})" if self.total else ""
        self._bar.progress(frac, text=escape_md(self.text) + count)


def fmt(value: Any) -> str:
    """Short display of a metadata value."""
    if isinstance(value, float):
        return "–" if value != value else f"{value:.4g}"
    return str(value)
