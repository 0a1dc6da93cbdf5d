"""Layers page: one model's weights layer by layer.

Original vs reconstructed weight distributions through the backbone, per-layer R² and
Wasserstein error, the embedding spread along depth next to WeightWatcher-style spectral
metrics (003 Fig. 3), and ablation backbones side by side when the atlas holds them.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.atlas import Atlas
from core.catalog import (
    ablation_backbones,
    backbone_budget,
    backbone_validation,
    layer_rows,
    model_state_dict,
    models_with_weights,
    tokenized_ids,
)
from core.embeddings.fidelity import layer_report
from core.embeddings.spectral import layer_spectra
from core.errors import USER_ERRORS
from explorer.common import (
    current_atlas,
    display_path,
    escape_md,
    stamp,
    user_error,
    wait_for_imports,
)
from explorer.figures import (
    PALETTE,
    default_layers,
    depth_figure,
    error_figure,
    histogram_figure,
    is_constant,
)

MAX_HIST_LAYERS = 12
AUTO_SPECTRA_VALUES = 2_000_000  # spectral metrics of smaller models are computed on page load


@st.cache_data(show_spinner=False, max_entries=256)
def cached_model_values(root: str, stamp_: float, model_id: str) -> int:
    """Number of weight values of a model (from its stored tensors' shapes)."""
    return int(sum(v.numel() for v in model_state_dict(root, model_id).values()))


def model_values(root: Path, model_id: str) -> int:
    """:func:`cached_model_values` (0 where the weights cannot be read: computed on demand)."""
    try:
        return cached_model_values(str(root), stamp(Atlas(root).manifest_path), model_id)
    except (*USER_ERRORS, OSError, KeyError, ValueError):
        return AUTO_SPECTRA_VALUES + 1


@st.cache_data(show_spinner=False, max_entries=64)
def cached_layer_report(root: str, stamp_: float, model_id: str, backbone: str | None):
    """core.embeddings.fidelity.layer_report for one model and backbone (runs the backbone once)."""

    return layer_report(root, model_id, backbone)


@st.cache_data(show_spinner=False, max_entries=64)
def cached_spectra(root: str, stamp_: float, model_id: str) -> list[dict[str, Any]]:
    """Spectral metrics of every weight matrix of one model (core.embeddings.spectral)."""

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
    ids = cached_layer_models(str(root), a.tokens.stamp() + stamp(a.manifest_path))
    if not ids:
        st.warning(
            "This atlas holds neither token store nor weights for any model; "
            f"run `weightatlas tokenize {display_path(root)}`.",
            icon=":material/warning:",
        )
        return None
    pre = st.session_state.get("detail_id")  # the model chosen on the Atlas page
    if pre and pre not in ids:
        total = len(Atlas(root).accepted())
        st.info(
            f"{escape_md(pre)}, chosen on the Atlas page, has no stored weights or tokens in "
            f"this atlas (only {len(ids)} of its {total} models have), so its layers cannot be "
            "shown here. Choose one of those below.",
            icon=":material/info:",
        )
    index = ids.index(pre) if pre in ids else 0
    return st.selectbox(
        "Model",
        ids,
        index=index,
        key="layers_model",
        help=f"The {len(ids)} models of this atlas with stored weights or tokens.",
    )


def reconstruction_section(root: Path, stamp_: float, model_id: str) -> None:
    """Original vs reconstructed distributions and per-layer errors (main backbone)."""
    st.subheader("Reconstruction through the backbone")
    if model_id not in set(tokenized_ids(root)):
        st.info(
            "This model is not in the atlas' token store, so it cannot be reconstructed here "
            f"(run `weightatlas tokenize {display_path(root)}`).",
            icon=":material/info:",
        )
        return
    if not Atlas(root).backbone.weights_path.exists():
        st.info(
            f"No trained backbone yet: `weightatlas train {display_path(root)}`.",
            icon=":material/info:",
        )
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
    default = default_layers(report)
    chosen = st.multiselect(
        "Layers to compare",
        names,
        default=default,
        max_selections=MAX_HIST_LAYERS,
        key=f"hist_layers_{model_id}",
    )
    if chosen:
        st.plotly_chart(histogram_figure(report, chosen), key="hist", width="stretch")
    constant = [r["name"] for r in report if is_constant(r)]
    if constant:
        st.caption(
            f"{len(constant)} constant layer(s) (every value the same, e.g. a freshly "
            "initialised norm or bias): R² is undefined there, so they have no R² point below: "
            + escape_md(", ".join(constant[:8]) + (" …" if len(constant) > 8 else ""))
        )
    st.plotly_chart(error_figure({"backbone": report}), key="errors", width="stretch")


def depth_section(root: Path, stamp_: float, model_id: str) -> None:
    """Embedding spread along depth, with spectral metrics computed on demand."""
    st.subheader("Along depth: embedding spread vs spectral metrics")
    spread = cached_layer_rows(str(root), stamp_, model_id, None)
    key = ("spectra", str(root), model_id)
    small = model_values(root, model_id) <= AUTO_SPECTRA_VALUES
    if key not in st.session_state and small:  # a few SVDs: computed with the page
        try:
            with st.spinner("Fitting power laws to each layer's eigenvalues…"):
                st.session_state[key] = cached_spectra(str(root), stamp_, model_id)
        except (*USER_ERRORS, RuntimeError, ValueError) as e:
            user_error(e)
    if not small and st.button(
        "Compute spectral alpha", key="spectral_go", icon=":material/functions:"
    ):
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
        st.caption(
            "Spectral metrics are computed on demand for models above "
            f"{AUTO_SPECTRA_VALUES / 1e6:.0f} M values (SVD of each weight matrix): press "
            "Compute spectral alpha."
        )


def budget_text(budget: dict[str, Any]) -> str:
    """``demo preset · 2,000 steps · width 128 · latent 64 · 200 training models``."""
    parts = []
    if "preset" in budget:
        parts.append(f"{budget['preset']} preset")
    if "steps" in budget:
        parts.append(f"{budget['steps']:,} steps")
    if "d_model" in budget:
        parts.append(f"width {budget['d_model']}")
    if "latent_dim" in budget:
        parts.append(f"latent {budget['latent_dim']}")
    if "train_models" in budget:
        parts.append(f"{budget['train_models']:,} training models")
    return " · ".join(parts) or "budget unknown"


VALIDATION_NAMES = {
    "val_r2_by_kind": "R² (all values pooled)",
    "val_layer_r2_median_by_kind": "median per-layer R²",
    "val_layer_std_ratio_median_by_kind": "median per-layer std ratio",
    "val_layers_by_kind": "layers",
    "val_layer_r2_median_conv_linear": "median per-layer R², conv + linear",
    "val_r2": "R² (all values pooled)",
    "val_rec_loss": "reconstruction loss",
    "val_models": "held-out models",
    "val_tokens": "tokens",
}


def validation_section(root: Path) -> None:
    """The backbone's own validation metrics (held-out models), overall and per layer kind."""
    row = backbone_validation(Atlas(root).backbone_dir)
    if not row:
        return
    with st.expander("Backbone validation on held-out models", icon=":material/fact_check:"):
        scalars = {
            k: v for k, v in row.items() if k.startswith("val_") and isinstance(v, int | float)
        }
        tables = {
            k: v
            for k, v in row.items()
            if k.startswith("val_") and k.endswith("_by_kind") and isinstance(v, dict)
        }
        st.caption(
            f"Step {row.get('step', '?')}: every layer of the validation split's models "
            "(the backbone never trained on them), reconstructed through the backbone. "
            "R²: 1 is perfect; std ratio: std of the reconstruction over std of the original "
            "(1 keeps the spread, below 1 shrinks it)."
        )
        if scalars:
            cols = st.columns(min(len(scalars), 4))
            for j, (k, v) in enumerate(scalars.items()):
                cols[j % len(cols)].metric(
                    VALIDATION_NAMES.get(k, k.removeprefix("val_").replace("_", " ")),
                    f"{v:,.3f}" if isinstance(v, float) else f"{v:,}",
                )
        if tables:
            kinds = sorted({kind for t in tables.values() for kind in t})
            st.dataframe(
                [
                    {
                        "layer kind": kind,
                        **{
                            VALIDATION_NAMES.get(k, k.removeprefix("val_").replace("_", " ")): (
                                t.get(kind)
                            )
                            for k, t in tables.items()
                        },
                    }
                    for kind in kinds
                ],
                hide_index=True,
            )


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
        help="Backbones the ablation study trained on this atlas (ATLAS/backbones/*): the "
        "mln-* ones differ only in how the reconstruction loss is normalised (none, per "
        "token, masked), tok-* in the tokenizer, comp-* in which models they saw.",
    )
    main = backbone_budget(Atlas(root).backbone_dir)
    if chosen:
        arm = backbone_budget(backbones[chosen[0]])
        differ = [
            k for k in ("preset", "steps", "d_model", "latent_dim") if main.get(k) != arm.get(k)
        ]
        if differ:
            st.caption(
                f"Different budgets: the atlas backbone was trained with {budget_text(main)}; "
                f"the ablation backbones with {budget_text(arm)} each. So the atlas backbone "
                "reconstructs better than any ablation arm even with the same loss setting: "
                "compare the arms with each other."
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
    st.caption("Blue: original weights; orange: reconstructed by each backbone.")
    cols = st.columns(len(reports))
    for col, (name, report) in zip(cols, reports.items()):
        bdir = Atlas(root).backbone_dir if name == "backbone" else backbones[name]
        r2 = [r["r2"] for r in report if r.get("r2") is not None]
        colour = PALETTE[list(reports).index(name) % len(PALETTE)]  # its line's colour below
        col.markdown(  # a swatch of its colour in the R² plot below, then its full name
            f"<span style='color:{colour}'>■</span> **{escape_md(html.escape(name))}**",
            unsafe_allow_html=True,
        )
        col.caption(_norm_mode(bdir))
        col.metric(
            "median per-layer R²",
            f"{np.median(r2):.3f}" if r2 else "–",
            help=f"Median per-layer R² of this model. Trained with {budget_text(backbone_budget(bdir))}.",
        )
        rows = [r for r in report if r["name"] == layer]
        if rows:
            col.plotly_chart(
                histogram_figure(rows, [layer], legend=False),
                key=f"ablation_hist_{name}",
                width="stretch",
            )
    st.plotly_chart(error_figure(reports), key="ablation_errors", width="stretch")


def _norm_mode(backbone_dir: Path) -> str:
    """The loss normalisation a backbone was trained with (``core.catalog.backbone_budget``)."""
    mode = backbone_budget(backbone_dir).get("loss_norm")
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
    stamp_ = stamp(a.tokens.index_path, a.backbone.weights_path, a.embeddings.layers_path)
    reconstruction_section(root, stamp_, model_id)
    validation_section(root)
    depth_section(root, stamp_, model_id)
    ablation_section(root, stamp_, model_id)


page()
