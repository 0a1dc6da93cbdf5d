"""Atlas page: the latent space of the collected models on the precomputed UMAP/PCA map.

Colour, filter and search the map; select points (click, or box / lasso from the chart's
toolbar) to see the model card data, a per-layer summary and the nearest neighbours by
embedding; embed a local model folder to see where it lands. Nothing here fits a map or embeds
the atlas on page load.

Speed on large atlases (issue 18; ``weightatlas bench app --n 20000``): the figure is built
once per (map, colour, filters, lineage, ringed search hits, placed model) and reused. A search
or a map selection reruns only :func:`details` (a fragment, rerun by key from the search box's
and the chart's callbacks): the chart is not serialised, sent or drawn again, and Streamlit does
not copy its selection (7,000+ points after a lasso on 20k) for the rerun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from streamlit.errors import StreamlitAPIException

from core.atlas import Atlas, AtlasError
from core.catalog import COLOUR_BY, MapTable
from core.errors import USER_ERRORS
from explorer.common import (
    PageBar,
    cached_layer_rows,
    current_atlas,
    escape_md,
    fmt,
    load_map_table,
    stamp,
    user_error,
    wait_for_imports,
)
from explorer.figures import MAP_HEIGHT, label, layer_bars, map_figure, selected_ids
from explorer.lineage import family_panel_ui

MAX_DETAIL_OPTIONS = 500
MAX_RINGED = 200


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_figure(
    root: str,
    stamp_: float,
    _table: MapTable,
    kind: str,
    colour: str,
    family: tuple[str, ...],
    task: tuple[str, ...],
    tag: tuple[str, ...],
    lineage: bool,
    ringed: tuple[str, ...],
    placed: tuple[str, float, float, bool] | None,
    recovered: bool = False,
):
    """The map figure for these choices, built once and shared (the same object each rerun)."""
    keep = _table.filter(list(family), list(task), list(tag), "")
    pts = {placed[0]: (placed[1], placed[2], placed[3])} if placed else {}
    return map_figure(
        _table,
        kind,
        colour,
        keep,
        lineage=lineage,
        highlight=ringed,
        placed=pts,
        height=MAP_HEIGHT,
        recovered=recovered,
    )


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_embeddings(root: str, stamp_: float, _table: MapTable):
    """The atlas' embeddings for neighbour queries (``core.embeddings.reader``: no torch), read
    once per atlas version: the model rows come from the map table, ``layers.jsonl`` is not
    read (the layer panel has its own cached reader)."""
    from core.embeddings.reader import load_embeddings

    models = None
    if _table.rows is not None:
        models = [{"id": m, "row": r} for m, r in zip(_table.ids, _table.rows, strict=True)]
    return load_embeddings(root, models=models, layers=False)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_neighbours(
    root: str, stamp_: float, _table: MapTable, model_id: str, k: int
) -> list[tuple[str, float]]:
    """k nearest collected models of ``model_id`` (core.embeddings.reader.neighbours_of)."""
    from core.embeddings.reader import neighbours_of

    return neighbours_of(cached_embeddings(root, stamp_, _table), model_id, k)


EMBEDDED_FOLDERS_KEPT = 16


def embed_folder(root: str, stamp_: float, folder: str, k: int) -> dict[str, Any]:
    """Embed a local model folder with the atlas backbone: map position, neighbours and its
    atlas distance (issue 16: a stranger is marked outside the atlas). A progress bar on the
    page follows the reading and the encoder's windows (issue 27: a bert-base model takes
    minutes on 2 cores); the result is kept in the session per (atlas version, folder version,
    k), the last :data:`EMBEDDED_FOLDERS_KEPT` of them (not in ``st.cache_data``, which would
    replay the bar)."""
    from core.embeddings.distances import atlas_distance, model_architecture, place_on_map
    from core.embeddings.table import embed_model_dir, neighbours

    memo = st.session_state.setdefault("embedded_folders", {})
    key = (root, stamp_, folder, k)
    if key not in memo:
        bar = PageBar(f"Embedding {folder} with the atlas backbone")
        try:
            v = embed_model_dir(folder, root, progress=bar)
        finally:
            bar.empty()
        memo[key] = {
            "map": place_on_map(root, v),
            "neighbours": neighbours(root, v, k),
            "atlas_distance": atlas_distance(root, v, architecture=model_architecture(folder)),
        }
        while len(memo) > EMBEDDED_FOLDERS_KEPT:
            memo.pop(next(iter(memo)))
    return memo[key]


MAP_QUALITY_LIVE_MAX = 5000  # above this many models the page reads evaluate's result only


@st.cache_data(show_spinner=False, max_entries=8)
def cached_stored_map_quality(root: str, stamp_: float) -> dict[str, Any] | None:
    """``weightatlas evaluate``'s map quality while it matches the embeddings (no torch)."""
    from core.embeddings.map_quality import stored_map_quality

    return stored_map_quality(root)


