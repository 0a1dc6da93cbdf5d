"""README screenshots of the explorer: ``python -m explorer.bench screenshots``.

Takes the Atlas, Layers, Generate and lineage shots (1280x800) with headless Chromium on the
embedded demo atlas (or ``--atlas``), driving the app through ``explorer.bench``'s server and
page helpers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from core.catalog import map_table
from explorer.bench import (
    REPO,
    AppServer,
    choose,
    click_point,
    drag_mode,
    launch_browser,
    point_position,
    wait_for_map,
    wait_idle,
)


def generate_small(page: Any, k: int = 3, m: int = 1, timeout_ms: float = 300_000) -> None:
    """On the Generate page (zoo family tab): K draws, M kept, Generate, wait for the result."""
    page.get_by_label("K draws").wait_for(timeout=120_000)
    page.get_by_label("K draws").fill(str(k))
    page.get_by_label("M kept").fill(str(m))
    page.get_by_label("M kept").press("Enter")
    wait_idle(page, settle_ms=1000)
    button = page.get_by_role("button", name="Generate", exact=True)
    started = page.get_by_text("Generating…").or_(page.get_by_text(f"Wrote {m} model(s)"))
    button.wait_for(timeout=60_000)
    button.click()
    try:
        started.first.wait_for(timeout=60_000)
    except Exception:
        if os.environ.get("WEIGHTATLAS_DEBUG_SHOT"):
            page.screenshot(path=os.environ["WEIGHTATLAS_DEBUG_SHOT"], full_page=True)
        raise
    done = page.get_by_text(f"Wrote {m} model(s)").or_(page.get_by_text("Generation failed"))
    done.first.wait_for(timeout=timeout_ms)
    failed = page.get_by_text("Generation failed")
    if failed.count():
        raise RuntimeError(failed.first.inner_text())
    wait_idle(page)


SHOTS = ("atlas", "lineage", "layers", "generate")


def lineage_edges_on(page: Any) -> None:
    """Atlas page: turn on "Lineage edges from the weights", colour by model tree, and wait
    until the map draws the edges."""
    lines = """() => (document.querySelector('.stPlotlyChart .js-plotly-plot')?._fullData || [])
                 .filter(t => t.mode === 'lines' && t.name.startsWith('lineage')).length"""
    page.get_by_role("button", name="Filter and options").click()
    page.get_by_text("Lineage edges from the weights").click()
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => ({lines})() > 0", timeout=120_000)
    wait_idle(page)
    choose(page, "Colour by", "model tree (from weights)")
    wait_idle(page, settle_ms=1000)


def zoom_to(page: Any, model_ids: list[str], pad: float = 0.15) -> None:
    """Box-zoom the map (the toolbar's Zoom, one drag) onto the points of ``model_ids``, with
    ``pad`` of the box's size added on each side."""
    drag_mode(page, "Zoom")  # first: hovering the toolbar may scroll the page
    xy = np.array([point_position(page, m) for m in model_ids])
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    dx, dy = max(x1 - x0, 20.0) * pad, max(y1 - y0, 20.0) * pad
    # the drag must start and end inside the plot area
    box = page.evaluate(
        """() => { const r = document.querySelector('.stPlotlyChart .js-plotly-plot .nsewdrag')
                   .getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }"""
    )
    x0, y0 = max(x0 - dx, box[0] + 2), max(y0 - dy, box[1] + 2)
    x1, y1 = min(x1 + dx, box[2] - 2), min(y1 + dy, box[3] - 2)
    before = page.evaluate(
        "() => JSON.stringify(document.querySelector('.stPlotlyChart .js-plotly-plot')"
        "._fullLayout.xaxis.range)"
    )
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    page.wait_for_function(
        """(before) => JSON.stringify(document.querySelector('.stPlotlyChart .js-plotly-plot')
                       ._fullLayout.xaxis.range) !== before""",
        arg=before,
        timeout=20_000,
    )
    page.mouse.move(5, 790)
    page.wait_for_timeout(4000)  # plotly's "double-click to zoom back out" note fades


def _tree_view(atlas: Path, child: str, k: int = 30) -> list[str]:
    """The ``k`` models of recovered trees (2+ models) nearest, on the UMAP map, to the centre
    of ``child``'s tree (at most half of them, at least the tree): the tree and its neighbours,
    for the lineage shot's zoom."""
    from core.trees.table import LineageTable

    rows = LineageTable(atlas).by_id()
    table = map_table(atlas)
    xy = np.asarray(table.coords["umap" if "umap" in table.coords else next(iter(table.coords))])
    where = {m: i for i, m in enumerate(table.ids)}
    tree = rows[child]["tree"]
    centre = np.mean([xy[where[m]] for m, r in rows.items() if r["tree"] == tree], axis=0)
    members = [m for m, r in rows.items() if r["tree_size"] > 1 and m in where]
    near = np.argsort([np.linalg.norm(xy[where[m]] - centre) for m in members], kind="stable")
    k = max(min(k, len(members) // 2), sum(r["tree"] == tree for r in rows.values()))
    return [members[i] for i in near[:k]]


def _tree_child(atlas: Path) -> str | None:
    """A fine-tune whose recovered parent agrees with its card and that has siblings (the
    family-tree panel then lists parent, children and siblings), if the atlas has lineage."""
    from core.trees.table import LineageTable, family

    try:
        rows = LineageTable(atlas).by_id()
    except Exception:  # no lineage table: the shot shows the map only
        return None
    return next(
        (
            m
            for m, r in sorted(rows.items())
            if r["status"] == "agrees"
            and r["relation"] == "finetune"
            and len(family(rows, m)["siblings"]) >= 3
        ),
        None,
    )


def take_screenshots(
    out: str | Path,
    atlas: str | Path | None = None,
    only: tuple[str, ...] = SHOTS,
    browser: Any | None = None,
) -> list[Path]:
    """The README's screenshots (Atlas, Atlas with lineage edges, Layers, Generate) at 1280x800.

    Runs the app on ``atlas`` (default: the embedded demo, shown as ``assets/demo``) with a
    throwaway home folder, so the generated model's workspace reads ``~/.cache/...`` and no
    path of this machine appears in the pictures. The lineage shot turns on the edges recovered
    from the weights, colours by model tree, searches a fine-tune (its family tree opens below
    the map) and zooms onto its tree and the nearest trees; the Generate shot follows a real
    3-draw run. ``only`` picks some of ``SHOTS``; ``browser`` is a launched Playwright browser
    to use (default: one launched here).
    """
    from playwright.sync_api import sync_playwright

    unknown = set(only) - set(SHOTS)
    if unknown:
        raise ValueError(f"unknown screenshot(s) {sorted(unknown)}; choose from {', '.join(SHOTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="weightatlas-shots-"))
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "WEIGHTATLAS_WORKSPACE": ""}
    atlas_dir = Path(atlas) if atlas else REPO / "assets" / "demo"
    try:
        with AppServer(REPO / "explorer" / "app.py", atlas, env=env) as s:
            s.wait_ready()
            if browser is not None:
                return _shoot(browser, s.url, out, atlas_dir, only)
            with sync_playwright() as p:
                own = launch_browser(p)
                try:
                    return _shoot(own, s.url, out, atlas_dir, only)
                finally:
                    own.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _shoot(browser: Any, url: str, out: Path, atlas_dir: Path, only: tuple[str, ...]) -> list[Path]:
    """Take the ``only`` screenshots of the app at ``url`` into ``out`` (one page, closed after)."""
    shots: list[Path] = []
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    wait_for_map(page)
    wait_idle(page)
    if "atlas" in only:
        table = map_table(atlas_dir)
        click_point(page, table.ids[len(table) // 3])
        page.get_by_text("Nearest neighbours").first.wait_for(timeout=120_000)
        _shot(page, out / "atlas.png", shots)
    if "lineage" in only:
        lineage_edges_on(page)
        child = _tree_child(atlas_dir)
        if child:
            page.get_by_role("textbox", name="Search model id").fill(child)
            page.keyboard.press("Enter")
            page.get_by_text("Family tree").first.wait_for(timeout=120_000)
            wait_idle(page)
            page.evaluate("() => window.scrollTo(0, 0)")
            zoom_to(page, _tree_view(atlas_dir, child))
        _shot(page, out / "lineage.png", shots)
    if "layers" in only:
        page.get_by_role("link", name="Layers").click()
        page.get_by_role("heading", name="Layers").first.wait_for(timeout=60_000)
        page.locator(".stPlotlyChart").first.wait_for(timeout=180_000)
        wait_idle(page)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "layers.png"))
        shots.append(out / "layers.png")
    if "generate" in only:
        page.get_by_role("link", name="Generate").click()
        page.get_by_role("heading", name="Generate").first.wait_for(timeout=60_000)
        wait_idle(page)
        generate_small(page)
        page.get_by_text("Wrote 1 model(s)").first.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "generate.png"))
        shots.append(out / "generate.png")
    page.close()
    return shots


def _shot(page: Any, path: Path, shots: list[Path]) -> None:
    """The Atlas page from its top, mouse out of the map, into ``path``."""
    wait_idle(page)
    page.mouse.move(5, 790)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    shots.append(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m explorer.bench screenshots [--out DIR] [--atlas ATLAS] [--only atlas,lineage]``."""
    parser = argparse.ArgumentParser(prog="python -m explorer.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    shots = sub.add_parser("screenshots", help="retake the README screenshots (1280x800)")
    shots.add_argument("--out", default=str(REPO / "docs" / "screenshots"), help="folder")
    shots.add_argument("--atlas", default=None, help="atlas (default: the embedded demo)")
    shots.add_argument(
        "--only", default=",".join(SHOTS), help=f"comma-separated, of {', '.join(SHOTS)}"
    )
    args = parser.parse_args(argv)
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    for path in take_screenshots(args.out, args.atlas, only):
        print(path)
    return 0
