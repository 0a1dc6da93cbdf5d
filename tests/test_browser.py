"""The explorer in a real browser: a live ``streamlit run`` server and headless Chromium.

Loads each page, checks that its key elements render (the WebGL map with its traces, a lasso
selection opening the model panel, the Layers and Generate controls), and saves screenshots
to docs/screenshots/ for the README. The atlas is ``$WEIGHTATLAS_ATLAS`` if set, else the
embedded demo (``assets/demo``); without either it runs on a generated atlas, and then writes
its screenshots to a temp dir instead (they would not show real models). A real atlas is
copied first, since the Generate test runs a small generation that writes into it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from core.appbench import (
    CHROMIUM,
    REPO,
    AppServer,
    lasso,
    launch_browser,
    synthetic_atlas,
    wait_for_map,
    wait_idle,
)

pytestmark = pytest.mark.browser
SHOTS = REPO / "docs" / "screenshots"
APP = REPO / "explorer" / "app.py"


@pytest.fixture(scope="module")
def atlas_and_shots(tmp_path_factory) -> tuple[Path, Path]:
    env = os.environ.get("WEIGHTATLAS_ATLAS")
    demo = REPO / "assets" / "demo"
    tmp = tmp_path_factory.mktemp("browser")
    source = Path(env) if env else demo if (demo / "atlas.json").exists() else None
    if source is None:
        return synthetic_atlas(tmp / "atlas", n=500), tmp / "screenshots"
    # a copy, so that the generation run below writes into it and not into the source atlas
    shutil.copytree(
        source, tmp / "atlas", ignore=shutil.ignore_patterns("generated", "train_state")
    )
    return tmp / "atlas", SHOTS


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
def server(atlas_and_shots):
    with AppServer(APP, atlas_and_shots[0]) as s:
        s.wait_ready()
        yield s


def open_page(browser, server):
    page = browser.new_page(viewport={"width": 1500, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    return page, errors


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0


def test_atlas_page_map_selection_and_panel(browser, server, atlas_and_shots):
    atlas, shots = atlas_and_shots
    page, errors = open_page(browser, server)
    wait_for_map(page)
    wait_idle(page)
    page.get_by_role("heading", name="Atlas").first.wait_for()
    n_points = page.evaluate(
        """() => document.querySelector('.stPlotlyChart .js-plotly-plot')._fullData
                 .filter(t => t.customdata).reduce((n, t) => n + t.x.length, 0)"""
    )
    from core.explore import map_table

    assert n_points == len(map_table(atlas))
    assert page.get_by_label("Colour by").count() == 1
    assert page.locator('[data-testid="stSidebar"] input').first.input_value() == str(atlas)
    lasso(page, frac=0.3)
    page.get_by_text("Nearest neighbours").first.wait_for(timeout=60_000)
    wait_idle(page)
    no_exception(page)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "atlas.png"))
    assert not errors, errors
    page.close()


def test_layers_page(browser, server, atlas_and_shots):
    _, shots = atlas_and_shots
    page, errors = open_page(browser, server)
    page.get_by_role("link", name="Layers").click()
    page.get_by_role("heading", name="Layers").first.wait_for(timeout=60_000)
    wait_idle(page)
    has_model = page.get_by_label("Model").count() > 0
    if has_model:
        page.locator(".stPlotlyChart").first.wait_for(timeout=120_000)
        if page.get_by_role("button", name="Compute spectral alpha").count():
            page.get_by_role("button", name="Compute spectral alpha").click()
            page.get_by_text("Spectral metrics are computed on demand").wait_for(
                state="detached", timeout=120_000
            )
            wait_idle(page)
            assert page.get_by_text("log10 spectral norm").count() > 0  # legend of the fit
        page.get_by_role("heading", name="Layers").first.scroll_into_view_if_needed()
    else:
        page.get_by_text("weightatlas tokenize").first.wait_for()
    no_exception(page)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "layers.png"))
    assert not errors, errors
    page.close()


def test_generate_page(browser, server, atlas_and_shots):
    atlas, shots = atlas_and_shots
    page, errors = open_page(browser, server)
    page.get_by_role("link", name="Generate").click()
    page.get_by_role("heading", name="Generate").first.wait_for(timeout=60_000)
    wait_idle(page)
    if page.get_by_text("Generation needs a token store").count() == 0:
        page.get_by_text("Architecture from").first.wait_for()
        page.get_by_label("K draws").wait_for(timeout=120_000)
        page.get_by_text("Prompt examples").first.wait_for()
        page.get_by_label("K draws").fill("3")
        page.get_by_label("M kept").fill("1")
        page.get_by_label("M kept").press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Generate", exact=True).click()
        page.get_by_text("Generating…").first.wait_for(timeout=60_000)  # polled progress
        page.get_by_text("Wrote 1 model(s)").first.wait_for(timeout=300_000)
        page.get_by_role("button", name=".zip").first.wait_for()
        wait_idle(page)
        assert len(list((atlas / "generated").glob("*/model.safetensors"))) == 1
    no_exception(page)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "generate.png"))
    assert not errors, errors
    page.close()


def test_not_an_atlas_page(browser, tmp_path):
    with AppServer(APP, tmp_path / "missing") as s:
        s.wait_ready()
        page, errors = open_page(browser, s)
        page.get_by_text("No atlas to show yet").first.wait_for(timeout=60_000)
        page.get_by_text("weightatlas demo --out assets/demo").first.wait_for()
        no_exception(page)
        assert not errors, errors
        page.close()