@st.cache_data(show_spinner=False, max_entries=8)
def cached_map_quality(root: str, stamp_: float) -> dict[str, Any]:
    """The map quality computed here (core.embeddings.map_quality.map_quality)."""
    from core.embeddings.map_quality import map_quality

    return map_quality(root)


def map_quality_table(mq: dict[str, Any]) -> str:
    """The map-quality result as the page's markdown table
    (``core.embeddings.map_quality.map_quality_table``): numbers to three decimals and
    right-aligned, an empty cell where a space has no figure, text escaped.

    Markdown, not ``st.dataframe``: a data frame imports pandas on the server (0.3-0.8 s of
    CPU) and the data-grid and Arrow scripts in the browser (1.3 MB) while the first map is
    being drawn (issue 27); the model panel's tables load them later.
    """
    from core.embeddings.map_quality import map_quality_table as table

    return table(mq, reference_head="without the weights", blank="", align=True, escape=escape_md)


def map_quality_ui(root: Path, stamp_: float) -> None:
    """How well the map groups models: leave-one-run-out k-NN figures beside s(W) and the
    predictors that ignore the weights (issue 25). Shown from ``weightatlas evaluate``'s
    result; computed here on request when the atlas has none for its current embeddings."""
    with st.expander("Map quality: do neighbours share family, task and accuracy?",
                     icon=":material/insights:", expanded=True):  # fmt: skip
        try:
            mq = cached_stored_map_quality(str(root), stamp_)
            if mq is None:
                n = len(load_map_table(root))
                if n > MAP_QUALITY_LIVE_MAX:
                    st.info(
                        f"{n:,} models: run `weightatlas evaluate ATLAS` to compute the map "
                        "quality; the page then shows it."
                    )
                    return
                st.caption(
                    "`weightatlas evaluate` has not written the map quality of these "
                    "embeddings; compute it here (a few seconds)."
                )
                if st.button("Compute the map quality", key="map_quality_compute"):
                    st.session_state.map_quality_for = str(root)
                if st.session_state.get("map_quality_for") != str(root):
                    return
                wait_for_imports()
                with st.spinner("Leave-one-run-out nearest neighbours…"):
                    mq = cached_map_quality(str(root), stamp_)
        except (*USER_ERRORS, OSError, ValueError) as e:
            user_error(e)
            return
        st.markdown(map_quality_table(mq))
        st.caption(
            f"Leave-one-run-out: each model's {mq['k']} nearest models of other training runs "
            f"({mq['n_models']:,} models, {mq['n_runs']:,} runs). Embedding: "
            f"{mq.get('pooling', 'mean')} pooling, {mq['metric']} distance; maps: distance on "
            "the 2-D coordinates; s(W): the weights' plain statistics (mean, std, quantiles "
            "per layer). Task ceiling: the share of models whose family and task another run "
            "has (no vote can do better). Within family and task: R² against each pair's own "
            "mean, so grouping tasks earns nothing there. Empty: not available for this atlas "
            "(s(W) needs every model's tokens or `weightatlas embed` of this version)."
        )


DETAILS = "atlas_details"  # key of the fragment below the map


def _rerun_details() -> None:
    """From a widget callback: rerun only the details fragment (a full run if it is unknown).

    Without this a search or a selection reruns the whole page, and Streamlit then serialises
    the unchanged map figure again (about 1 MB of JSON at 20k points) and deep-copies the kept
    selection (thousands of points after a lasso) before the panel changes.
    """
    try:
        st.rerun(DETAILS)
    except StreamlitAPIException:  # not registered yet: the default full rerun follows
        pass


def _search_changed() -> None:
    """Search callback: only the details change, unless hits are ringed on the map."""
    if not st.session_state.get("map_ring"):
        _rerun_details()


def _selection_changed() -> None:
    """Map selection callback: keep the selected ids (read once here), then the details."""
    st.session_state.map_selected = selected_ids(st.session_state.get("atlas_map"))
    _rerun_details()


