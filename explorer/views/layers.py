"""Layers page: one model's weights layer by layer.

Original vs reconstructed weight distributions through the backbone, per-layer R² and
Wasserstein error, the embedding spread along depth next to WeightWatcher-style spectral
metrics (003 Fig. 3), and ablation backbones side by side when the atlas holds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.atlas import Atlas
from core.errors import USER_ERRORS
from core.explore import ablation_backbones, layer_rows, models_with_weights, tokenized_ids
from explorer.common import current_atlas, stamp, user_error, wait_for_imports

MAX_HIST_LAYERS = 12


@st.cache_data(show_spinner=False, max_entries=64)
def cached_layer_report(root: str, stamp_: float, model_id: str, backbone: str | None):
    """core.evaluate.layer_report for one model and backbone (runs the backbone once)."""
    from core.evaluate import layer_report

    return layer_report(root, model_id, backbone)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_spectra(root: str, stamp_: float, model_id: str) -> list[dict[str, Any]]:
    """Spectral metrics of every weight matrix of one model (core.spectral)."""
    from core.explore import model_state_dict
    from core.spectral import layer_spectra

    return layer_spectra(model_state_dict(root, model_id))


@st.cache_data(show_spinner=False, max_entries=64)
def cached_layer_rows(root: str, stamp_: float, model_id: str, backbone: str | None):
    """Per-layer embedding rows (name, n_tokens, spread) of one model."""
    return layer_rows(root, model_id, backbone)


@st.cache_data(show_spinner=False, max_entries=8)
def cached_layer_models(root: str, stamp_: float) -> list[str]:
    """Models with tokens or weights in the atlas."""
    return sorted(set(tokenized_ids(root)) | set(models_with_weights(root)))


def model_picker_ui(root: Path) -> str | None:
    """Select a model that has tokens or weights in the atlas; returns its id."""
    a = Atlas(root)
    ids = cached_layer_models(str(root), stamp(a.tokens_dir / "index.json", a.manifest_path))
    if not ids:
        st.warning(
            "This atlas holds neither token store nor weights for any model; "
            f"run `weightatlas tokenize {root}`.",
            icon=":material/warning:",
        )
        return None
    pre = st.session_state.get("detail_id")
    index = ids.index(pre) if pre in ids else 0
    return st.selectbox("Model", ids, index=index, key="layers_model")


def histogram_figure(report: list[dict[str, Any]], names: list[str]) -> go.Figure:
    """Overlaid histograms of original vs reconstructed values, one panel per layer."""
    rows = [r for r in report if r["name"] in names]
    cols = 3 if len(rows) > 2 else max(1, len(rows))
    nrows = -(-len(rows) // cols)
    titles = [
        f"{r['name']} · R² {r['r2']:.3f}" if r.get("r2") is not None else r["name"] for r in rows
    ]
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=titles)
    for j, r in enumerate(rows):
        row, col = j // cols + 1, j % cols + 1
        for key, colour in (("original", "#1f77b4"), ("reconstructed", "#ff7f0e")):
            fig.add_trace(
                go.Histogram(
                    x=r[key],
                    name=key,
                    legendgroup=key,
                    showlegend=j == 0,
                    opacity=0.55,
                    marker_color=colour,
                    nbinsx=50,
                    histnorm="probability density",
                ),
                row=row,
                col=col,
            )
    fig.update_layout(
        barmode="overlay",
        height=240 * nrows + 60,
        margin=dict(l=10, r=10, t=50, b=10),
        legend=dict(orientation="h", y=1.02, yanchor="bottom"),
    )
    fig.update_annotations(font_size=11)
    return fig


def error_figure(reports: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """Per-layer R² and W1/std along depth, one line per backbone."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("R² per layer", "W1 / std per layer"))
    for name, report in reports.items():
        x = list(range(len(report)))
        text = [r["name"] for r in report]
        for col, key in ((1, "r2"), (2, "w1_over_std")):
            y = [np.nan if r.get(key) is None else r[key] for r in report]
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    text=text,
                    hovertemplate="%{text}<br>%{y:.4f}<extra>" + name + "</extra>",
                ),
                row=1,
                col=col,
            )
    low = [r["r2"] for rep in reports.values() for r in rep if r.get("r2") is not None]
    if low and min(low) < -1:
        fig.update_yaxes(range=[-1.05, 1.05], row=1, col=1)
        fig.layout.annotations[0].text = "R² per layer (axis clipped at −1; hover for values)"
    fig.update_xaxes(title_text="layer index")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def depth_figure(spread: list[dict[str, Any]], spectra: list[dict[str, Any]] | None) -> go.Figure:
    """003 Fig. 3: WeightWatcher metrics (left) and the embedding spread (right) over depth."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Spectral metrics (WeightWatcher-style)", "Embedding spread ẑ_l (SANE)"),
        specs=[[{"secondary_y": True}, {}]],
    )
    if spectra:
        x = [s["depth"] for s in spectra]
        text = [s["name"] for s in spectra]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[np.nan if s["alpha"] is None else s["alpha"] for s in spectra],
                name="alpha",
                mode="lines+markers",
                text=text,
                hovertemplate="%{text}<br>alpha %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[
                    np.nan if s["log_spectral_norm"] is None else s["log_spectral_norm"]
                    for s in spectra
                ],
                name="log10 spectral norm",
                mode="lines+markers",
                text=text,
                hovertemplate="%{text}<br>log10 λmax %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=1,
            secondary_y=True,
        )
    fig.add_trace(
        go.Scatter(
            x=list(range(len(spread))),
            y=[r.get("spread", np.nan) for r in spread],
            name="spread",
            mode="lines+markers",
            text=[str(r.get("name", "")) for r in spread],
            hovertemplate="%{text}<br>spread %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="weight matrix index", row=1, col=1)
    fig.update_xaxes(title_text="layer index", row=1, col=2)
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def reconstruction_section(root: Path, stamp_: float, model_id: str) -> None:
    """Original vs reconstructed distributions and per-layer errors (main backbone)."""
    st.subheader("Reconstruction through the backbone")
    if model_id not in set(tokenized_ids(root)):
        st.info(
            "This model is not in the atlas' token store, so it cannot be reconstructed here "
            f"(run `weightatlas tokenize {root}`).",
            icon=":material/info:",
        )
        return
    if not (Atlas(root).backbone_dir / "model.safetensors").exists():
        st.info(f"No trained backbone yet: `weightatlas train {root}`.", icon=":material/info:")
        return
    try:
        with st.spinner("Encoding and decoding the model…"):
            report = cached_layer_report(str(root), stamp_, model_id, None)
    except (*USER_ERRORS, RuntimeError, KeyError) as e:
        user_error(e)
        return
    r2 = [r["r2"] for r in report if r.get("r2") is not None]
    c1, c2, c3 = st.columns(3)
    c1.metric("Layers", len(report))
    c2.metric("Median R²", f"{np.median(r2):.3f}" if r2 else "–")
    c3.metric("Values", f"{sum(r['n_values'] for r in report):,}")
    names = [r["name"] for r in report]
    default = [names[i] for i in np.unique(np.linspace(0, len(names) - 1, 6).round().astype(int))]
    chosen = st.multiselect(
        "Layers to compare",
        names,
        default=default,
        max_selections=MAX_HIST_LAYERS,
        key=f"hist_layers_{model_id}",
    )
    if chosen:
        st.plotly_chart(histogram_figure(report, chosen), key="hist", width="stretch")
    st.plotly_chart(error_figure({"backbone": report}), key="errors", width="stretch")


def depth_section(root: Path, stamp_: float, model_id: str) -> None:
    """Embedding spread along depth, with spectral metrics computed on demand."""
    st.subheader("Along depth: embedding spread vs spectral metrics")
    spread = cached_layer_rows(str(root), stamp_, model_id, None)
    key = ("spectra", str(root), model_id)
    if st.button("Compute spectral alpha", key="spectral_go", icon=":material/functions:"):
        try:
            with st.spinner("Fitting power laws to each layer's eigenvalues…"):
                st.session_state[key] = cached_spectra(str(root), stamp_, model_id)
        except (*USER_ERRORS, RuntimeError, ValueError) as e:
            user_error(e)
    spectra = st.session_state.get(key)
    if not spread and not spectra:
        st.caption("No per-layer embeddings for this model (`weightatlas embed`).")
        return
    st.plotly_chart(depth_figure(spread, spectra), key="depth", width="stretch")
    if spectra is None:
        st.caption("Spectral metrics are computed on demand (SVD of each weight matrix).")


def ablation_section(root: Path, stamp_: float, model_id: str) -> None:
    """Ablation backbones side by side: one layer's reconstruction each, and R² along depth."""
    backbones = ablation_backbones(root)
    if not backbones:
        return
    st.subheader("Ablation backbones")
    if model_id not in set(tokenized_ids(root)):
        st.caption("Needs the model in the token store.")
        return
    names = list(backbones)
    default = [n for n in names if n.startswith("mln-")] or names[:3]
    chosen = st.multiselect(
        "Backbones to compare",
        names,
        default=default,
        key="ablation_backbones",
        help="ATLAS/backbones/*: mln-* differ only in the loss normalisation (001 Table 1).",
    )
    reports: dict[str, list[dict[str, Any]]] = {}
    for name in ["backbone", *chosen]:
        bdir = None if name == "backbone" else str(backbones[name])
        try:
            with st.spinner(f"Reconstructing with {name}…"):
                reports[name] = cached_layer_report(str(root), stamp_, model_id, bdir)
        except (*USER_ERRORS, RuntimeError, KeyError, ValueError) as e:
            st.warning(f"{name}: {e}", icon=":material/warning:")
    if not reports:
        return
    layer_names = [r["name"] for r in next(iter(reports.values()))]
    layer = st.selectbox("Layer", layer_names, key="ablation_layer")
    cols = st.columns(len(reports))
    for col, (name, report) in zip(cols, reports.items()):
        bdir = Atlas(root).backbone_dir if name == "backbone" else backbones[name]
        r2 = [r["r2"] for r in report if r.get("r2") is not None]
        col.metric(
            f"{name} · {_norm_mode(bdir)}",
            f"{np.median(r2):.3f}" if r2 else "–",
            help="median per-layer R² of this model",
        )
        rows = [r for r in report if r["name"] == layer]
        if rows:
            col.plotly_chart(
                histogram_figure(rows, [layer]), key=f"ablation_hist_{name}", width="stretch"
            )
    st.plotly_chart(error_figure(reports), key="ablation_errors", width="stretch")


def _norm_mode(backbone_dir: Path) -> str:
    """The loss normalisation a backbone was trained with (``loss_norm`` in its config.json)."""
    import json

    try:
        cfg = json.loads((backbone_dir / "config.json").read_text())
    except (OSError, ValueError):
        return "?"
    train = cfg.get("train") if isinstance(cfg, dict) else None
    mode = train.get("loss_norm") if isinstance(train, dict) else None
    return f"loss_norm={mode}" if mode else "?"


def page() -> None:
    """Render the Layers page."""
    root = current_atlas()
    wait_for_imports()
    st.title("Layers", help="Weights of one model, layer by layer, and their reconstruction.")
    model_id = model_picker_ui(root)
    if model_id is None:
        return
    a = Atlas(root)
    stamp_ = stamp(
        a.tokens_dir / "index.json",
        a.backbone_dir / "model.safetensors",
        a.embeddings_dir / "layers.jsonl",
    )
    reconstruction_section(root, stamp_, model_id)
    depth_section(root, stamp_, model_id)
    ablation_section(root, stamp_, model_id)


page()
