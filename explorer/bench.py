"""Speed of the explorer in a real browser: ``weightatlas bench app``.

Measures, with headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright):

- ``demo``: seconds from ``streamlit run explorer/app.py`` to the map drawn in the browser on
  a cold load (fresh server, fresh browser context; ``*_seconds`` from server start,
  ``*_from_navigation_seconds`` from opening the page once the server is up) of
  the demo atlas (``assets/demo``, or ``$WEIGHTATLAS_ATLAS``), next to three baselines
  measured the same way: a trivial one-line Streamlit page (server start + browser +
  websocket, no app work), a page with a single three-point plotly chart (adds loading
  plotly.js and a WebGL context) and a page with the demo's own first map alone (the Atlas
  page's default figure, :func:`map_only_page`: the atlas read and the figure built and drawn,
  without the page's controls, sidebar and panels); with each, the CPU seconds the server and
  the browser spent until then (``*_cpu_seconds``: on a shared, loaded machine they vary far
  less than the wall time);
- ``synthetic``: the same on a generated atlas of ``--n`` models (20,000 by default), then the
  seconds per interaction (colour change, map switch, lasso selection opening the model
  panel, id search), each timed from the input to the updated, idle page. For the lasso the
  drag itself (plotly recomputing the selection in the browser on every mouse move) is
  reported apart from the response (selection event -> panel rendered).

The synthetic atlas has the real on-disk layout (manifest, embedding tables, maps, PCA
reducer), so the app reads it through the same code paths as a pipeline-built atlas.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from core.atlas import Atlas, append_jsonl, atomic_path, write_json
from core.catalog import map_table

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("WEIGHTATLAS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SYN_FAMILIES = ("mlp", "cnn", "resnet", "vit", "convnext", "lenet")
SYN_TASKS = ("digits10", "digits-rot90", "digits-invert", "wine", "breast-cancer")


def _synthetic_row(
    mid: str, fam: str, task: str, i: int, acc: float, params: int, parent: str | None
) -> dict[str, Any]:
    """The manifest row of synthetic model ``i`` (run ``i // 10``, epoch ``i % 10``)."""
    return {
        "id": mid,
        "revision": "0",
        "source": "synthetic",
        "status": "accepted",
        "reason": None,
        "library": "timm" if fam in ("resnet", "vit", "convnext") else "weightatlas",
        "model_type": fam,
        "architecture": fam,
        "family": fam,
        "params": params,
        "tags": [task, fam, "synthetic"],
        "pipeline_tag": "image-classification",
        "datasets": [task],
        "metrics": {"test_accuracy": acc},
        "license": "mit",
        "base_model": parent,
        "base_model_relation": "finetune" if i % 10 == 9 else None,
        "split": ("train", "val", "test")[(i // 10) % 3],
        "path": None,
        "labels": {"task": task, "run": i // 10, "epoch": i % 10, "test_accuracy": acc},
    }


def synthetic_atlas(root: str | Path, n: int = 20_000, latent: int = 16, seed: int = 0) -> Path:
    """Write an embedded atlas of ``n`` synthetic models (for map speed tests only).

    Models form one Gaussian cluster per (family, task) in a ``latent``-dim embedding space;
    the maps are the PCA of those embeddings plus a jittered copy labelled ``umap`` (no UMAP is
    fitted; this atlas measures drawing, not reduction). Every tenth model names a parent in
    ``base_model`` so lineage edges can be drawn.
    """
    rng = np.random.default_rng(seed)
    atlas = Atlas.create(root)
    groups = [(f, t) for f in SYN_FAMILIES for t in SYN_TASKS]
    centres = rng.normal(0, 3, size=(len(groups), latent))
    g = rng.integers(0, len(groups), size=n)
    z = (centres[g] + rng.normal(0, 1, size=(n, latent))).astype(np.float32)
    ids, manifest, models = [], [], []
    for i in range(n):
        fam, task = groups[g[i]]
        mid = f"synthetic/{fam}-{task}-r{i // 10}-e{i % 10}"
        ids.append(mid)
        acc = float(np.clip(0.3 + 0.6 * rng.random() + 0.05 * (g[i] % 3), 0, 1))
        params = int(10 ** rng.uniform(3, 7))
        parent = ids[i - 1] if i % 10 == 9 else None
        row = _synthetic_row(mid, fam, task, i, acc, params, parent)
        manifest.append(row)
        models.append(
            {"id": mid, "row": i, "family": fam, "params": params, "labels": row["labels"]}
        )
    append_jsonl(atlas.manifest_path, manifest)
    emb = atlas.embeddings
    mean = z.mean(0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    pca = (z - mean) @ vt[:2].T
    umap_like = pca + rng.normal(0, 0.3, size=pca.shape)
    with atomic_path(emb.tensors_path) as tmp:
        save_file(
            {
                "z": torch.from_numpy(z),
                "layer_z": torch.zeros(0, latent),
                "layer_spread": torch.zeros(0),
            },
            str(tmp),
        )
    append_jsonl(emb.models_path, models)
    emb.layers_path.write_text("")
    with atomic_path(emb.reducers_dir / "pca.safetensors") as tmp:
        save_file(
            {
                "mean": torch.from_numpy(mean.astype(np.float64)),
                "components": torch.from_numpy(vt[:2].astype(np.float64).copy()),
            },
            str(tmp),
        )
    write_json(
        emb.maps_path,
        {
            "ids": ids,
            "pca": {m: pca[i].tolist() for i, m in enumerate(ids)},
            "umap": {m: umap_like[i].tolist() for i, m in enumerate(ids)},
        },
    )
    total = float(((z - mean) ** 2).sum())
    ratio = [float(((pca[:, j] ** 2).sum()) / total) for j in range(2)]
    write_json(emb.info_path, {"n_models": n, "pca_explained_variance_ratio": ratio})
    atlas.update_info(synthetic={"n": n, "latent": latent, "seed": seed})
    return atlas.root


def free_port() -> int:
    """An unused local TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    """``streamlit run SCRIPT`` in its own process group, headless, on a free port."""

    def __init__(
        self,
        script: str | Path,
        atlas: str | Path | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ):
        self.script = Path(script)
        self.atlas = atlas
        self.env = dict(env or {})
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="streamlit-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AppServer:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.atlas is not None:
            env["WEIGHTATLAS_ATLAS"] = str(self.atlas)
        else:
            env.pop("WEIGHTATLAS_ATLAS", None)
        cmd = [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(self.script),
            "--server.headless",
            "true",
            "--server.port",
            str(self.port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the server answers its health endpoint."""

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"streamlit did not start within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch_browser(playwright: Any) -> Any:
    """Headless Debian Chromium through Playwright (its own browser download is not used)."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} not found; `apt-get install chromium`")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


# JS: has the plotly map ``p`` drawn its points (SVG points, or a WebGL map's canvas)?
_DRAWN = """const drawn = (p) => p.querySelector('.scatterlayer .point') !== null
    || (p._fullData.some(t => t.type === 'scattergl') && p.querySelector('canvas') !== null);"""


def wait_for_map(page: Any, timeout_ms: float = 60_000) -> None:
    """Wait until the plotly map has drawn its points (SVG, or WebGL above
    ``explorer.figures.WEBGL_ABOVE`` models)."""
    page.wait_for_function(
        """() => {
            """
        + _DRAWN
        + """
            const p = document.querySelector('.stPlotlyChart .js-plotly-plot');
            return p && p._fullData && p._fullData.length > 0 && drawn(p);
        }""",
        timeout=timeout_ms,
    )


def wait_idle(page: Any, timeout_ms: float = 60_000, settle_ms: int = 0) -> None:
    """Wait until the Streamlit script run has finished (no running indicator).

    ``settle_ms`` > 0: the indicator must stay away that long (a rerun that starts late under
    load is waited for too).
    """
    page.wait_for_timeout(50)
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stStatusWidget"]')""",
        timeout=timeout_ms,
    )
    if settle_ms:
        page.wait_for_timeout(settle_ms)
        page.wait_for_function(
            """() => !document.querySelector('[data-testid="stStatusWidget"]')""",
            timeout=timeout_ms,
        )


def process_cpu_seconds(root_pid: int) -> dict[int, tuple[int, float]]:
    """CPU seconds (user + system) of every live descendant of ``root_pid``, as
    ``{pid: (parent pid, seconds)}``, read from ``/proc`` (Linux; empty elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    procs: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        procs[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    out, todo = {}, [root_pid]
    while todo:
        parent = todo.pop()
        for pid, (ppid, sec) in procs.items():
            if ppid == parent and pid not in out:
                out[pid] = (ppid, sec)
                todo.append(pid)
    return out


def time_to_map(
    script: Path,
    atlas: Path | None,
    browser: Any,
    expect_map: bool = True,
    cpu: dict[str, float] | None = None,
) -> tuple[float, float]:
    """Seconds to the rendered map (or to the first rendered element) of a cold load: a fresh
    server whose script has never run, and a fresh browser context (empty cache).

    Returns:
        ``(from server start, from navigation)``: the first counts ``streamlit run`` starting
        up (about 0.6 s here), the second starts when the server answers its health check and
        the browser opens the page (what a user who opens the URL waits for).

    ``cpu``, if given, receives the CPU seconds spent meanwhile by the server (``server``) and
    by the browser with its Playwright driver (``browser``): on a loaded machine these vary
    far less than the wall time.
    """
    before = process_cpu_seconds(os.getpid())
    t0 = time.perf_counter()
    with AppServer(script, atlas) as server:
        server.wait_ready()
        page = browser.new_page(viewport={"width": 1400, "height": 1000})  # its own context
        t_nav = time.perf_counter()
        page.goto(server.url)
        if expect_map:
            wait_for_map(page)
        else:
            page.wait_for_selector('[data-testid="stMarkdown"]', timeout=60_000)
        t_end = time.perf_counter()
        seconds = (t_end - t0, t_end - t_nav)
        after = process_cpu_seconds(os.getpid())
        page.close()
    if cpu is not None:
        spent = {pid: sec - before.get(pid, (0, 0.0))[1] for pid, (_, sec) in after.items()}
        srv = {server.proc.pid} | {p for p in after if after[p][0] == server.proc.pid}
        cpu["server"] = round(sum(v for p, v in spent.items() if p in srv), 2)
        cpu["browser"] = round(sum(v for p, v in spent.items() if p not in srv), 2)
    return seconds


def _fig_signature(page: Any) -> str:
    return page.evaluate(
        """() => {
            const p = document.querySelector('.stPlotlyChart .js-plotly-plot');
            return p ? JSON.stringify(p._fullData.map(t => [t.name, (t.x || []).length, t.x && t.x[0]])) : '';
        }"""
    )


def _wait_change(page: Any, before: str, timeout_ms: float = 60_000) -> None:
    page.wait_for_function(
        """(before) => {
            """
        + _DRAWN
        + """
            const p = document.querySelector('.stPlotlyChart .js-plotly-plot');
            if (!p || !p._fullData) return false;
            const s = JSON.stringify(p._fullData.map(t => [t.name, (t.x || []).length, t.x && t.x[0]]));
            return s !== before && drawn(p);
        }""",
        arg=before,
        timeout=timeout_ms,
    )


def choose(page: Any, label: str, option: str, tries: int = 3) -> None:
    """Pick ``option`` in the Streamlit selectbox labelled ``label``, and wait until it shows it.

    A pick made while a rerun redraws the box can be dropped; it is made again (``tries`` times
    in all) until the box's input holds ``option``.
    """
    shows = """([l, o]) => { const i = document.querySelector(`input[aria-label="${l}"]`);
                             return i && i.value === o; }"""
    for attempt in range(tries):
        page.get_by_role("combobox", name=label).first.click()
        page.get_by_role("option", name=option, exact=True).click()
        try:
            page.wait_for_function(shows, arg=[label, option], timeout=20_000)
            return
        except Exception:  # playwright's TimeoutError: pick again
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")
            wait_idle(page)


def drag_mode(page: Any, title: str = "Lasso Select") -> None:
    """Pick a drag mode in the map's toolbar (``Lasso Select``, ``Box Select``, ``Pan``, ``Zoom``)."""
    chart = page.locator(".stPlotlyChart .js-plotly-plot").first
    chart.hover()
    button = chart.locator(f'.modebar-btn[data-title="{title}"]')
    button.click()
    page.wait_for_function(
        """(mode) => {
            const p = document.querySelector('.stPlotlyChart .js-plotly-plot');
            return p && p._fullLayout && p._fullLayout.dragmode === mode;
        }""",
        arg={"Lasso Select": "lasso", "Box Select": "select", "Pan": "pan", "Zoom": "zoom"}[title],
        timeout=10_000,
    )


def point_position(page: Any, model_id: str) -> tuple[float, float]:
    """Page coordinates (pixels) of the map point whose ``customdata[0]`` is ``model_id``."""
    xy = page.evaluate(
        """(mid) => {
            const gd = document.querySelector('.stPlotlyChart .js-plotly-plot');
            const L = gd._fullLayout, box = gd.querySelector('.nsewdrag').getBoundingClientRect();
            for (const t of gd._fullData) {
                if (!t.customdata || !t.visible) continue;
                for (let i = 0; i < t.customdata.length; i++) {
                    const cd = t.customdata[i];
                    if ((Array.isArray(cd) ? cd[0] : cd) === mid)
                        return [box.left + L.xaxis.l2p(t.x[i]), box.top + L.yaxis.l2p(t.y[i])];
                }
            }
            return null;
        }""",
        model_id,
    )
    if xy is None:
        raise LookupError(f"{model_id} is not drawn on the map")
    return float(xy[0]), float(xy[1])


def isolated_model(atlas: Path, kind: str = "umap") -> str:
    """The model whose ``kind`` map point is farthest from every other (coordinates scaled to
    the map's range): a click on it cannot land on a neighbour drawn on top."""
    table = map_table(atlas)
    xy = np.asarray(table.coords[kind], dtype=np.float64)
    xy = (xy - xy.min(0)) / np.maximum(np.ptp(xy, 0), 1e-12)
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return table.ids[int(d.min(1).argmax())]


def click_point(page: Any, model_id: str) -> None:
    """Click the map point of ``model_id`` (in the default drag mode, a click selects)."""
    x, y = point_position(page, model_id)
    height = page.viewport_size["height"] if page.viewport_size else 800
    if not 10 < y < height - 10:  # off screen: scroll it to the middle first
        page.evaluate("(dy) => window.scrollBy(0, dy)", y - height / 2)
        page.wait_for_timeout(200)
        x, y = point_position(page, model_id)
    page.mouse.move(x, y)
    page.wait_for_timeout(100)  # plotly picks the hovered point on mouse move
    page.mouse.click(x, y)


def lasso(page: Any, frac: float = 0.15) -> None:
    """Switch the map to lasso selection and draw a lasso around its middle with the mouse."""
    drag_mode(page, "Lasso Select")
    plot = page.locator(".stPlotlyChart .js-plotly-plot .nsewdrag").first
    box = plot.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    rx, ry = box["width"] * frac, box["height"] * frac
    page.mouse.move(cx - rx, cy - ry)
    page.mouse.down()
    for x, y in ((cx + rx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry), (cx - rx, cy - ry)):
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def interactions(page: Any, search: str) -> dict[str, float]:
    """Seconds per interaction on a loaded Atlas page (``search``: a substring of one id)."""
    out: dict[str, float] = {}
    before = _fig_signature(page)
    t = time.perf_counter()
    choose(page, "Colour by", "task")
    _wait_change(page, before)
    wait_idle(page)
    out["colour_change_seconds"] = time.perf_counter() - t

    before = _fig_signature(page)
    t = time.perf_counter()
    choose(page, "Map", "PCA")
    _wait_change(page, before)
    wait_idle(page)
    out["map_switch_seconds"] = time.perf_counter() - t

    page.evaluate(
        """() => { const gd = document.querySelector('.stPlotlyChart .js-plotly-plot');
                   window._waSelected = null;
                   gd.once('plotly_selected', () => { window._waSelected = performance.now(); }); }"""
    )
    t = time.perf_counter()
    t_js = page.evaluate("() => performance.now()")
    lasso(page)
    page.wait_for_function("() => window._waSelected !== null", timeout=120_000)
    drag = (page.evaluate("() => window._waSelected") - t_js) / 1000.0
    page.get_by_text("models selected").first.wait_for(timeout=120_000)
    wait_idle(page)
    total = time.perf_counter() - t
    out["lasso_drag_in_browser_seconds"] = drag
    out["lasso_select_seconds"] = total - drag
    out["lasso_selected_points"] = page.evaluate(
        """() => (document.querySelector('.stPlotlyChart .js-plotly-plot')?._fullData || [])
              .reduce((n, t) => n + ((t.customdata && t.selectedpoints) || []).length, 0)"""
    )

    t = time.perf_counter()
    box = page.get_by_label("Search model id")
    box.fill(search)
    box.press("Enter")
    page.get_by_role("heading", name=search, exact=True).wait_for(timeout=60_000)
    wait_idle(page)
    out["search_seconds"] = time.perf_counter() - t
    return out


def _best_interactions(app: Path, atlas: Path, browser: Any, repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` seconds per interaction on the Atlas page of ``atlas``."""

    search = map_table(atlas).ids[len(map_table(atlas)) // 2]
    best: dict[str, float] = {}
    with AppServer(app, atlas) as server:
        server.wait_ready()
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url)
        for _ in range(repeat):
            page.reload()
            wait_for_map(page)
            wait_idle(page)
            for k, v in interactions(page, search).items():
                best[k] = min(v, best.get(k, float("inf")))
        page.close()
    return {"n_models": len(map_table(atlas)), **best}


def map_only_page(atlas: str | Path) -> str:
    """Source of a Streamlit page drawing only the Atlas page's first map of ``atlas``: its
    default map kind and colour, every model, through ``core.catalog.map_table`` and
    ``explorer.figures.map_figure`` as the page does (a baseline of ``bench app``)."""
    return (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import numpy as np\n"
        "import streamlit as st\n"
        "from core.catalog import COLOUR_BY, map_table\n"
        "from explorer.figures import MAP_HEIGHT, map_figure\n\n"
        f"table = map_table({str(atlas)!r})\n"
        "kinds = [k for k in ('umap', 'pca') if k in table.coords] or list(table.coords)\n"
        "keep = np.ones(len(table), dtype=bool)\n"
        "fig = map_figure(table, kinds[0], COLOUR_BY[0], keep, height=MAP_HEIGHT)\n"
        "st.plotly_chart(fig, width='stretch')\n"
    )


def bench_app(args: argparse.Namespace) -> dict[str, Any]:
    """Server start -> rendered map (demo atlas and a trivial page), and 20k-point interactions."""
    from playwright.sync_api import sync_playwright

    n = int(getattr(args, "n", None) or 20_000)
    repeat = max(1, int(getattr(args, "repeat", None) or 1))
    app = REPO / "explorer" / "app.py"
    demo = Path(os.environ.get("WEIGHTATLAS_ATLAS") or REPO / "assets" / "demo")
    work = Path(tempfile.mkdtemp(prefix="weightatlas-bench-app-"))
    try:
        trivial = work / "trivial_app.py"
        trivial.write_text('import streamlit as st\n\nst.markdown("hello")\n')
        one_plot = work / "plotly_app.py"
        one_plot.write_text(
            "import plotly.graph_objects as go\nimport streamlit as st\n\n"
            "st.plotly_chart(go.Figure(go.Scattergl(x=[0, 1, 2], y=[1, 0, 1], mode='markers')))\n"
        )
        t = time.perf_counter()
        syn = synthetic_atlas(work / "synthetic", n=n)
        synth_seconds = time.perf_counter() - t
        has_demo = Atlas(demo).info_path.exists()
        map_only = work / "map_only_app.py"
        map_only.write_text(map_only_page(demo))
        result: dict[str, Any] = {
            "demo_atlas": str(demo),
            "n_synthetic": n,
            "synthetic_atlas_write_seconds": synth_seconds,
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        }
        with sync_playwright() as p:
            browser = launch_browser(p)
            try:
                for name, script, atlas, drawn in (
                    ("baseline_trivial_page", trivial, None, False),
                    ("baseline_one_plotly_chart", one_plot, None, True),
                    *(
                        (
                            ("baseline_demo_map_alone", map_only, None, True),
                            ("demo_start_to_map", app, demo, True),
                        )
                        if has_demo
                        else ()
                    ),
                ):
                    cpus = [{} for _ in range(repeat)]
                    runs = [time_to_map(script, atlas, browser, drawn, c) for c in cpus]
                    result[f"{name}_seconds"] = min(r[0] for r in runs)
                    result[f"{name}_from_navigation_seconds"] = min(r[1] for r in runs)
                    # CPU seconds to the first paint (server, browser): least of the runs
                    result[f"{name}_cpu_seconds"] = {
                        k: min(c[k] for c in cpus) for k in ("server", "browser")
                    }
                if not has_demo:
                    result["demo_start_to_map_seconds"] = None
                    result["demo_start_to_map_from_navigation_seconds"] = None
                    result["demo_missing"] = f"{demo} not built (weightatlas demo --out {demo})"
                runs = [time_to_map(app, syn, browser) for _ in range(repeat)]
                result["synthetic_start_to_map_seconds"] = min(r[0] for r in runs)
                result["synthetic_start_to_map_from_navigation_seconds"] = min(r[1] for r in runs)
                targets = [("demo", demo)] if has_demo else []
                targets.append(("synthetic", syn))
                for name, atlas in targets:
                    best = _best_interactions(app, atlas, browser, repeat)
                    result.update({f"{name}_{k}": v for k, v in best.items()})
            finally:
                browser.close()
        result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
        result["cpu_count"] = os.cpu_count()
        result["device"] = "cpu (server) + headless chromium (software GL)"
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m explorer.bench screenshots ...``: the README screenshots (``explorer.screenshots``)."""
    from explorer.screenshots import main as screenshots_main

    return screenshots_main(argv)


if __name__ == "__main__":
    sys.exit(main())