def map_controls_ui(table: MapTable) -> dict[str, Any]:
    """Map kind, colour, filters and search; returns the choices."""
    kinds = [k for k in ("umap", "pca") if k in table.coords] + [
        k for k in table.coords if k not in ("umap", "pca")
    ]
    c1, c2, c3, c4 = st.columns([1, 1.2, 2, 1.4], vertical_alignment="bottom")
    kind = c1.selectbox("Map", kinds, format_func=str.upper, key="map_kind")
    colour = c2.selectbox(
        "Colour by",
        COLOUR_BY + (("tree",) if "tree" in table.columns else ()),
        key="map_colour",
        format_func=label,
        help="test accuracy: the accuracy on the model's test data as its card reports it; "
        "backbone split: whether the backbone trained on the model (train) or held it out "
        "(val, test).",
    )
    search = c3.text_input(
        "Search model id",
        key="map_search",
        placeholder="substring of an id",
        on_change=_search_changed,
    )
    with c4.popover("Filter and options", icon=":material/filter_alt:", width="stretch"):
        family = st.multiselect("Family", table.values("family"), key="map_family")
        task = st.multiselect("Task", table.values("task"), key="map_task")
        tag = st.multiselect("Tag", table.values("tag"), key="map_tag")
        lineage = st.toggle(
            "Lineage edges (base_model)",
            key="map_lineage",
            disabled=not table.lineage_edges(),
            help="Hub lineage from model cards, where the manifest knows it.",
        )
        recovered = st.toggle(
            "Lineage edges from the weights",
            key="map_lineage_recovered",
            disabled=not table.lineage,
            help="Model trees recovered from the weights (`weightatlas lineage`); red edges: "
            "the child declares no base model, or one the weights contradict. Colour by "
            "'model tree' to see the trees.",
        )
        ring = st.toggle(
            "Ring search hits on the map",
            value=False,
            key="map_ring",
            help="Redraws the map on every search (slower, and it clears a lasso selection); "
            "without it the hits open in the panel below the map.",
        )
    return dict(
        kind=kind,
        colour=colour,
        search=search.strip(),
        family=tuple(family),
        task=tuple(task),
        tag=tuple(tag),
        lineage=bool(lineage),
        recovered=bool(recovered),
        ring=bool(ring),
    )


def search_hits(table: MapTable, search: str) -> list[str]:
    """Ids containing ``search`` (case-insensitive), an exact id first."""
    if not search:
        return []
    hits = [table.ids[i] for i in np.flatnonzero(table.filter(search=search))]
    exact = [m for m in hits if m.lower() == search.lower()]
    return exact + [m for m in hits if m not in exact]


def embed_folder_ui() -> tuple[str, int] | None:
    """Folder input for "Embed a model"; returns (folder, k) when the button is pressed."""
    with st.expander("Embed a model of your own", icon=":material/add_location_alt:"):
        folder = st.text_input(
            "Local model folder (Hub format: config.json + *.safetensors)", key="embed_folder"
        )
        k = st.slider("Neighbours", 1, 20, 5, key="embed_k")
        if st.button("Embed and place on the map", key="embed_go", disabled=not folder.strip()):
            return folder.strip(), int(k)
    return None


def model_panel_ui(root: Path, table: MapTable, stamp_: float, model_id: str) -> None:
    """Model card data, nearest neighbours and per-layer summary of one model.

    Every string from the manifest is untrusted (a model id or license may hold markdown):
    it is shown in tables or escaped, never rendered as markdown.
    """
    i = table.index().get(model_id)
    row = table.records[i] if i is not None and table.records else {}
    st.subheader(escape_md(model_id), anchor=False)  # an id may hold markdown (issue 12)
    card, nn = st.columns([0.9, 1.8])
    with card:
        _card_ui(table, row, i)
    with nn:
        _neighbours_ui(root, table, stamp_, model_id)
    family_panel_ui(table, model_id)
    _layers_ui(root, model_id)


def _card_ui(table: MapTable, row: dict[str, Any], i: int | None) -> None:
    """The model's card fields (map columns, source, license, tags) and its labels/metrics."""
    st.markdown("**Model card**")
    meta = {label(c): fmt(table.columns[c][i]) for c in table.columns} if i is not None else {}
    for key in ("source", "license", "pipeline_tag", "base_model", "revision"):
        if row.get(key):
            meta[key] = fmt(row[key])
    if i is not None and table.tags[i]:
        meta["tags"] = ", ".join(table.tags[i])
    st.dataframe(
        [{"field": k, "value": str(v)} for k, v in meta.items()],
        hide_index=True,
        width="stretch",
        column_config={"field": st.column_config.TextColumn(width="small")},
    )
    extra = {**(row.get("labels") or {}), **(row.get("metrics") or {})}
    if extra:
        with st.popover("All labels and metrics"):
            st.json(extra)


