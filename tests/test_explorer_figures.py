"""explorer.figures: the map and layer figures (plotly), their colours, labels and selection."""

from __future__ import annotations

import numpy as np
import torch

from core.catalog import map_table
from explorer import figures
from explorer.figures import map_figure, selected_ids


def test_map_figure_carries_ids_in_customdata(syn):
    table = map_table(syn)
    keep = table.filter(family=["cnn", "vit"])
    fig = map_figure(table, "umap", "family", keep, lineage=True)
    ids = {m: i for i, m in enumerate(table.ids)}
    seen = 0
    for trace in fig.data:
        if trace.customdata is None:
            continue
        for (x, y), cd in zip(zip(trace.x, trace.y), trace.customdata):
            i = ids[cd[0]]
            assert np.allclose([x, y], table.coords["umap"][i])
            assert table.columns["family"][i] in ("cnn", "vit")
            seen += 1
    assert seen == int(keep.sum())
    assert any(t.mode == "lines" for t in fig.data)  # lineage edges
    # same choices -> the same figure (Streamlit keeps the selection)
    again = map_figure(table, "umap", "family", keep, lineage=True)
    assert fig.to_json() == again.to_json()
    event = {"selection": {"points": [{"customdata": [table.ids[3], "x"]}, {"point_index": 2}]}}
    assert selected_ids(event) == [table.ids[3]]


