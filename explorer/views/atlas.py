"""Atlas page: the latent space of the collected models on the precomputed UMAP/PCA map.

Colour, filter and search the map; select points (click, box or lasso) to see the model card
data, a per-layer summary and the nearest neighbours by embedding; embed a local model folder
to see where it lands. Nothing here fits a map or embeds the atlas on page load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.atlas import AtlasError
from core.errors import USER_ERRORS
from core.explore import COLOUR_BY, MapTable
from explorer.common import (
    cached_layer_rows,
    cached_manifest,
    current_atlas,
    fmt,
    load_map_table,
    stamp,
    user_error,
)
from explorer.figures import layer_bars, map_figure, selected_ids

MAX_DETAIL_OPTIONS = 500


def build_figure(table: MapTable, choice: dict[str, Any], placed: dict[str, Any] | None):
    """The map figure for the current choices (not cached: a cached copy of a figure
    serialises differently and Streamlit would then drop the user's selection)."""
    keep = table.filter(list(choice["family"]), list(choice["task"]), list(choice["tag"]), "")
    search = choice["search"]
    hits = [table.ids[i] for i in np.flatnonzero(table.filter(search=search))] if search else []
    kind = choice["kind"]
    pts = {}
    if placed and kind in placed["map"]:
        pts[placed["name"]] = (float(placed["map"][kind][0]), float(placed["map"][kind][1]))
    return map_figure(
        table,
        kind,
        choice["colour"],
        keep,
        lineage=choice["lineage"],
        highlight=hits[:200],
        placed=pts,
    )


@st.cache_data(show_spinner=False, max_entries=256)
def cached_neighbours(root: str, stamp_: float, model_id: str, k: int) -> list[tuple[str, float]]:
    """k nearest collected models of ``model_id`` (core.embed.neighbours)."""
    from core.embed import neighbours

    return neighbours(root, model_id, k)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_embed_folder(root: str, stamp_: float, folder: str, k: int) -> dict[str, Any]:
    """Embed a local model folder with the atlas' backbone: map position + neighbours."""
    from core.embed import embed_model_dir, neighbours, place_on_map

    v = embed_model_dir(folder, root)
    return {"map": place_on_map(root, v), "neighbours": neighbours(root, v, k)}


def map_controls_ui(table: MapTable) -> dict[str, Any]:
    """Map kind, colour, filters and search; returns the choices."""
    kinds = [k for k in ("umap", "pca") if k in table.coords] + [
        k for k in table.coords if k not in ("umap", "pca")
    ]
    c1, c2, c3, c4 = st.columns([1, 1, 2, 2])
    kind = c1.selectbox("Map", kinds, format_func=str.upper, key="map_kind")
    colour = c2.selectbox("Colour by", COLOUR_BY, key="map_colour")
    search = c3.text_input("Search model id", key="map_search", placeholder="substring of an id")
    with c4.popover("Filter", icon=":material/filter_alt:", width="stretch"):
        family = st.multiselect("Family", table.values("family"), key="map_family")
        task = st.multiselect("Task", table.values("task"), key="map_task")
        tag = st.multiselect("Tag", table.values("tag"), key="map_tag")
        lineage = st.toggle(
            "Lineage edges (base_model)",
            key="map_lineage",
            disabled=not table.lineage_edges(),
            help="Hub lineage from model cards, where the manifest knows it.",
        )
    return dict(
        kind=kind,
        colour=colour,
        search=search.strip(),
        family=tuple(family),
        task=tuple(task),
        tag=tuple(tag),
        lineage=bool(lineage),
    )


def embed_folder_ui() -> tuple[str, int] | None:
    """Folder input for "Embed a model"; returns (folder, k) when the button is pressed."""
    with st.expander("Embed a model", icon=":material/add_location_alt:"):
        folder = st.text_input(
            "Local model folder (Hub format: config.json + *.safetensors)", key="embed_folder"
        )
        k = st.slider("Neighbours", 1, 20, 5, key="embed_k")
        if st.button("Embed and place on the map", key="embed_go", disabled=not folder.strip()):
            return folder.strip(), int(k)
    return None


def model_panel_ui(root: Path, table: MapTable, stamp_: float, model_id: str) -> None:
    """Model card data, per-layer summary and nearest neighbours of one model."""
    row = cached_manifest(str(root), stamp(root / "manifest.jsonl")).get(model_id, {})
    i = table.ids.index(model_id) if model_id in table.ids else None
    st.subheader(model_id)
    card, layers, nn = st.columns([1.1, 1.2, 1.2])
    with card:
        st.markdown("**Model card**")
        meta = {c: fmt(table.columns[c][i]) for c in table.columns} if i is not None else {}
        for key in ("source", "license", "pipeline_tag", "base_model", "revision"):
            if row.get(key):
                meta[key] = fmt(row[key])
        if i is not None and table.tags[i]:
            meta["tags"] = ", ".join(table.tags[i])
        st.markdown("\n".join(f"- **{k}**: `{v}`" for k, v in meta.items()))
        extra = {**(row.get("labels") or {}), **(row.get("metrics") or {})}
        if extra:
            with st.popover("All labels and metrics"):
                st.json(extra)
    with layers:
        st.markdown("**Layers**")
        layers_path = root / "embeddings" / "layers.jsonl"
        rows = cached_layer_rows(str(root), stamp(layers_path)).get(model_id, [])
        if rows:
            st.plotly_chart(
                layer_bars(
                    [str(r.get("name", r.get("layer"))) for r in rows],
                    [float(r.get("n_tokens", 0)) for r in rows],
                    f"{len(rows)} layers · tokens per layer",
                    log=True,
                ),
                key=f"layers_{model_id}",
                width="stretch",
            )
        else:
            st.caption("No per-layer embeddings for this model in the atlas.")
    with nn:
        st.markdown("**Nearest neighbours** (cosine distance of embeddings)")
        k = st.slider("k", 1, 25, 8, key="nn_k")
        try:
            pairs = cached_neighbours(str(root), stamp_, model_id, int(k))
        except USER_ERRORS as e:
            user_error(e)
            return
        idx = {m: j for j, m in enumerate(table.ids)}
        st.dataframe(
            [
                {
                    "id": m,
                    "distance": round(d, 4),
                    "family": table.columns["family"][idx[m]] if m in idx else "",
                    "task": table.columns["task"][idx[m]] if m in idx else "",
                    "accuracy": table.columns["accuracy"][idx[m]] if m in idx else None,
                }
                for m, d in pairs
            ],
            hide_index=True,
            width="stretch",
        )


def page() -> None:
    """Render the Atlas page."""
    root = current_atlas()
    st.title("Atlas", help="Models placed by their weights, through the backbone's embeddings.")
    try:
        table = load_map_table(root)
    except (AtlasError, *USER_ERRORS) as e:
        user_error(e)
        st.stop()
    emb = root / "embeddings"
    stamp_ = stamp(emb / "models.jsonl", emb / "maps.json", root / "manifest.jsonl")
    choice = map_controls_ui(table)
    request = embed_folder_ui()
    if request is not None:
        folder, k = request
        try:
            with st.spinner(f"Embedding {folder} with the atlas backbone…"):
                p = Path(folder).expanduser()
                files = [p / "config.json", *sorted(p.glob("*.safetensors"))] if p.is_dir() else []
                result = cached_embed_folder(str(root), stamp_ + stamp(*files), str(p.resolve()), k)
            st.session_state.placed = {"name": p.name or str(p), **result}
        except (*USER_ERRORS, OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
            st.session_state.pop("placed", None)
            user_error(e)
    placed = st.session_state.get("placed")
    kind = choice["kind"]
    fig = build_figure(table, choice, placed)
    shown = int(table.filter(choice["family"], choice["task"], choice["tag"]).sum())
    st.caption(
        f"{shown:,} of {len(table):,} models · {kind.upper()} map · drag to lasso, "
        "click a point, double-click to clear"
    )
    event = st.plotly_chart(
        fig,
        key="atlas_map",
        on_select="rerun",
        selection_mode=("points", "box", "lasso"),
        width="stretch",
    )
    if placed:
        st.success(
            f"**{placed['name']}** lands at {kind.upper()} "
            f"({placed['map'][kind][0]:.2f}, {placed['map'][kind][1]:.2f}); nearest: "
            + ", ".join(f"`{m}` ({d:.3f})" for m, d in placed["neighbours"]),
            icon=":material/star:",
        )
    known = set(table.ids)
    chosen = [m for m in selected_ids(event) if m in known]
    if choice["search"]:  # search hits first, then the map selection
        hits = [table.ids[i] for i in np.flatnonzero(table.filter(search=choice["search"]))]
        hit_set = set(hits)
        chosen = hits + [m for m in chosen if m not in hit_set]
    if not chosen:
        st.info("Select models on the map (click, box or lasso) or search an id to see details.")
        return
    if len(chosen) > 1:
        idx = {m: j for j, m in enumerate(table.ids)}
        acc = np.array([table.columns["accuracy"][idx[m]] for m in chosen], dtype=float)
        fams = sorted({table.columns["family"][idx[m]] for m in chosen})
        st.markdown(
            f"**{len(chosen)} models selected** · families: {', '.join(fams[:8])}"
            + (f" · mean accuracy {np.nanmean(acc):.3f}" if np.isfinite(acc).any() else "")
        )
    model_id = st.selectbox("Details for", chosen[:MAX_DETAIL_OPTIONS], key="detail_id")
    model_panel_ui(root, table, stamp_, model_id)


page()