def _neighbours_ui(root: Path, table: MapTable, stamp_: float, model_id: str) -> None:
    """The model's ``k`` nearest neighbours by embedding distance, with family, task, accuracy."""
    st.markdown(
        f"**Nearest neighbours** ({cached_embeddings(str(root), stamp_, table).metric} distance "
        "of embeddings)"
    )
    k = st.slider("k", 1, 25, 8, key="nn_k")
    try:
        pairs = cached_neighbours(str(root), stamp_, table, model_id, int(k))
    except USER_ERRORS as e:
        user_error(e)
        pairs = []
    idx = table.index()
    if pairs:
        # one shared organisation is written once, in the header, so the names fit
        orgs = {m.split("/", 1)[0] for m, _ in pairs if "/" in m}
        org = next(iter(orgs)) if len(orgs) == 1 and all("/" in m for m, _ in pairs) else ""
        st.dataframe(
            [
                {
                    "id": m.split("/", 1)[1] if org else m,
                    "distance": round(d, 4),
                    "family": table.columns["family"][idx[m]] if m in idx else "",
                    "task": table.columns["task"][idx[m]] if m in idx else "",
                    "test accuracy": table.columns["accuracy"][idx[m]] if m in idx else None,
                }
                for m, d in pairs
            ],
            hide_index=True,
            width="stretch",
            column_config={  # fits a 1280-pixel-wide window without a scroll bar
                "id": st.column_config.TextColumn(f"{org}/…" if org else "id", width="medium"),
                "distance": st.column_config.NumberColumn(width="small", format="%.3f"),
                "family": st.column_config.TextColumn(width="small"),
                "task": st.column_config.TextColumn(width="small"),
                "test accuracy": st.column_config.NumberColumn(
                    "test acc.", width="small", format="%.3f"
                ),
            },
        )


def _layers_ui(root: Path, model_id: str) -> None:
    """Tokens per layer of the model (its per-layer embeddings), log scale."""
    layers_path = Atlas.open(root).embeddings.layers_path
    rows = cached_layer_rows(str(root), stamp(layers_path)).get(model_id, [])
    with st.expander(f"Layers ({len(rows)}): tokens per layer", expanded=bool(rows)):
        if rows:
            st.plotly_chart(
                layer_bars(
                    [str(r.get("name", r.get("layer"))) for r in rows],
                    [float(r.get("n_tokens", 0)) for r in rows],
                    "weight tokens (log scale)",
                    log=True,
                ),
                key=f"layers_{model_id}",
                width="stretch",
            )
        else:
            st.caption("No per-layer embeddings for this model in the atlas.")


def detail_choice(chosen: list[str]) -> str:
    """The "Details for" selectbox; a new selection or search leads with its first model.

    A kept choice from an earlier selection would otherwise hide the model just searched.
    """
    options = chosen[:MAX_DETAIL_OPTIONS]
    signature = hash(tuple(options))
    if st.session_state.get("detail_for") != signature:
        st.session_state.detail_for = signature
        st.session_state.detail_id = options[0]
    return st.selectbox("Details for", options, key="detail_id")


def _pin(placed: dict[str, Any] | None, kind: str) -> tuple[str, float, float, bool] | None:
    """The marker of an embedded folder on the ``kind`` map: name, x, y, outside the atlas."""
    if not (placed and kind in placed["map"]):
        return None
    outside = bool((placed.get("atlas_distance") or {}).get("outside"))
    return (
        placed["name"],
        float(placed["map"][kind][0]),
        float(placed["map"][kind][1]),
        outside,
    )


