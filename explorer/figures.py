"""Plotly figures of the explorer (presentation only; the numbers come from core).

The map figure is a pure function of its arguments, so the same choices give the same
figure and Streamlit keeps the user's selection across reruns. Model ids travel in each
point's ``customdata[0]``; selections are read back through them, never through indices.
Colours are fixed per value over the whole atlas (:func:`colour_map`), so a filter never
recolours a family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from core.catalog import NUMERIC, MapTable

# categorical colours, the first ten well apart (D3's: one pink only; plotly's own has two
# pinks, #FF6692 and #FF97FF, that made resnet and vit look alike on the demo map)
PALETTE = qualitative.D3 + qualitative.Dark2 + qualitative.Set1 + qualitative.Dark24
# what a column means, where a user chooses or reads it
LABELS = {
    "accuracy": "test accuracy",
    "split": "backbone split",
    "params": "params",
    "family": "family",
    "library": "library",
    "task": "task",
    "dataset": "dataset",
    "model_type": "model type",
    "tree": "model tree (from weights)",
}
HOVER = (
    "<b>%{customdata[0]}</b><br>family %{customdata[1]} · task %{customdata[2]}"
    "<br>test accuracy %{customdata[3]} · params %{customdata[4]}"
    "<br>backbone split %{customdata[5]}%{customdata[6]}<extra></extra>"
)


MAP_HEIGHT = 520  # pixels of the Atlas page's map

LEAN_ABOVE = 5000  # larger maps carry only the id per point (hover: id + trace name)
# larger maps draw with WebGL (``go.Scattergl``); smaller ones as SVG (``go.Scatter``), with the
# same hover, click, box and lasso selection and no WebGL context to create before the first
# points show (0.1-0.2 s of the demo map's first paint in headless Chromium; issue 27)
WEBGL_ABOVE = 2000
Scatter = go.Scatter | go.Scattergl


def scatter_type(n_points: int) -> type[go.Scatter] | type[go.Scattergl]:
    """The trace type of a map drawing ``n_points`` models (every trace of one map alike)."""
    return go.Scattergl if n_points > WEBGL_ABOVE else go.Scatter


HOVER_LEAN = "<b>%{customdata[0]}</b><br>%{fullData.name}<extra></extra>"


def label(column: str) -> str:
    """Display name of a map column (``accuracy`` is the test accuracy, ``split`` the
    backbone's train/val/test split)."""
    return LABELS.get(column, column)


def colour_map(table: MapTable, column: str) -> dict[str, str]:
    """One fixed colour per value of a categorical column, over the whole atlas."""
    values = sorted({str(v) for v in table.columns[column]})
    return {v: PALETTE[k % len(PALETTE)] for k, v in enumerate(values)}


def axis_title(table: MapTable, kind: str, axis: int) -> str:
    """``PCA 1 (59.8% of variance)`` where the atlas records it, else ``UMAP 1``."""
    ratio = (table.explained or {}).get(kind)
    if ratio is not None and len(ratio) > axis and np.isfinite(ratio[axis]):
        return f"{kind.upper()} {axis + 1} ({100 * ratio[axis]:.1f}% of variance)"
    return f"{kind.upper()} {axis + 1}"


def copies_text(copies: float) -> str:
    """Hover line for a point that stands for identical copies (issue 16), else ``""``."""
    if not copies > 1:
        return ""
    n = int(copies)
    return f"<br>{n} copies: this model and {n - 1} identical duplicate(s), one point"


def _customdata(table: MapTable, rows: np.ndarray, lean: bool = False) -> np.ndarray:
    data = table.hover_data()
    if lean:
        return data[rows, :1]
    copies = table.columns.get("copies")
    extra = [copies_text(copies[i]) if copies is not None else "" for i in rows]
    return np.column_stack([data[rows], np.array(extra, dtype=object).reshape(-1, 1)])


def _segments(xy: np.ndarray, edges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """x and y of line segments parent -> child, NaN-separated (one trace draws them all)."""
    ex = np.full(3 * len(edges), np.nan)
    ey = np.full(3 * len(edges), np.nan)
    for j, (a, b) in enumerate(edges):
        ex[3 * j : 3 * j + 2] = xy[[a, b], 0]
        ey[3 * j : 3 * j + 2] = xy[[a, b], 1]
    return ex, ey


def recovered_edge_traces(
    table: MapTable, xy: np.ndarray, keep: np.ndarray, trace: type[Scatter]
) -> list[Scatter]:
    """Line traces of the recovered lineage: agreeing edges, then flagged ones in red."""
    edges = [(a, b, f) for a, b, f in table.recovered_edges() if keep[a] and keep[b]]
    out = []
    for flagged, name, colour, width in (
        (False, "lineage (from weights)", "rgba(40,70,160,0.6)", 1.2),
        (True, "lineage flags (declaration missing or contradicted)", "rgba(214,39,40,0.9)", 2),
    ):
        part = [(a, b) for a, b, f in edges if f == flagged]
        if part:
            ex, ey = _segments(xy, part)
            out.append(
                trace(
                    x=ex,
                    y=ey,
                    mode="lines",
                    line=dict(color=colour, width=width),
                    hoverinfo="skip",
                    name=f"{name} ({len(part)})",
                )
            )
    return out


def map_figure(
    table: MapTable,
    kind: str,
    colour: str,
    keep: np.ndarray,
    lineage: bool = False,
    highlight: Sequence[str] = (),
    recovered: bool = False,
    placed: dict[str, tuple[float, ...]] | None = None,
    height: int = 640,
) -> go.Figure:
    """WebGL scatter of the atlas map.

    Args:
        table: the atlas' map table.
        kind: which 2-D map (``umap`` or ``pca``).
        colour: a column of ``table`` (categorical: one trace per value; numeric: colour scale).
        keep: boolean mask of shown models.
        lineage: draw ``base_model`` -> model edges.
        recovered: draw the lineage recovered from the weights (``weightatlas lineage``),
            edges whose child declares no parent or a contradicting one in red.
        highlight: ids to ring (search hits).
        placed: extra points (name -> (x, y) or (x, y, outside)), e.g. a newly embedded
            model; ``outside`` (atlas distance above the 99th percentile) draws a black x.
        height: pixels.
    """
    xy = table.coords[kind]
    rows = np.flatnonzero(keep & np.isfinite(xy).all(axis=1))
    fig = go.Figure()
    trace = scatter_type(len(rows))
    if lineage:
        fig.add_traces(declared_edge_traces(table, xy, keep, trace))
    if recovered:
        fig.add_traces(recovered_edge_traces(table, xy, keep, trace))
    lean = len(rows) > LEAN_ABOVE
    points = _Points(table, xy, size=7 if len(rows) < 2000 else 4, lean=lean, type=trace)
    if colour in NUMERIC:
        fig.add_traces(_numeric_traces(points, colour, rows))
    else:
        fig.add_traces(_categorical_traces(points, colour, rows))
    if highlight:
        index = table.index()
        r = np.array([index[m] for m in highlight if m in index], dtype=int)
        if len(r):
            ring = dict(size=points.size + 8, color="rgba(0,0,0,0)", line=dict(width=2))
            fig.add_trace(points.trace(r, name="search hits", marker=ring))
    for name, (x, y, *flag) in (placed or {}).items():
        fig.add_trace(_placed_trace(name, x, y, outside=bool(flag and flag[0]), trace=trace))
    _map_layout(fig, table, kind, colour, height)
    return fig


def declared_edge_traces(
    table: MapTable, xy: np.ndarray, keep: np.ndarray, trace: type[Scatter]
) -> list[Scatter]:
    """The line trace of the declared lineage (``base_model`` -> model), or none."""
    edges = [(a, b) for a, b in table.lineage_edges() if keep[a] and keep[b]]
    if not edges:
        return []
    ex, ey = _segments(xy, edges)
    line = dict(color="rgba(120,120,120,0.5)", width=1)
    return [
        trace(x=ex, y=ey, mode="lines", line=line, hoverinfo="skip", name="lineage (base_model)")
    ]


@dataclass(frozen=True)
class _Points:
    """What every model-point trace of one map shares: the table, coordinates, marker size,
    whether hover is lean (large atlases) and the trace type (``scatter_type``)."""

    table: MapTable
    xy: np.ndarray
    size: int
    lean: bool
    type: type[Scatter]

    def trace(self, rows: np.ndarray, **kw: Any) -> Scatter:
        """A marker trace of ``rows`` with the map's hover; ``kw`` as ``go.Scatter``."""
        return self.type(
            x=self.xy[rows, 0],
            y=self.xy[rows, 1],
            mode="markers",
            customdata=_customdata(self.table, rows, self.lean),
            hovertemplate=HOVER_LEAN if self.lean else HOVER,
            **kw,
        )


def _numeric_traces(points: _Points, colour: str, rows: np.ndarray) -> list[Scatter]:
    """Models with no value of ``colour`` in grey, then the rest on a colour scale fixed over
    the atlas (not the filter); ``params`` on a log10 scale."""
    every = np.asarray(points.table.columns[colour], dtype=float)
    known = np.isfinite(every[rows])
    out = []
    if (~known).any():
        r = rows[~known]
        grey = dict(size=points.size, color="lightgrey")
        out.append(points.trace(r, name=f"{label(colour)} unknown ({len(r)})", marker=grey))
    r = rows[known]  # named by the colour bar's title alone (not again in the legend)
    scale = np.log10(np.maximum(every, 1)) if colour == "params" else every
    finite = scale[np.isfinite(scale)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    marker = dict(
        size=points.size,
        color=scale[r],
        colorscale="Viridis",
        cmin=lo,
        cmax=hi if hi > lo else lo + 1,  # fixed over the atlas, not the filter
        showscale=True,
        colorbar=dict(title="log10 params" if colour == "params" else label(colour)),
    )
    out.append(points.trace(r, name=f"{len(r)} models", showlegend=False, marker=marker))
    return out


def _categorical_traces(points: _Points, colour: str, rows: np.ndarray) -> list[Scatter]:
    """One trace per value of ``colour``, in sorted order, each in its fixed colour."""
    values = np.asarray([str(v) for v in points.table.columns[colour]], dtype=object)
    colours = colour_map(points.table, colour)
    out = []
    for value in sorted(set(values[rows].tolist())):
        r = rows[values[rows] == value]
        marker = dict(size=points.size, color=colours[value])
        out.append(points.trace(r, name=f"{value} ({len(r)})", marker=marker))
    return out


def _placed_trace(name: str, x: float, y: float, outside: bool, trace: type[Scatter]) -> Scatter:
    """A placed model: a crimson star, or a black x when outside the atlas (issue 16)."""
    return trace(
        x=[x],
        y=[y],
        mode="markers+text",
        text=[f"{name} (outside the atlas)" if outside else name],
        textposition="top center",
        name=f"outside the atlas: {name}" if outside else f"embedded: {name}",
        marker=dict(
            size=18,
            symbol="x" if outside else "star",
            color="black" if outside else "crimson",
            line=dict(width=2 if outside else 1),
        ),
        customdata=[[name, "new", "", "–", "–", "", ""]],
        hovertemplate=HOVER,
    )


def _map_layout(fig: go.Figure, table: MapTable, kind: str, colour: str, height: int) -> None:
    """The map's layout: size, click-to-select with pan dragging, legend, axis titles."""
    fig.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=10, b=10),
        # click selects a point (Streamlit turns click selection off while lasso or box is
        # the drag mode); lasso and box select are one click away in the chart's toolbar
        dragmode="pan",
        clickmode="event+select",
        uirevision=f"{kind}",
        showlegend=True,
        # a numeric colour is titled by its colour bar; the legend then holds only extras
        # (unknown values, search hits, placed models), untitled
        legend=dict(
            itemsizing="constant", title=dict(text="" if colour in NUMERIC else label(colour))
        ),
        xaxis=dict(title=axis_title(table, kind, 0), zeroline=False),
        yaxis=dict(title=axis_title(table, kind, 1), zeroline=False),
        hovermode="closest",
    )


def selected_ids(event: object) -> list[str]:
    """Model ids of the points selected in a ``st.plotly_chart(on_select="rerun")`` event."""
    points = []
    try:
        points = event.selection.points  # type: ignore[attr-defined]
    except AttributeError:
        if isinstance(event, dict):
            points = (event.get("selection") or {}).get("points") or []
    out: dict[str, None] = {}  # ordered and O(1) per point (lassos hold thousands)
    for p in points:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if cd:
            mid = cd[0] if isinstance(cd, list | tuple) else cd
            if isinstance(mid, str):
                out[mid] = None
    return list(out)


def short_name(name: str, limit: int = 34) -> str:
    """A layer name cut in the middle to ``limit`` characters (its start and end kept)."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 3
    return name[:head] + "…" + name[-(limit - 1 - head) :]


def layer_bars(names: Sequence[str], values: Sequence[float], title: str, log: bool = False):
    """Horizontal bars over layers in depth order (top = first layer).

    Long names are cut in the middle on the axis (the full name shows on hover); a log axis
    has ticks at powers of ten only.
    """
    names = [str(n) for n in names]
    fig = go.Figure(
        go.Bar(
            x=list(values),
            y=list(range(len(names))),
            orientation="h",
            customdata=names,
            hovertemplate="%{customdata}<br>%{x:,}<extra></extra>",
        )
    )
    xaxis = dict(title=title)
    if log:
        xaxis.update(type="log", dtick=1, tickformat=",d")
    fig.update_layout(
        height=max(220, 18 * len(names) + 70),
        margin=dict(l=10, r=10, t=10, b=10),
        yaxis=dict(
            autorange="reversed",
            tickmode="array",
            tickvals=list(range(len(names))),
            ticktext=[short_name(n) for n in names],
            automargin=True,
            tickfont=dict(size=11),
        ),
        xaxis=xaxis,
    )
    return fig


# ---------------------------------------------------------------------------------------------
# Layers page


def depth_axis(names: list[str], max_labels: int = 48) -> dict[str, Any]:
    """An x axis over layers in depth order: position = depth, labelled with (shortened) names.

    Beyond ``max_labels`` layers every k-th name is written; hover always gives the full name.
    """
    step = max(1, -(-len(names) // max_labels))
    ticks = list(range(0, len(names), step))
    return dict(
        tickmode="array",
        tickvals=ticks,
        ticktext=[short_name(names[i], 28) for i in ticks],
        tickangle=-50,
        tickfont=dict(size=10),
        automargin=True,
        range=[-0.5, len(names) - 0.5],
    )


TITLE_CHARS = 30  # a histogram panel's title at font size 11 in a third of a 1280-pixel page


CONSTANT_NOTE = "constant layer: R² undefined"


def is_constant(row: dict[str, Any]) -> bool:
    """Whether a layer report row's original values are all one number (R² is undefined)."""
    values = row.get("original") or []
    return row.get("r2") is None and len(values) > 0 and min(values) == max(values)


def default_layers(report: list[dict[str, Any]], k: int = 6) -> list[str]:
    """``k`` layers spread over depth for the first view: weight matrices and kernels (2+ dims),
    not bias or norm vectors (a 2-value bias draws two bars), nor constant layers."""
    matrices = [r for r in report if len(r.get("shape") or []) >= 2 and not is_constant(r)]
    pool = matrices or [r for r in report if not is_constant(r)] or report
    if not pool:
        return []
    picks = np.unique(np.linspace(0, len(pool) - 1, min(k, len(pool))).round().astype(int))
    return [pool[i]["name"] for i in picks]


def histogram_figure(
    report: list[dict[str, Any]], names: list[str], legend: bool = True
) -> go.Figure:
    """Overlaid histograms of original vs reconstructed values, one panel per layer.

    Each panel: x = weight value, y = probability density (the histogram integrates to 1).
    ``legend`` False leaves the legend out (narrow side-by-side panels).
    """
    rows = [r for r in report if r["name"] in names]
    cols = 3 if len(rows) > 2 else max(1, len(rows))
    nrows = -(-len(rows) // cols)
    # a name cut to fit a third of a 1280-pixel page, the R² on its own line: long names
    # (bert.encoder.layer.0.attention.self.key.bias) ran into the neighbouring panel's title
    titles = [
        f"{short_name(r['name'], TITLE_CHARS)}<br>R² {r['r2']:.3f}"
        if r.get("r2") is not None
        else f"{short_name(r['name'], TITLE_CHARS)}<br>{CONSTANT_NOTE}"
        if is_constant(r)
        else short_name(r["name"], TITLE_CHARS)
        for r in rows
    ]
    fig = make_subplots(
        rows=nrows,
        cols=cols,
        subplot_titles=titles,
        vertical_spacing=0.5 / max(nrows, 1) ** 0.5 / 2,
    )
    for j, r in enumerate(rows):
        row, col = j // cols + 1, j % cols + 1
        for key, colour in (("original", "#1f77b4"), ("reconstructed", "#ff7f0e")):
            fig.add_trace(
                go.Histogram(
                    x=r[key],
                    name=f"{key} weights",
                    legendgroup=key,
                    showlegend=legend and j == 0,
                    opacity=0.55,
                    marker_color=colour,
                    nbinsx=50,
                    histnorm="probability density",
                    hovertemplate="value %{x}<br>density %{y:.3g}<extra>" + key + "</extra>",
                ),
                row=row,
                col=col,
            )
        fig.update_xaxes(title_text="weight value", title_font_size=11, row=row, col=col)
        if col == 1:
            fig.update_yaxes(title_text="density", title_font_size=11, row=row, col=col)
    fig.update_layout(
        barmode="overlay",
        height=280 * nrows + 50,
        margin=dict(l=10, r=10, t=55, b=10),
        legend=dict(orientation="v", x=1.01, y=1, xanchor="left", yanchor="top"),
    )
    fig.update_annotations(font_size=11)
    return fig


def error_figure(reports: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """Per-layer R² (top) and W1/std (bottom) over the same depth axis, one line per backbone."""
    names = [r["name"] for r in next(iter(reports.values()))]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=(
            "R² per layer (1 = perfect reconstruction)",
            "Wasserstein-1 distance / std of the original values (0 = same distribution)",
        ),
    )
    for j, (name, report) in enumerate(reports.items()):
        by_name = {r["name"]: r for r in report}
        colour = PALETTE[j % len(PALETTE)]  # one colour per backbone, in both panels
        for row, key in ((1, "r2"), (2, "w1_over_std")):
            y = [np.nan if by_name.get(n, {}).get(key) is None else by_name[n][key] for n in names]
            fig.add_trace(
                go.Scatter(
                    x=list(range(len(names))),
                    y=y,
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=row == 1,
                    line=dict(color=colour),
                    marker=dict(color=colour),
                    customdata=names,
                    hovertemplate="%{customdata}<br>%{y:.4f}<extra>" + name + "</extra>",
                ),
                row=row,
                col=1,
            )
    low = [r["r2"] for rep in reports.values() for r in rep if r.get("r2") is not None]
    if low and min(low) < -1:
        fig.update_yaxes(range=[-1.05, 1.05], row=1, col=1)
        fig.layout.annotations[0].text = "R² per layer (axis clipped at −1; hover for values)"
    fig.update_yaxes(title_text="R²", row=1, col=1)
    fig.update_yaxes(title_text="W1 / std", row=2, col=1)
    fig.update_xaxes(depth_axis(names), row=2, col=1)
    fig.update_xaxes(title_text="layer (in depth order)", row=2, col=1)
    fig.update_layout(
        height=560 + 4 * min(max(len(n) for n in names), 28) if names else 560,
        margin=dict(l=10, r=10, t=40, b=10),
        hovermode="x unified",
        legend=dict(orientation="h", x=0, y=1.08, yanchor="bottom"),
    )
    return fig


def depth_figure(spread: list[dict[str, Any]], spectra: list[dict[str, Any]] | None) -> go.Figure:
    """003 Fig. 3 over one depth axis: spectral metrics of each weight matrix (top, only when
    computed) and the embedding spread of each layer (bottom), both placed at the layer's name.

    The spread line joins layers of two or more tokens; a one-token layer has spread 0 by
    definition (the std of one embedding), so it is drawn as an open marker off the line
    ("one token: no spread") instead of pulling the line to 0 and back.
    """
    names = [str(r.get("name", "")) for r in spread]
    for s_ in spectra or []:
        if s_["name"] not in names:
            names.append(s_["name"])
    pos = {n: i for i, n in enumerate(names)}
    spread_title = "Embedding spread of each layer (SANE: std of its token embeddings)"
    if spectra:
        fig = make_subplots(
            rows=2,
            cols=1,
            shared_xaxes=True,
            vertical_spacing=0.08,
            subplot_titles=(
                "Spectral metrics of each weight matrix (WeightWatcher-style)",
                spread_title,
            ),
            specs=[[{"secondary_y": True}], [{}]],
        )
        _add_spectral_traces(fig, spectra, pos)
        row = 2
    else:
        fig = make_subplots(rows=1, cols=1, subplot_titles=(spread_title,))
        row = 1
    _add_spread_traces(fig, spread, pos, row)
    fig.update_yaxes(title_text="spread", row=row, col=1)
    fig.update_xaxes(depth_axis(names), row=row, col=1)
    fig.update_xaxes(title_text="layer (in depth order)", row=row, col=1)
    fig.update_layout(
        height=600 if spectra else 380,
        margin=dict(l=10, r=10, t=40, b=10),
        legend=dict(orientation="h", x=0, y=1.08, yanchor="bottom"),
    )
    return fig


def _add_spectral_traces(
    fig: go.Figure, spectra: list[dict[str, Any]], pos: dict[str, int]
) -> None:
    """The top panel: alpha (left axis) and log10 spectral norm (right axis) per matrix."""
    x = [pos[s_["name"]] for s_ in spectra]
    text = [s_["name"] for s_ in spectra]
    for key, name, hover, secondary in (
        ("alpha", "alpha (power-law exponent)", "alpha", False),
        ("log_spectral_norm", "log10 spectral norm", "log10 λmax", True),
    ):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[np.nan if s_[key] is None else s_[key] for s_ in spectra],
                name=name,
                mode="lines+markers",
                customdata=text,
                hovertemplate=f"%{{customdata}}<br>{hover} %{{y:.3f}}<extra></extra>",
            ),
            row=1,
            col=1,
            **({"secondary_y": True} if secondary else {}),
        )
    fig.update_yaxes(title_text="alpha", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="log10 spectral norm", row=1, col=1, secondary_y=True)


