"""Plotly figures of the explorer (presentation only; the numbers come from core).

The map figure is a pure function of its arguments, so the same choices give the same
figure and Streamlit keeps the user's selection across reruns. Model ids travel in each
point's ``customdata[0]``; selections are read back through them, never through indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from core.explore import NUMERIC, MapTable

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Set2 + qualitative.Dark24
HOVER = (
    "<b>%{customdata[0]}</b><br>family %{customdata[1]} · task %{customdata[2]}"
    "<br>accuracy %{customdata[3]} · params %{customdata[4]}<br>split %{customdata[5]}"
    "<extra></extra>"
)


LEAN_ABOVE = 5000  # larger maps carry only the id per point (hover: id + trace name)
HOVER_LEAN = "<b>%{customdata[0]}</b><br>%{fullData.name}<extra></extra>"


def _customdata(table: MapTable, rows: np.ndarray, lean: bool = False) -> np.ndarray:
    data = table.hover_data()
    return data[rows, :1] if lean else data[rows]


def map_figure(
    table: MapTable,
    kind: str,
    colour: str,
    keep: np.ndarray,
    lineage: bool = False,
    highlight: Sequence[str] = (),
    placed: dict[str, tuple[float, float]] | None = None,
    height: int = 640,
) -> go.Figure:
    """WebGL scatter of the atlas map.

    Args:
        table: the atlas' map table.
        kind: which 2-D map (``umap`` or ``pca``).
        colour: a column of ``table`` (categorical: one trace per value; numeric: colour scale).
        keep: boolean mask of shown models.
        lineage: draw ``base_model`` -> model edges.
        highlight: ids to ring (search hits).
        placed: extra points (name -> (x, y)), e.g. a newly embedded model.
        height: pixels.
    """
    xy = table.coords[kind]
    rows = np.flatnonzero(keep & np.isfinite(xy).all(axis=1))
    fig = go.Figure()
    if lineage:
        edges = [(a, b) for a, b in table.lineage_edges() if keep[a] and keep[b]]
        if edges:
            ex = np.full(3 * len(edges), np.nan)
            ey = np.full(3 * len(edges), np.nan)
            for j, (a, b) in enumerate(edges):
                ex[3 * j : 3 * j + 2] = xy[[a, b], 0]
                ey[3 * j : 3 * j + 2] = xy[[a, b], 1]
            fig.add_trace(
                go.Scattergl(
                    x=ex,
                    y=ey,
                    mode="lines",
                    line=dict(color="rgba(120,120,120,0.5)", width=1),
                    hoverinfo="skip",
                    name="lineage (base_model)",
                )
            )
    size = 7 if len(rows) < 2000 else 4
    lean = len(rows) > LEAN_ABOVE
    hover = HOVER_LEAN if lean else HOVER
    if colour in NUMERIC:
        values = np.asarray(table.columns[colour], dtype=float)[rows]
        known = np.isfinite(values)
        if (~known).any():
            r = rows[~known]
            fig.add_trace(
                go.Scattergl(
                    x=xy[r, 0],
                    y=xy[r, 1],
                    mode="markers",
                    name=f"{colour} unknown",
                    marker=dict(size=size, color="lightgrey"),
                    customdata=_customdata(table, r, lean),
                    hovertemplate=hover,
                )
            )
        r = rows[known]
        shown = np.log10(np.maximum(values[known], 1)) if colour == "params" else values[known]
        fig.add_trace(
            go.Scattergl(
                x=xy[r, 0],
                y=xy[r, 1],
                mode="markers",
                name=colour,
                marker=dict(
                    size=size,
                    color=shown,
                    colorscale="Viridis",
                    showscale=True,
                    colorbar=dict(title="log10 params" if colour == "params" else colour),
                ),
                customdata=_customdata(table, r, lean),
                hovertemplate=hover,
            )
        )
    else:
        values = np.asarray(table.columns[colour], dtype=object)
        for k, value in enumerate(sorted(set(values[rows].tolist()))):
            r = rows[values[rows] == value]
            fig.add_trace(
                go.Scattergl(
                    x=xy[r, 0],
                    y=xy[r, 1],
                    mode="markers",
                    name=f"{value} ({len(r)})",
                    marker=dict(size=size, color=PALETTE[k % len(PALETTE)]),
                    customdata=_customdata(table, r, lean),
                    hovertemplate=hover,
                )
            )
    if highlight:
        index = {m: i for i, m in enumerate(table.ids)}
        r = np.array([index[m] for m in highlight if m in index], dtype=int)
        if len(r):
            fig.add_trace(
                go.Scattergl(
                    x=xy[r, 0],
                    y=xy[r, 1],
                    mode="markers",
                    name="search hits",
                    marker=dict(size=size + 8, color="rgba(0,0,0,0)", line=dict(width=2)),
                    customdata=_customdata(table, r, lean),
                    hovertemplate=hover,
                )
            )
    for name, (x, y) in (placed or {}).items():
        fig.add_trace(
            go.Scattergl(
                x=[x],
                y=[y],
                mode="markers+text",
                text=[name],
                textposition="top center",
                name=f"embedded: {name}",
                marker=dict(size=18, symbol="star", color="crimson", line=dict(width=1)),
                customdata=[[name, "new", "", "–", "–", ""]],
                hovertemplate=HOVER,
            )
        )
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=30, b=10),
        dragmode="lasso",
        uirevision=f"{kind}",
        legend=dict(itemsizing="constant", title=colour),
        xaxis=dict(title=f"{kind.upper()} 1", zeroline=False),
        yaxis=dict(title=f"{kind.upper()} 2", zeroline=False),
        hovermode="closest",
    )
    return fig


def selected_ids(event: object) -> list[str]:
    """Model ids of the points selected in a ``st.plotly_chart(on_select="rerun")`` event."""
    points = []
    try:
        points = event.selection.points  # type: ignore[attr-defined]
    except AttributeError:
        if isinstance(event, dict):
            points = (event.get("selection") or {}).get("points") or []
    out: list[str] = []
    for p in points:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if cd:
            mid = cd[0] if isinstance(cd, list | tuple) else cd
            if isinstance(mid, str) and mid not in out:
                out.append(mid)
    return out


def layer_bars(names: Sequence[str], values: Sequence[float], title: str, log: bool = False):
    """Horizontal bars over layers in depth order (top = first layer)."""
    fig = go.Figure(go.Bar(x=list(values), y=list(names), orientation="h"))
    fig.update_layout(
        height=max(200, 22 * len(names) + 60),
        margin=dict(l=10, r=10, t=30, b=10),
        title=title,
        yaxis=dict(autorange="reversed"),
        xaxis=dict(type="log" if log else "linear"),
    )
    return fig
