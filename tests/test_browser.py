"""The explorer in a real browser: a live ``streamlit run`` server and headless Chromium.

Runs on the embedded demo atlas itself (``assets/demo``; ``$WEIGHTATLAS_ATLAS`` if set) with
the workspace pointed at a temporary folder, and checks what a user does: a click selects a
point, a lasso or a search opens the model panel (a search after a selection shows the searched
model), a filter keeps every family's colour and the legend, the Layers page draws its plots,
the Generate page's transformers tab offers working entries with their own task, and a
generation on the demo writes nothing inside the repository. Without a demo atlas the map tests
run on a generated atlas and the demo-only ones skip. Screenshots go to a temporary folder
(``python -m explorer.bench screenshots`` retakes the README's).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import TREES_ZOO

from core.catalog import map_table
from explorer.bench import (
    CHROMIUM,
    REPO,
    AppServer,
    choose,
    click_point,
    isolated_model,
    lasso,
    launch_browser,
    synthetic_atlas,
    time_to_map,
    wait_for_map,
    wait_idle,
)
from explorer.screenshots import generate_small, take_screenshots

pytestmark = pytest.mark.browser
APP = REPO / "explorer" / "app.py"
DEMO = Path(os.environ.get("WEIGHTATLAS_ATLAS") or REPO / "assets" / "demo")
HAS_DEMO = (DEMO / "tokens" / "index.json").exists()
needs_demo = pytest.mark.skipif(not HAS_DEMO, reason="no demo atlas (weightatlas demo)")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    if HAS_DEMO:
        return DEMO
    return synthetic_atlas(tmp_path_factory.mktemp("browser") / "atlas", n=500)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(atlas, workspace):
    with AppServer(APP, atlas, env={"WEIGHTATLAS_WORKSPACE": str(workspace)}) as s:
        s.wait_ready()
        yield s


def open_page(browser, server, size=(1400, 1400)):
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    return page, errors


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0


def traces(page) -> list[dict]:
    """Name, marker colour and point count of each drawn map trace."""
    return page.evaluate(
        """() => (document.querySelector('.stPlotlyChart .js-plotly-plot')?._fullData || [])
              .filter(t => t.customdata)
              .map(t => ({name: t.name, color: t.marker.color, n: t.x.length}))"""
    )


def test_atlas_page_map_lasso_and_panel(browser, server, atlas, tmp_path):
    page, errors = open_page(browser, server)
    wait_for_map(page)
    wait_idle(page)
    page.get_by_role("heading", name="Atlas").first.wait_for()
    assert sum(t["n"] for t in traces(page)) == len(map_table(atlas))
    assert page.get_by_role("combobox", name="Colour by").count() == 1
    lasso(page, frac=0.3)
    page.get_by_text("models selected").first.wait_for(timeout=60_000)
    page.get_by_text("Nearest neighbours").first.wait_for(timeout=60_000)
    wait_idle(page)
    no_exception(page)
    page.screenshot(path=str(tmp_path / "atlas.png"))
    assert not errors, errors
    page.close()


def test_click_selects_a_point(browser, server, atlas):
    page, errors = open_page(browser, server)
    wait_for_map(page)
    wait_idle(page)
    target = isolated_model(atlas)  # a fixed row can sit under another family's point
    click_point(page, target)
    page.get_by_role("heading", name=target, exact=True).wait_for(timeout=60_000)
    wait_idle(page)
    selected = page.evaluate(
        """() => document.querySelector('.stPlotlyChart .js-plotly-plot')._fullData
              .filter(t => t.customdata && t.selectedpoints && t.selectedpoints.length)
              .map(t => t.customdata[t.selectedpoints[0]][0])"""
    )
    assert selected == [target]  # plotly marks the clicked point, the app opens its panel
    no_exception(page)
    assert not errors, errors
    page.close()


def selected_count(page) -> int:
    """Points plotly shows as selected on the map (0 without a selection)."""
    return page.evaluate(
        """() => (document.querySelector('.stPlotlyChart .js-plotly-plot')?._fullData || [])
              .reduce((n, t) => n + ((t.customdata && t.selectedpoints) || []).length, 0)"""
    )


def test_search_after_a_selection_shows_the_searched_model(browser, server, atlas):
    """The bench-app failure: a lasso, then a search; the searched model's panel must open.

    Only the details below the map rerun: the map is the same drawn chart afterwards (not
    mounted anew) and still shows the lasso selection.
    """
    page, errors = open_page(browser, server)
    wait_for_map(page)
    wait_idle(page)
    lasso(page, frac=0.3)
    page.get_by_text("models selected").first.wait_for(timeout=60_000)
    wait_idle(page)
    n_lasso = selected_count(page)
    assert n_lasso > 1
    page.evaluate("() => { document.querySelector('.stPlotlyChart .js-plotly-plot')._kept = 1; }")
    target = map_table(atlas).ids[len(map_table(atlas)) // 2]
    box = page.get_by_label("Search model id")
    box.fill(target)
    box.press("Enter")
    page.get_by_role("heading", name=target, exact=True).wait_for(timeout=60_000)
    wait_idle(page)
    kept = page.evaluate(
        "() => document.querySelector('.stPlotlyChart .js-plotly-plot')?._kept === 1"
    )
    assert kept, "the map was drawn anew for a search"
    assert selected_count(page) == n_lasso
    no_exception(page)
    assert not errors, errors
    page.close()


def test_filter_keeps_colours_and_legend(browser, server, atlas):
    page, errors = open_page(browser, server)
    wait_for_map(page)
    wait_idle(page)
    before = {t["name"].split(" (")[0]: t["color"] for t in traces(page)}
    family = sorted(before)[-1]
    page.get_by_role("button", name="Filter and options").click()
    page.get_by_role("combobox", name="Family").click()
    page.get_by_role("option", name=family, exact=True).click()
    page.keyboard.press("Escape")
    page.wait_for_function(
        """() => (document.querySelector('.stPlotlyChart .js-plotly-plot')?._fullData || [])
              .filter(t => t.customdata).length === 1""",
        timeout=60_000,
    )
    wait_idle(page)
    after = traces(page)
    assert [t["name"].split(" (")[0] for t in after] == [family]
    assert after[0]["color"] == before[family]  # same colour as on the unfiltered map
    assert page.evaluate(
        "() => document.querySelector('.stPlotlyChart .js-plotly-plot')._fullLayout.showlegend"
    )
    assert page.locator(".stPlotlyChart .legend .traces").count() >= 1
    # colour by task and back: colours are fixed per value, not per position in the list
    choose(page, "Colour by", "task")
    wait_idle(page)
    no_exception(page)
    assert not errors, errors
    page.close()


def test_layers_page(browser, server, atlas, tmp_path):
    page, errors = open_page(browser, server)
    page.get_by_role("link", name="Layers").click()
    page.get_by_role("heading", name="Layers").first.wait_for(timeout=60_000)
    wait_idle(page)
    if (Path(atlas) / "tokens").is_dir():
        page.get_by_label("Model").first.wait_for(timeout=120_000)  # count() would not wait
        page.locator(".stPlotlyChart").first.wait_for(timeout=120_000)
        page.get_by_text("density").first.wait_for(timeout=60_000)  # histogram y axis
        if page.get_by_role("button", name="Compute spectral alpha").count():  # large models
            page.get_by_role("button", name="Compute spectral alpha").click()
            page.get_by_text("Spectral metrics are computed on demand").wait_for(
                state="detached", timeout=120_000
            )
            wait_idle(page)
        # small models: drawn with the page (issue 27: the panel was empty until pressed)
        page.get_by_text("Along depth").first.scroll_into_view_if_needed(timeout=60_000)
        page.get_by_text("log10 spectral norm").first.wait_for(timeout=60_000)
        page.get_by_text("layer (in depth order)").first.wait_for(timeout=60_000)
    else:
        page.get_by_text("weightatlas tokenize").first.wait_for()
    no_exception(page)
    page.screenshot(path=str(tmp_path / "layers.png"))
    assert not errors, errors
    page.close()


@needs_demo
def test_transformers_tab_offers_working_entries_with_their_task(browser, server, atlas):
    from core.atlas import Atlas

    rows = {r["id"]: r for r in Atlas.open(atlas).accepted()}
    page, errors = open_page(browser, server)
    page.get_by_role("link", name="Generate").click()
    page.get_by_role("heading", name="Generate").first.wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_text("transformers config", exact=True).click()
    wait_idle(page)
    label = "Model folder (the atlas' transformers models)"
    page.get_by_role("combobox", name=label).click()
    options = [o.inner_text() for o in page.get_by_role("option").all()]
    page.keyboard.press("Escape")
    assert len(options) >= 5
    assert all(rows[o]["library"] == "transformers" for o in options), options
    for option in options:  # each suggested entry resolves, and Task shows the model's task
        task = rows[option]["labels"]["task"]
        choose(page, label, option)
        try:
            page.wait_for_function(  # the rerun for this folder has drawn its Task box
                """(t) => { const i = document.querySelector('input[aria-label="Task"]');
                            return i && i.value === t; }""",
                arg=task,
                timeout=120_000,
            )
        except Exception:  # say what the page showed instead
            shown = page.evaluate(
                """() => [document.querySelector('input[aria-label="Task"]')?.value,
                          [...document.querySelectorAll('[data-testid="stAlert"]')]
                            .map(a => a.innerText)]"""
            )
            raise AssertionError(f"{option}: Task box {shown[0]!r}, alerts {shown[1]}") from None
        wait_idle(page)
        page.get_by_label("K draws").wait_for(timeout=120_000)
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0, option
        page.get_by_text(f"task {task}").first.wait_for()
    no_exception(page)
    assert not errors, errors
    page.close()


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (size, mtime_ns), without caches, .git and the venv."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@needs_demo
def test_generation_on_the_embedded_demo_writes_nothing_inside_the_repository(
    browser, server, atlas, workspace, tmp_path
):
    assert atlas.resolve().is_relative_to(REPO) or os.environ.get("WEIGHTATLAS_ATLAS")
    before = _tree(REPO)
    page, errors = open_page(browser, server)
    page.get_by_role("link", name="Generate").click()
    page.get_by_role("heading", name="Generate").first.wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_text("your workspace, never the atlas").first.wait_for(timeout=120_000)
    generate_small(page, k=3, m=1)
    page.get_by_role("button", name=".zip").first.wait_for()
    no_exception(page)
    page.screenshot(path=str(tmp_path / "generate.png"))
    after = _tree(REPO)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    # the embedded atlas is untouched, file for file
    assert not [k for k in changed if k.startswith("assets/")], changed
    # and nothing a generation writes (weights, configs, progress files, logs) appeared
    # anywhere else; source edits and runs/ belong to other work on a shared checkout
    written_here = [
        k
        for k in changed
        if not k.startswith("runs/")
        and (
            Path(k).suffix not in (".py", ".md", ".ipynb", ".toml", ".txt", ".png")
            or "generated" in k
        )
    ]
    assert not written_here, written_here
    written = list(workspace.glob("*/generated/*/model.safetensors"))
    assert len(written) == 1 and not (atlas / "generated").exists()
    assert not errors, errors
    page.close()


def test_not_an_atlas_page_offers_the_way_back(browser, tmp_path):
    """A mistyped atlas path: the page says what was looked for and how to make an atlas, and
    (with the demo present) one click opens the demo again."""
    default = None if HAS_DEMO and not os.environ.get("WEIGHTATLAS_ATLAS") else tmp_path / "x"
    with AppServer(APP, default, env={"WEIGHTATLAS_WORKSPACE": str(tmp_path / "ws")}) as s:
        s.wait_ready()
        page, errors = open_page(browser, s)
        if default is None:
            wait_for_map(page)
            box = page.locator('[data-testid="stSidebar"] input').first
            box.fill(str(tmp_path / "mistyped"))
            box.press("Enter")
        page.get_by_text("No atlas to show yet").first.wait_for(timeout=60_000)
        page.get_by_text("Make an atlas of your own models").first.wait_for()
        no_exception(page)
        if default is None:
            page.get_by_role("button", name="Open the demo atlas").click()
            wait_for_map(page)
            page.get_by_role("heading", name="Atlas").first.wait_for()
        assert not errors, errors
        page.close()


@pytest.fixture(scope="module")
def own_atlas(tmp_path_factory) -> Path:
    """An atlas of one's own HF cache: three tiny transformers models built here (no download),
    collected from the cache folder, tokenized, with an untrained ci backbone."""
    from conftest import ci_backbone, tiny_hf_cache

    from core.atlas import Atlas
    from core.backbone.model import save_backbone
    from core.collection.collect import collect
    from core.tokens.tokenize import tokenize

    root = tmp_path_factory.mktemp("own")
    tiny_hf_cache(root / "hub")
    atlas = root / "atlas"
    collect(atlas, overrides={"source": str(root / "hub")}, progress=False)
    tokenize(atlas, token_size=64, progress=False)
    save_backbone(ci_backbone(64), Atlas(atlas).backbone_dir)
    return atlas


def test_generation_from_your_own_transformers_model(browser, own_atlas, tmp_path):
    """Issue 27: the Generate page generates from a transformers model collected from an HF
    cache: a ViT classifier built for 3-channel 32 px images, on digits10 (grey copied to RGB,
    resized; said so), named by its repo id; and a BERT without head, unscored. Nothing is
    fetched from outside this server (the favicon included)."""
    outside: list[str] = []
    with AppServer(APP, own_atlas, env={"WEIGHTATLAS_WORKSPACE": str(tmp_path / "ws")}) as s:
        s.wait_ready()
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "request",
            lambda r: (
                None if r.url.startswith((s.url, "data:", "blob:")) else outside.append(r.url)
            ),
        )
        page.goto(s.url)
        page.get_by_role("link", name="Generate").click()
        page.get_by_role("heading", name="Generate").first.wait_for(timeout=60_000)
        wait_idle(page)
        page.get_by_text("transformers config", exact=True).click()
        wait_idle(page)
        label = "Model folder (the atlas' transformers models)"
        choose(page, label, "tiny/vit-classifier")
        # its own caption (the first entry, a BERT, had a Task box too): runs on image tasks
        page.get_by_text("Generated unscored: no accuracy").first.wait_for(timeout=120_000)
        wait_idle(page)
        choose(page, "Task", "digits10")
        page.get_by_text("grey copied to RGB, 8x8 resized to 32x32 px").first.wait_for(
            timeout=120_000
        )
        generate_small(page, k=2, m=1, timeout_ms=600_000)
        page.get_by_role("button", name=".zip").first.wait_for()
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        written = list((tmp_path / "ws").glob("*/generated/*/model.safetensors"))
        assert len(written) == 1 and "tiny-vit-classifier--digits10" in str(written[0])

        choose(page, label, "tiny/bert-features")
        page.get_by_text("no classification head").first.wait_for(timeout=120_000)
        wait_idle(page)
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        generate_small(page, k=2, m=1, timeout_ms=600_000)
        page.get_by_text("generated unscored").first.wait_for(timeout=60_000)
        no_exception(page)
        page.screenshot(path=str(tmp_path / "own.png"), full_page=True)
        assert not errors, errors
        page.close()
    assert not outside, outside


# ------------------------------------------------------------ model trees (issue 26)


@pytest.fixture(scope="module")
def trees_server(tmp_path_factory, workspace):
    """A real embedded atlas of zoo model trees (mlp and cnn, 2 roots each) with its lineage
    table: zoo -> collect -> tokenize -> (untrained ci backbone) embed -> lineage (~80 s)."""
    import torch

    from core.atlas import Atlas
    from core.backbone.model import BACKBONE_PRESETS, Backbone, BackboneConfig, save_backbone
    from core.collection.collect import collect
    from core.config import build_config
    from core.embeddings.embed import embed
    from core.tokens.tokenize import tokenize
    from core.trees.lineage import lineage
    from core.zoos.zoo import zoo

    root = tmp_path_factory.mktemp("trees")
    z = zoo(
        "ci",
        root / "zoo",
        overrides=TREES_ZOO,
        progress=False,
    )
    atlas = root / "atlas"
    collect(atlas, "demo", {"source": str(z)}, progress=False)
    tokenize(atlas, token_size=64, progress=False)
    cfg = build_config(BackboneConfig, BACKBONE_PRESETS, "ci", overrides={"token_size": 64})
    torch.manual_seed(0)
    save_backbone(Backbone(cfg).eval(), Atlas(atlas).backbone_dir)
    embed(atlas, "ci")
    lineage(atlas, progress=False)
    with AppServer(APP, atlas, env={"WEIGHTATLAS_WORKSPACE": str(workspace)}) as s:
        s.wait_ready()
        yield s, atlas


def test_lineage_toggle_draws_edges_and_a_child_shows_its_family(browser, trees_server):
    from core.trees.table import LineageTable, family

    server, atlas = trees_server
    rows = LineageTable(atlas).by_id()
    # a child the weights place under its declared parent, with siblings
    child = next(
        m
        for m, r in sorted(rows.items())
        if r["status"] == "agrees" and r["relation"] == "finetune" and family(rows, m)["siblings"]
    )
    fam = family(rows, child)
    page, errors = open_page(browser, server)
    wait_for_map(page)
    wait_idle(page)
    lines = """() => (document.querySelector('.stPlotlyChart .js-plotly-plot')?._fullData || [])
                 .filter(t => t.mode === 'lines' && t.name.startsWith('lineage'))
                 .map(t => ({name: t.name, n: t.x.length / 3}))"""
    assert page.evaluate(lines) == []
    page.get_by_role("button", name="Filter and options").click()
    page.get_by_text("Lineage edges from the weights").click()
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => ({lines})().length > 0", timeout=60_000)
    wait_idle(page)
    drawn = {t["name"].rsplit(" (", 1)[0]: t["n"] for t in page.evaluate(lines)}
    edges = sum(
        len(r["parent"]) if isinstance(r["parent"], list) else r["parent"] is not None
        for r in rows.values()
    )
    assert sum(drawn.values()) == edges  # every recovered parent edge, flagged ones in red
    assert drawn.get("lineage flags (declaration missing or contradicted)", 0) >= 1
    page.get_by_role("textbox", name="Search model id").fill(child)
    page.keyboard.press("Enter")
    page.get_by_text("Family tree").first.wait_for(timeout=60_000)
    wait_idle(page)
    page.locator('[data-testid="stTable"]').nth(1).wait_for(state="attached", timeout=60_000)
    text = " ".join(t or "" for t in page.locator('[data-testid="stTable"]').all_text_contents())
    no_exception(page)
    assert not errors, errors
    page.close()
    assert fam["parents"][0] in text and "sibling" in text
    assert all(s in text for s in fam["siblings"][:3]), (fam["siblings"], text[:2000])


def test_lineage_screenshot_turns_the_edges_on_and_zooms_onto_a_tree(
    browser, trees_server, tmp_path
):
    from PIL import Image

    _, atlas = trees_server
    with pytest.raises(ValueError, match="unknown screenshot"):
        take_screenshots(tmp_path, atlas, only=("lineage", "nope"))
    # it waits for the lineage edge traces and for the zoomed axis range, or raises
    shots = take_screenshots(tmp_path, atlas, only=("lineage",), browser=browser)
    assert shots == [tmp_path / "lineage.png"]
    assert Image.open(shots[0]).size == (1280, 800)


def test_time_to_map_counts_a_cold_load_from_server_start_and_from_navigation(browser, tmp_path):
    """``bench app``'s two first-paint figures: from ``streamlit run`` and from opening the
    page once the server answers; the server's start-up lies between them."""
    script = tmp_path / "trivial_app.py"
    script.write_text('import streamlit as st\n\nst.markdown("hello")\n')
    cpu: dict[str, float] = {}
    total, navigation = time_to_map(script, None, browser, expect_map=False, cpu=cpu)
    assert 0 < navigation < total < 60
    assert total - navigation > 0.1  # a Python process importing Streamlit and binding a port
    assert cpu["server"] > 0 and cpu["browser"] > 0