def _report(names: list[str], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for n in names:
        x = rng.normal(0, 0.1, 200)
        out.append(
            {
                "name": n,
                "original": x.tolist(),
                "reconstructed": (x + rng.normal(0, 0.02, 200)).tolist(),
                "r2": 0.9,
                "w1_over_std": 0.1,
            }
        )
    return out


def test_layer_figures_are_labelled_on_one_depth_axis():
    from explorer.figures import depth_figure, error_figure, histogram_figure

    names = [f"encoder.layer.{i}.attention.output.dense.weight" for i in range(5)] + ["head.b"]
    report = _report(names)
    hist = histogram_figure(report, names[:4])
    layout = hist.layout
    assert layout.xaxis.title.text == "weight value" and layout.yaxis.title.text == "density"
    assert all(t.histnorm == "probability density" for t in hist.data)
    assert layout.legend.x > 1  # right of the plots, clear of the subplot titles
    # panel titles: the name cut to fit its third of the page, the R² on its own line
    first = hist.layout.annotations[0].text
    assert len(first.split("<br>")[0]) <= 30 and first.split("<br>")[1].startswith("R² ")
    err = error_figure({"backbone": report, "mln-none": _report(names, 1)})
    assert err.layout.xaxis.matches == "x2" or err.layout.xaxis2.matches == "x"  # shared
    assert list(err.layout.xaxis2.tickvals) == list(range(len(names)))
    assert err.layout.xaxis2.ticktext[-1] == "head.b" and "…" in err.layout.xaxis2.ticktext[0]
    assert [t.customdata[0] for t in err.data][:1] == [names[0]]  # full name on hover
    assert err.layout.yaxis.title.text == "R²" and err.layout.yaxis2.title.text == "W1 / std"
    spread = [{"name": n, "spread": 0.1 * i} for i, n in enumerate(names)]
    spectra = [
        {"name": n, "alpha": 3.0, "log_spectral_norm": 0.5} for n in names[:-1]
    ]  # matrices only
    dep = depth_figure(spread, spectra)
    titles = {dep.layout[a].title.text for a in ("yaxis", "yaxis2", "yaxis3")}
    assert titles == {"alpha", "log10 spectral norm", "spread"}
    assert dep.layout.xaxis2.title.text == "layer (in depth order)"
    # spectra sit at their layer's depth position on the shared axis
    assert list(dep.data[0].x) == list(range(len(names) - 1))


def test_colours_are_fixed_per_value_across_filters(syn):
    from explorer.figures import colour_map

    table = map_table(syn)
    every = map_figure(table, "umap", "family", table.filter())
    only = map_figure(table, "umap", "family", table.filter(family=["vit"]))
    colours = {t.name.split(" (")[0]: t.marker.color for t in every.data}
    assert [t.name.split(" (")[0] for t in only.data] == ["vit"]
    assert only.data[0].marker.color == colours["vit"] == colour_map(table, "family")["vit"]
    assert only.layout.showlegend is True  # kept with a single trace
    acc = map_figure(table, "pca", "accuracy", table.filter(family=["vit"]))
    scale = acc.data[-1].marker
    finite = np.asarray(table.columns["accuracy"], dtype=float)
    assert (scale.cmin, scale.cmax) == (np.nanmin(finite), np.nanmax(finite))
    assert "% of variance" in acc.layout.xaxis.title.text
    assert acc.layout.clickmode == "event+select" and acc.layout.dragmode == "pan"


def test_layer_figures_fix_issue_27_defects():
    """One-token layers stay off the spread line; no empty spectral panel; constant layers say
    so; default histograms are matrices, not 2-value bias vectors; each ablation backbone has
    one colour in both panels and in the legend, distinct from the others."""
    from explorer.figures import (
        CONSTANT_NOTE,
        default_layers,
        depth_figure,
        error_figure,
        histogram_figure,
    )

    names = ["emb.weight", "emb.bias", "l1.weight", "l1.bias", "norm.weight", "l2.weight"]
    spread = [
        {"name": n, "spread": 0.0 if n.endswith(("bias", "norm.weight")) else 0.5, "n_tokens": t}
        for n, t in zip(names, [4, 1, 6, 1, 1, 3])
    ]
    dep = depth_figure(spread, None)
    line = next(t for t in dep.data if t.name == "embedding spread")
    assert list(line.y) == [0.5, 0.5, 0.5]  # no zig-zag down to the one-token layers' 0
    assert next(t for t in dep.data if t.name == "one token: no spread").x == (1, 3, 4)
    assert "yaxis2" not in dep.layout or dep.layout.yaxis2.title.text is None  # one panel
    assert len(dep.layout.annotations) == 1

    report = _report(names)
    for r, shape in zip(report, [[8, 4], [2], [4, 4], [2], [4], [3, 4]]):
        r["shape"] = shape
    report[4].update(original=[1.0] * 50, reconstructed=[0.9] * 50, r2=None)  # a constant norm
    assert default_layers(report) == ["emb.weight", "l1.weight", "l2.weight"]
    hist = histogram_figure(report, ["l1.weight", "norm.weight"])
    assert CONSTANT_NOTE in hist.layout.annotations[1].text

    err = error_figure({"backbone": report, "mln-none": _report(names, 1), "tok-x": report})
    by_name: dict[str, set] = {}
    for t in err.data:
        by_name.setdefault(t.name, set()).add(t.line.color)
    assert all(len(c) == 1 for c in by_name.values())  # R² and W1 lines share the colour
    assert len({c for cs in by_name.values() for c in cs}) == 3  # and no two backbones do
    assert {t.name for t in err.data if t.showlegend} == set(by_name)


def _rgb(colour: str) -> np.ndarray:
    if colour.startswith("rgb"):
        return np.array([float(v) for v in colour[colour.index("(") + 1 : -1].split(",")[:3]])
    return np.array([int(colour.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)], dtype=float)


def test_map_colours_and_titles(syn):
    """Issue 27: the demo's nine families get colours well apart (resnet and vit were two
    pinks); a numeric colour is titled once (the colour bar), not three times."""
    from explorer.figures import PALETTE

    first = [_rgb(c) for c in PALETTE[:10]]
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(first) for b in first[i + 1 :]]
    assert min(gaps) > 60, min(gaps)
    table = map_table(syn)
    acc = map_figure(table, "umap", "accuracy", table.filter())
    titles = [acc.layout.legend.title.text or ""] + [t.name or "" for t in acc.data if t.showlegend]
    titles += [t.marker.colorbar.title.text or "" for t in acc.data if t.marker.showscale]
    assert sum("test accuracy" in t for t in titles) == 1, titles


def test_generated_layer_histogram_has_axis_labels():
    from explorer.figures import generated_layer_figure

    sd = {"w": torch.randn(8, 4)}
    fig = generated_layer_figure({"m0": sd}, {"org/p": sd}, "w")
    assert fig.layout.xaxis.title.text == "weight value"
    assert fig.layout.yaxis.title.text == "density"


def test_small_maps_draw_as_svg_and_large_ones_with_webgl(syn, monkeypatch):
    """Every trace of one map has one type: SVG up to ``WEBGL_ABOVE`` shown models (no WebGL
    context before the first paint), WebGL above, edges and placed models included."""
    table = map_table(syn)
    keep = table.filter()
    placed = {"mine": (0.0, 0.0, True)}

    def types() -> set[str]:
        fig = map_figure(table, "umap", "family", keep, lineage=True, placed=placed)
        assert any(t.mode == "lines" for t in fig.data) and len(fig.data) > 3
        return {t.type for t in fig.data}

    assert int(keep.sum()) <= figures.WEBGL_ABOVE and types() == {"scatter"}
    monkeypatch.setattr(figures, "WEBGL_ABOVE", int(keep.sum()) - 1)
    assert types() == {"scattergl"}