def _add_spread_traces(
    fig: go.Figure, spread: list[dict[str, Any]], pos: dict[str, int], row: int
) -> None:
    """The spread panel: a line over layers of two or more tokens, open markers for the rest."""
    many = [r for r in spread if int(r.get("n_tokens", 2) or 0) > 1]
    one = [r for r in spread if int(r.get("n_tokens", 2) or 0) <= 1]
    fig.add_trace(
        go.Scatter(
            x=[pos[str(r.get("name", ""))] for r in many],
            y=[r.get("spread", np.nan) for r in many],
            name="embedding spread",
            mode="lines+markers",
            customdata=[str(r.get("name", "")) for r in many],
            hovertemplate="%{customdata}<br>spread %{y:.4f}<extra></extra>",
        ),
        row=row,
        col=1,
    )
    if one:
        fig.add_trace(
            go.Scatter(
                x=[pos[str(r.get("name", ""))] for r in one],
                y=[r.get("spread", 0.0) for r in one],
                name="one token: no spread",
                mode="markers",
                marker=dict(symbol="circle-open", size=8, color="grey"),
                customdata=[str(r.get("name", "")) for r in one],
                hovertemplate="%{customdata}<br>one token: spread undefined<extra></extra>",
            ),
            row=row,
            col=1,
        )


def generated_layer_figure(gen: dict[str, Any], prompts: dict[str, Any], layer: str) -> go.Figure:
    """Overlaid histograms of one layer (Generate page): each generated model vs each prompt.

    ``gen`` and ``prompts``: state dicts by name; x = weight value, y = probability density.
    """

    def density(values: Any, name: str, opacity: float, colour: str) -> go.Histogram:
        return go.Histogram(
            x=values.float().numpy().ravel(),
            name=name,
            opacity=opacity,
            nbinsx=60,
            histnorm="probability density",
            marker_color=colour,
        )

    fig = go.Figure()
    for name, sd in prompts.items():
        if layer in sd:
            fig.add_trace(density(sd[layer], f"prompt {name.split('/')[-1]}", 0.45, "#1f77b4"))
    palette = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    for j, (name, sd) in enumerate(gen.items()):
        if layer in sd:
            fig.add_trace(density(sd[layer], f"generated {name}", 0.55, palette[j % len(palette)]))
    fig.update_layout(
        barmode="overlay",
        height=360,
        margin=dict(l=10, r=10, t=30, b=10),
        title=layer,
        legend=dict(orientation="h", y=-0.25),
        xaxis=dict(title="weight value"),
        yaxis=dict(title="density"),
    )
    return fig