def _embed_folder_request(root: Path, stamp_: float) -> None:
    """Embed the folder the user asked for (``embed_folder_ui``) and rerun with it placed."""
    request = embed_folder_ui()
    if request is None:
        return
    folder, k = request
    wait_for_imports()
    try:
        p = Path(folder).expanduser()
        files = [p / "config.json", *sorted(p.glob("*.safetensors"))] if p.is_dir() else []
        result = embed_folder(str(root), stamp_ + stamp(*files), str(p.resolve()), k)
        from core.collection.specs import repo_id_of  # torch: after the first paint

        # a Hugging Face cache snapshot is named by its repo id, not its commit hash
        name = repo_id_of(p.resolve()) or p.name or str(p)
        st.session_state.placed = {"name": name, **result}
        st.rerun()
    except (*USER_ERRORS, OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
        st.session_state.pop("placed", None)
        user_error(e)


def _placed_ui(placed: dict[str, Any], kind: str) -> None:
    """Where an embedded folder landed, its nearest models and its atlas distance (issue 16)."""
    st.success(
        f"**{escape_md(placed['name'])}** lands at {kind.upper()} "
        f"({placed['map'][kind][0]:.2f}, {placed['map'][kind][1]:.2f}); nearest: "
        + ", ".join(f"{escape_md(m)} ({d:.3f})" for m, d in placed["neighbours"]),
        icon=":material/star:",
    )
    ad = placed.get("atlas_distance")
    if ad:  # issue 16: how far it is from everything collected
        st.text(
            f"Atlas distance {ad['distance']:.3f} ({ad['metric']}, mean over its {ad['k']} "
            f"nearest atlas models): percentile {ad['percentile']:.1f} of the atlas models' own"
        )
        if ad["outside"]:
            st.warning(ad["meaning"], icon=":material/explore_off:")
        if "architecture_in_atlas" in ad:  # a separate, true statement (issue 16)
            st.text(
                f"Architecture in atlas: {'yes' if ad['architecture_in_atlas'] else 'no'} "
                f"({ad['architecture_note']})"
            )
            if not ad["architecture_in_atlas"]:
                st.warning(escape_md(ad["architecture_note"]), icon=":material/explore_off:")


def page() -> None:
    """Render the Atlas page."""
    root = current_atlas()
    st.title(
        "Atlas",
        help="Each point is a trained model, placed by the embedding the backbone gives its "
        "weights: models near each other have similar weights.",
    )
    try:
        table = load_map_table(root)
    except (AtlasError, *USER_ERRORS) as e:
        user_error(e)
        st.stop()
    a = Atlas.open(root)
    stamp_ = a.embeddings.stamp() + stamp(a.manifest_path)
    choice = map_controls_ui(table)
    placed = st.session_state.get("placed")
    kind = choice["kind"]
    hits = search_hits(table, choice["search"]) if choice["ring"] else []
    pin = _pin(placed, kind)
    fig = cached_figure(
        str(root),
        stamp_,
        table,
        kind,
        choice["colour"],
        choice["family"],
        choice["task"],
        choice["tag"],
        choice["lineage"],
        tuple(hits[:MAX_RINGED]) if choice["ring"] else (),
        pin,
        choice["recovered"],
    )
    shown = int(table.filter(choice["family"], choice["task"], choice["tag"]).sum())
    st.caption(
        f"{shown:,} of {len(table):,} models · {kind.upper()} map · click a point to select "
        "it · lasso or box select in the chart's toolbar (top right) for many · "
        "double-click to clear"
    )
    event = st.plotly_chart(
        fig,
        key="atlas_map",
        on_select=_selection_changed,
        selection_mode=("points", "box", "lasso"),
        width="stretch",
    )
    _embed_folder_request(root, stamp_)
    if placed:
        _placed_ui(placed, kind)
    st.session_state.map_selected = selected_ids(event)
    details(root, table, stamp_)
    map_quality_ui(root, stamp_)


@st.fragment(key=DETAILS)
def details(root: Path, table: MapTable, stamp_: float) -> None:
    """Search hits, the selection summary and the model panel below the map.

    A fragment: a search or a map selection reruns only this part (see :func:`_rerun_details`),
    so the 20k-point chart is neither re-serialised nor re-sent, and keeps its selection.
    """
    search = str(st.session_state.get("map_search") or "").strip()
    hits = search_hits(table, search)
    # rows of the table, not ids: a lasso on a large map holds tens of thousands of points
    rows = table.rows_of(st.session_state.get("map_selected", []))
    if hits:  # search hits first, then the map selection
        hit_rows = table.rows_of(hits)
        rows = np.concatenate([hit_rows, rows[~np.isin(rows, hit_rows)]])
    elif search:
        st.warning("No model id contains that text.", icon=":material/search_off:")
    if not len(rows):
        st.info(
            "Click a model on the map, lasso or box-select several, or search an id to see "
            "its card, layers and nearest neighbours."
        )
        return
    chosen = [table.ids[i] for i in rows[:MAX_DETAIL_OPTIONS]]
    if len(rows) > 1:
        acc = table.array("accuracy")[rows]
        fams = sorted(set(table.array("family")[rows].tolist()))
        st.markdown(
            f"**{len(rows)} models selected** · families: "
            + escape_md(", ".join(fams[:8]))
            + (f" · mean test accuracy {np.nanmean(acc):.3f}" if np.isfinite(acc).any() else "")
        )
    model_id = detail_choice(chosen)
    model_panel_ui(root, table, stamp_, model_id)


page()
