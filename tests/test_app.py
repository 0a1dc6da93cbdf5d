"""The explorer with streamlit.testing.v1.AppTest: every page renders, widgets interact.

Fast tests run on a generated atlas in the documented layout (manifest, embedding tables,
maps, PCA reducer), read by the app through the same core code as a pipeline-built atlas.
The ``slow`` test builds a real atlas (zoo -> collect -> tokenize -> train -> embed) and runs
the Layers page and a small generation end to end through the background subprocess.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the explorer package lives beside core, outside the wheel
from conftest import tiny_hf_cache  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from core.catalog import map_table, next_stage, zoo_sizes  # noqa: E402
from core.generation.targets import TIMM_SUGGESTED  # noqa: E402
from explorer.common import DEFAULT_ATLAS  # noqa: E402
from explorer.jobs import SampleRequest, atlas_workspace, generated_dir  # noqa: E402

APP = str(REPO / "explorer" / "app.py")


def app_on(path: Path | str, timeout: float = 60) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.session_state["atlas_path"] = str(path)
    return at.run()


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += (
        [e.value for e in at.error] + [w.value for w in at.warning] + [i.value for i in at.info]
    )
    return "\n".join(str(p) for p in parts)


def test_not_an_atlas_shows_how_to_build_one(tmp_path):
    at = app_on(tmp_path / "nowhere")
    assert not at.exception
    assert at.title[0].value == "No atlas to show yet"
    assert str(tmp_path / "nowhere") in at.error[0].value
    assert "weightatlas collect ATLAS --source hf-cache" in texts(at)
    assert "image classifiers" not in texts(at) and "vision and text" in texts(at)  # as README
    # the demo exists: a way back to it, in the page and in the sidebar
    assert at.button(key="no_atlas_back").label.startswith("Open the demo atlas")
    at.button(key="no_atlas_back").click().run()
    assert not at.exception
    assert at.title[0].value == "Atlas" and at.session_state["atlas_path"] == DEFAULT_ATLAS
    at.sidebar.text_input[0].input(str(tmp_path / "nowhere")).run()
    assert at.title[0].value == "No atlas to show yet"
    at.button(key="atlas_back").click().run()
    assert at.title[0].value == "Atlas"
    plain = tmp_path / "plain"
    plain.mkdir()
    at.sidebar.text_input[0].input(str(plain)).run()
    assert not at.exception
    assert "no atlas.json" in at.error[0].value


def test_atlas_without_embeddings_says_which_command(tmp_path):
    from core.atlas import Atlas

    Atlas.create(tmp_path / "a")
    at = app_on(tmp_path / "a")
    assert not at.exception
    assert at.title[0].value == "Atlas"
    assert "next stage is collect" in at.error[0].value


def test_atlas_page_colour_filter_search_and_neighbours(syn):
    at = app_on(syn)
    assert not at.exception
    assert at.title[0].value == "Atlas"
    assert len(at.get("plotly_chart")) == 1
    assert "240 of 240 models" in texts(at)
    for colour in ("task", "accuracy", "params", "split"):
        at.selectbox(key="map_colour").set_value(colour).run()
        assert not at.exception, colour
    at.selectbox(key="map_kind").set_value("pca").run()
    at.multiselect(key="map_family").set_value(["mlp"]).run()
    assert not at.exception
    n_mlp = sum(f == "mlp" for f in map_table(syn).columns["family"])
    assert f"{n_mlp} of 240 models" in texts(at)
    target = map_table(syn).ids[17]
    at.text_input(key="map_search").input(target).run()
    assert not at.exception
    assert at.selectbox(key="detail_id").value == target
    at.slider(key="nn_k").set_value(4).run()
    card = at.dataframe[0].value
    assert dict(zip(card["field"], card["value"]))["backbone split"] in ("train", "val", "test")
    df = at.dataframe[1].value
    full = {f"synthetic/{i}" for i in df["id"]}  # one shared org is written in the header
    assert len(df) == 4 and target not in full and full <= set(map_table(syn).ids)
    assert list(df["distance"]) == sorted(df["distance"])
    # neighbours of a model are mostly its own synthetic cluster (same family and task)
    own = map_table(syn)
    i = own.ids.index(target)
    assert (df["family"] == own.columns["family"][i]).sum() >= 3


def map_quality_table(at: AppTest) -> tuple[list[str], list[dict[str, str]]]:
    """The Atlas page's map-quality markdown table: its header and its rows (cells unescaped)."""
    table = next(m.value for m in at.markdown if m.value.startswith("| figure |"))
    lines = [[c.strip().replace("\\", "") for c in ln.strip("|").split("|")]
             for ln in table.splitlines()]  # fmt: skip
    heads = lines[0]
    return heads, [dict(zip(heads, cells, strict=True)) for cells in lines[2:]]


def test_atlas_page_shows_map_quality(syn):
    """The Atlas page's map-quality table: core's leave-one-run-out figures, per space."""
    from core.embeddings.map_quality import map_quality

    at = app_on(syn)
    assert not at.exception
    assert any(e.label.startswith("Map quality") for e in at.expander)
    assert "has not written the map quality" in texts(at)  # no result: computed on request
    at.button(key="map_quality_compute").click().run()
    assert not at.exception
    heads, rows = map_quality_table(at)
    assert heads == [
        "figure", "embedding", "2-D UMAP", "2-D PCA", "s(W)", "without the weights"
    ]  # fmt: skip
    want = map_quality(syn)
    fam = rows[0]
    assert fam["figure"].startswith("family of the neighbours")
    assert float(fam["embedding"]) == pytest.approx(
        want["spaces"]["embedding"]["family_accuracy"], abs=5e-4
    )
    assert float(fam["2-D UMAP"]) == pytest.approx(
        want["spaces"]["umap"]["family_accuracy"], abs=5e-4
    )
    assert fam["without the weights"].startswith("majority family")
    assert fam["s(W)"] == ""  # the synthetic atlas has no tokens: an empty cell
    assert len(rows) == 4 and "Leave-one-run-out" in texts(at)
    same = rows[3]  # accuracy within a family and task: its own reference
    assert same["figure"].startswith("test accuracy from neighbours of the same family and task")
    assert same["without the weights"].startswith("mean of the family and task's other runs")


def test_lineage_toggle_and_bad_embed_folder(syn, tmp_path):
    at = app_on(syn)
    at.toggle(key="map_lineage").set_value(True).run()
    assert not at.exception
    at.text_input(key="embed_folder").input(str(tmp_path / "missing")).run()
    at.button(key="embed_go").click().run()
    assert not at.exception
    assert at.error and "not a model directory" in at.error[0].value
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "bert"}')
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    at.text_input(key="embed_folder").input(str(pickled)).run()
    at.button(key="embed_go").click().run()
    assert not at.exception
    assert "pytorch_model.bin" in at.error[0].value and "never opened" in at.error[0].value
    assert not list(syn.glob("generated/*"))  # nothing written for a rejected model


def test_layers_and_generate_pages_explain_what_is_missing(syn):
    at = app_on(syn)
    at.switch_page("views/layers.py").run()
    assert not at.exception
    assert at.title[0].value == "Layers"
    assert "weightatlas tokenize" in at.warning[0].value
    at.switch_page("views/generate.py").run()
    assert not at.exception
    assert at.title[0].value == "Generate"
    assert "weightatlas train" in at.warning[0].value


# ---------------------------------------------------------------------------------------------
# a real atlas, end to end (slow)


@pytest.fixture(scope="module")
def real_atlas(tmp_path_factory) -> Path:
    from core.backbone.train import train
    from core.collection.collect import collect
    from core.embeddings.embed import embed
    from core.tokens.tokenize import tokenize
    from core.zoos.zoo import zoo as build_zoo

    work = tmp_path_factory.mktemp("real")
    zoo = build_zoo(
        preset="ci",
        out=work / "zoo",
        overrides={"families": ("mlp",), "tasks": ("wine:3",), "checkpoints": (3, 8)},
        progress=False,
    )
    atlas = work / "atlas"
    collect(atlas, overrides={"source": str(zoo)})
    tokenize(atlas, progress=False)
    train(atlas, preset="ci", overrides={"steps": 30, "eval_every": 30, "ckpt_every": 30})
    embed(atlas)
    return atlas


@pytest.mark.slow
def test_real_atlas_layers_and_generation_end_to_end(real_atlas, monkeypatch, tmp_path):
    monkeypatch.setenv("WEIGHTATLAS_WORKSPACE", str(tmp_path / "ws"))
    at = app_on(real_atlas, timeout=180)
    assert not at.exception
    assert len(at.get("plotly_chart")) == 1
    folder = next((real_atlas.parent / "zoo").glob("models--*/snapshots/*"))
    at.text_input(key="embed_folder").input(str(folder)).run()
    at.button(key="embed_go").click().run()
    assert not at.exception
    assert "lands at" in at.success[0].value
    at.switch_page("views/layers.py").run()
    assert not at.exception, at.exception
    assert "Reconstruction through the backbone" in [s.value for s in at.subheader]
    assert at.metric[0].value == str(len(at.multiselect(key=at.multiselect[0].key).options))
    # spectral metrics: computed with the page for small models (this one), on request above
    # AUTO_SPECTRA_VALUES
    for go in [b for b in at.button if b.key == "spectral_go"]:
        go.click().run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 3

    at.switch_page("views/generate.py").run()
    assert not at.exception, at.exception
    at.selectbox(key="gen_family").set_value("mlp").run()
    at.selectbox(key="gen_task_mlp").set_value("wine").run()
    size = at.selectbox(key="gen_size_mlp_wine").value  # the atlas' most common mlp size
    assert size is not None and list(size) == list(zoo_sizes(real_atlas, "mlp", "wine")[0])
    prompts = next(m for m in at.multiselect if m.label == "Prompt examples")
    assert prompts.value  # defaults to atlas models of exactly that layout
    at.number_input(key="gen_k").set_value(3).run()
    at.number_input(key="gen_m").set_value(1).run()
    at.button(key="gen_go").click().run()
    assert not at.exception
    deadline = time.monotonic() + 240
    while "generate_job" in at.session_state and time.monotonic() < deadline:
        time.sleep(1.0)
        at.run()
        assert not at.exception
    assert "generate_job" not in at.session_state, "generation did not finish"
    result = at.session_state["generate_result"]
    assert result["error"] is None, result
    assert len(result["outputs"]) == 1
    out = Path(result["outputs"][0])
    assert out.parent == generated_dir(real_atlas) and (out / "model.safetensors").exists()
    assert out.is_relative_to(tmp_path / "ws") and not (real_atlas / "generated").exists()
    assert any(b.label.endswith(".zip") for b in at.get("download_button"))
    assert len(at.get("plotly_chart")) >= 2  # accuracy bars + per-layer distributions


@pytest.mark.slow
def test_generation_job_can_be_cancelled(real_atlas, monkeypatch, tmp_path):
    from explorer.jobs import start_sample

    monkeypatch.setenv("WEIGHTATLAS_WORKSPACE", str(tmp_path / "ws"))
    job = start_sample(real_atlas, SampleRequest("zoo:mlp", n=50, keep=1, task="wine"))
    assert job.running()
    job.cancel()
    state = job.status()
    assert state["done"] and state["error"] == "cancelled" and not job.running()
    assert job.progress_file.parent == generated_dir(real_atlas) / ".jobs"


def test_app_opens_on_the_embedded_demo_atlas(monkeypatch):
    """`streamlit run explorer/app.py` with no atlas given shows the committed assets/demo map."""
    from core.atlas import read_jsonl

    monkeypatch.delenv("WEIGHTATLAS_ATLAS", raising=False)
    demo = REPO / "assets" / "demo"
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Atlas"
    assert len(at.get("plotly_chart")) == 1
    n_models = sum(1 for _ in read_jsonl(demo / "embeddings" / "models.jsonl"))
    assert n_models >= 200 and str(n_models) in texts(at)


DEMO = REPO / "assets" / "demo"
needs_demo = pytest.mark.skipif(
    not (DEMO / "tokens" / "index.json").exists(), reason="assets/demo not built"
)


@needs_demo
def test_generate_transformers_tab_offers_model_folders_with_their_task(monkeypatch, tmp_path):
    """The suggested entries are model directories of the atlas (shown by id) and each resolves;
    the Task box shows the model's own task."""
    monkeypatch.setenv("WEIGHTATLAS_WORKSPACE", str(tmp_path / "ws"))
    from core.atlas import Atlas
    from core.generation.prompts import resolve_target

    at = app_on(DEMO, timeout=120)
    at.switch_page("views/generate.py").run()
    at.segmented_control(key="gen_kind").set_value("transformers config").run()
    assert not at.exception, at.exception
    box = at.selectbox(key="gen_hf_dir")
    assert len(box.options) >= 5
    rows = {r["id"]: r for r in Atlas.open(DEMO).accepted()}
    for option in box.options:  # displayed as model ids, each a transformers model of the atlas
        assert option in rows and rows[option]["library"] == "transformers", option
    assert not at.error, [e.value for e in at.error]
    folder = box.value
    assert Path(folder).is_dir() and (Path(folder) / "config.json").is_file()
    own = resolve_target(f"hf:{folder}", "dense", 64).task
    task_box = next(s for s in at.selectbox if s.label == "Task")
    assert own and task_box.value == own
    assert f"task `{own}`" in texts(at)
    assert "your workspace, never the atlas" in texts(at)


@needs_demo
def test_generate_page_says_how_long_a_run_takes_before_it_starts(monkeypatch, tmp_path):
    """The Generate page shows issue 17's estimate for the chosen settings before Generate:
    more draws, more decode passes (and nothing is started or written)."""
    import re

    from core.atlas import Atlas

    monkeypatch.setenv("WEIGHTATLAS_WORKSPACE", str(tmp_path / "ws"))
    at = app_on(DEMO, timeout=180)
    at.switch_page("views/generate.py").run()
    assert not at.exception, at.exception

    def decode_passes() -> int:
        text = next(i.value for i in at.info if "Expected time about" in i.value)
        return int(re.search(r"(\d+) decode\s+passes", text.replace("\\", "")).group(1))

    # the zoo family offered first is the atlas' most common one (its models are prompts)
    fams = [
        ("timm-" if r["library"] == "timm" else "") + r["family"]
        for r in Atlas.open(DEMO).accepted()
    ]
    first = at.selectbox(key="gen_family").value
    assert fams.count(first) == max(fams.count(f) for f in set(fams))
    before = decode_passes()
    k = at.number_input(key="gen_k")
    at.number_input(key="gen_k").set_value(k.value + 10).run()
    assert not at.exception, at.exception
    assert decode_passes() - before >= 10  # every extra draw is decoded (once per round)
    assert "generate_job" not in at.session_state
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").rglob("*.safetensors"))


@needs_demo
def test_timm_tab_searches_and_says_the_size(monkeypatch, tmp_path):
    monkeypatch.setenv("WEIGHTATLAS_WORKSPACE", str(tmp_path / "ws"))
    at = app_on(DEMO, timeout=120)
    at.switch_page("views/generate.py").run()
    at.segmented_control(key="gen_kind").set_value("timm name").run()
    assert not at.exception, at.exception
    assert list(at.selectbox(key="gen_timm_name").options) == list(TIMM_SUGGESTED)
    at.text_input(key="gen_timm_search").input("aimv2_3b").run()
    assert at.selectbox(key="gen_timm_name").value.startswith("aimv2_3b")
    assert "cannot be generated here" in at.error[0].value
    assert "M parameters" in at.error[0].value
    assert not [b for b in at.button if b.key == "gen_go"]  # nothing to start
    at.text_input(key="gen_timm_search").input("").run()
    at.selectbox(key="gen_timm_name").set_value("resnet10t").run()
    assert not at.exception, at.exception
    assert "resnet10t` for digits10: 4.9 M parameters" in texts(at)


def test_next_stage_names_the_stage_to_run(tmp_path):
    from core.atlas import Atlas, append_jsonl, write_json

    a = Atlas.create(tmp_path / "a")
    assert next_stage(a.root)[0] == "collect"
    append_jsonl(a.manifest_path, [{"id": "m", "status": "accepted", "split": "train"}])
    assert next_stage(a.root) == ("tokenize", f"weightatlas tokenize {a.root}")
    write_json(a.tokens_dir / "index.json", {"models": {}})
    assert next_stage(a.root)[0] == "train"
    at = app_on(a.root)
    assert "next stage is train" in at.error[0].value
    assert f"weightatlas train {a.root}" in at.error[0].value


@needs_demo
def test_generate_page_takes_your_own_transformers_models(monkeypatch, tmp_path):
    """Issue 27: a model folder of one's own (HF cache layout) gets the tasks it runs on (a
    ViT built for 3-channel 32 px images on the 1-channel 8x8 digits, inputs adapted and said
    so) or none (unscored, the default where it takes none); no red error, no CLI flags, and
    the folder is named by its repo id, not its snapshot hash."""
    monkeypatch.setenv("WEIGHTATLAS_WORKSPACE", str(tmp_path / "ws"))
    snaps = tiny_hf_cache(tmp_path / "hub")
    at = app_on(DEMO, timeout=180)
    at.switch_page("views/generate.py").run()
    at.segmented_control(key="gen_kind").set_value("transformers config").run()
    for repo, snap in snaps.items():
        at.text_input(key="gen_hf_own").set_value(str(snap)).run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        task_box = next(s for s in at.selectbox if s.label == "Task")
        shown = texts(at).replace("\\", "")
        assert "--task" not in shown and snap.name not in shown, shown
        assert f"`{repo}`" in shown, shown  # named by its repo id
        if repo == "tiny/vit-classifier":
            assert "digits10" in task_box.options and "seq-brackets" not in task_box.options
            assert task_box.value == "none"  # no task in its card: unscored by default
            task_box.set_value("digits10").run()
            assert "grey copied to RGB, 8x8 resized to 32x32 px" in texts(at).replace("\\", "")
            assert "task `digits10`" in texts(at)
        else:  # no head: no task it can be scored on
            assert task_box.options == ["none: generated unscored"], task_box.options
            assert "no classification head" in shown and "no task (unscored)" in shown
        assert at.button(key="gen_go").disabled is False


@needs_demo
def test_layers_page_says_when_the_atlas_choice_has_no_weights(monkeypatch):
    """Issue 27: a model chosen on the Atlas page without stored weights is named, not silently
    swapped; the histograms open on weight matrices; the spectral panel is drawn with the page
    for a small model (not empty until a button is pressed)."""
    from core.catalog import models_with_weights, tokenized_ids

    monkeypatch.delenv("WEIGHTATLAS_ATLAS", raising=False)
    stored = set(tokenized_ids(DEMO)) | set(models_with_weights(DEMO))
    missing = next(m for m in map_table(DEMO).ids if m not in stored)
    at = app_on(DEMO, timeout=180)
    at.session_state["detail_id"] = missing
    at.switch_page("views/layers.py").run()
    assert not at.exception, at.exception
    note = next(i.value for i in at.info if "chosen on the Atlas page" in i.value)
    assert missing.replace("-", "\\-") in note or missing in note
    assert f"only {len(stored)} of its" in note
    assert at.selectbox(key="layers_model").value in stored
    shown = at.multiselect(key=f"hist_layers_{at.selectbox(key='layers_model').value}").value
    assert shown and not any(n.endswith(".bias") for n in shown), shown
    assert not [b for b in at.button if b.key == "spectral_go"]  # computed with the page
    import json

    depth = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    names = {t.get("name") for d in depth for t in d["data"]}
    assert "alpha (power-law exponent)" in names


@needs_demo
def test_atlas_page_first_run_does_not_import_torch():
    """Issue 27: the Atlas page paints without torch (3-5 s of import on a cold first load),
    and its model panel (card, nearest neighbours, layers, family) opens without it too; the
    torch-backed modules load in the background, long after the page was sent. The first run
    does not import pandas either (its map-quality table is markdown): 0.3-0.8 s of server CPU
    while the browser draws the first map."""
    import subprocess

    code = (
        "import sys\n"
        "import explorer.common as c\n"
        "c._import_and_freeze = lambda *a: None  # the background import, not the page's\n"
        "from streamlit.testing.v1 import AppTest\n"
        "from core.catalog import map_table\n"
        "at = AppTest.from_file('explorer/app.py', default_timeout=120).run()\n"
        "assert not at.exception, at.exception\n"
        "assert at.title[0].value == 'Atlas' and len(at.get('plotly_chart')) == 1\n"
        "first = 'torch' in sys.modules\n"
        "first_pandas = 'pandas' in sys.modules  # imported after the server's first run\n"
        "mid = map_table(sys.argv[1]).ids[7]\n"
        "at.text_input(key='map_search').set_value(mid).run()\n"
        "assert not at.exception, at.exception\n"
        "assert any('Nearest neighbours' in m.value for m in at.markdown)\n"
        "assert len(at.dataframe[1].value) == 8  # the neighbours table, k = 8\n"
        "print(first, 'torch' in sys.modules, first_pandas)\n"
    )
    env = {**__import__("os").environ, "WEIGHTATLAS_ATLAS": str(DEMO)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(DEMO)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False False False"


@needs_demo
def test_demo_atlas_page_shows_its_stored_map_quality():
    """assets/demo ships evaluate's map quality: the table is there on the first run."""
    from core.embeddings.map_quality import stored_map_quality

    stored = stored_map_quality(DEMO)
    assert stored is not None
    at = app_on(DEMO)
    assert not at.exception
    _, rows = map_quality_table(at)
    assert float(rows[0]["embedding"]) == pytest.approx(
        stored["spaces"]["embedding"]["family_accuracy"], abs=5e-4
    )
    assert not [b for b in at.button if b.key == "map_quality_compute"]


@needs_demo
def test_embedding_a_cache_snapshot_names_it_by_its_repo_id(monkeypatch, tmp_path):
    """Issue 27: a model from the HF cache placed on the map is labelled by its repo id, not
    by its snapshot's commit hash."""
    monkeypatch.delenv("WEIGHTATLAS_ATLAS", raising=False)
    snap = tiny_hf_cache(tmp_path / "hub")["tiny/vit-classifier"]
    at = app_on(DEMO, timeout=300)
    at.text_input(key="embed_folder").input(str(snap)).run()
    at.button(key="embed_go").click().run()
    assert not at.exception, at.exception
    assert at.session_state["placed"]["name"] == "tiny/vit-classifier"
    placed = next(s.value for s in at.success if "lands at" in s.value)
    assert "tiny/vit\\-classifier" in placed and snap.name not in placed


def _read_only_dir(tmp_path: Path) -> Path | None:
    """A read-only folder: a read-only tmpfs as root (root ignores permission bits), else a
    folder without write permission; None where neither can be made."""
    import os
    import shutil
    import subprocess

    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        return d
    if shutil.which("mount") is None:
        return None
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)])
    return d if r.returncode == 0 else None


@needs_demo
def test_generate_page_says_the_workspace_is_unusable_and_takes_another(monkeypatch, tmp_path):
    """Issue 27: a workspace on a read-only mount, under a file or under /proc is one line on the
    Generate page (no OSError box), with a field that takes another folder."""
    import os
    import subprocess

    from core.atlas import WORKSPACE_ENV

    (tmp_path / "a-file").write_text("x")
    cases = {"under a file": tmp_path / "a-file" / "ws", "under /proc": Path("/proc/wa-ws")}
    ro = _read_only_dir(tmp_path)
    if ro is not None:
        cases["read-only"] = ro / "ws"
    try:
        for what, ws in cases.items():
            monkeypatch.setenv(WORKSPACE_ENV, str(ws))
            at = app_on(DEMO, timeout=120)
            at.switch_page("views/generate.py").run()
            assert not at.exception, (what, at.exception)
            errors = [str(e.value) for e in at.error]
            assert len(errors) == 1 and "\n" not in errors[0], (what, errors)
            assert errors[0].startswith("Generated models cannot be written: the workspace")
            assert "is not usable" in errors[0] and "OSError" not in errors[0], errors
            assert not [b for b in at.button if b.key == "gen_go"]
        good = tmp_path / "good-ws"
        at.text_input(key="gen_workspace").input(str(good)).run()
        at.button(key="gen_workspace_use").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert os.environ[WORKSPACE_ENV] == str(good)
        assert [b for b in at.button if b.key == "gen_go"]  # generation can start
        assert (good / atlas_workspace(DEMO).name / "generated").is_dir()
    finally:
        if ro is not None and os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)])


def _embed_with_page_bar(folder: str, atlas: str) -> None:
    """AppTest script: a PageBar given to core's embed_model_dir (not emptied, to inspect)."""
    import streamlit as st

    from core.embeddings.table import embed_model_dir
    from explorer.common import PageBar

    bar = PageBar("Embedding")
    st.session_state.z = embed_model_dir(folder, atlas, progress=bar).tolist()
    st.session_state.bar = (bar.text, bar.n, bar.total)


@needs_demo
def test_page_bar_follows_an_embedding_to_its_end(tmp_path):
    """Issue 27: the Atlas page's bar takes core's progress protocol: embedding a folder
    draws its reading step, then every window of the encoder pass, ending at 100%."""
    from core.atlas import Atlas
    from core.embeddings.encode import halo_windows
    from core.embeddings.table import token_scheme
    from core.tokens.plan import tokenize_model_dir

    snap = tiny_hf_cache(tmp_path / "hub")["tiny/bert-features"]
    at = AppTest.from_function(
        _embed_with_page_bar, args=(str(snap), str(DEMO)), default_timeout=120
    )
    at.run()
    assert not at.exception, at.exception
    n = tokenize_model_dir(snap, *token_scheme(Atlas.open(DEMO))).n_tokens
    windows = len(halo_windows(n, 64, 8))
    text, done, total = at.session_state["bar"]
    assert (done, total) == (windows, windows) and text.startswith("embed ")
    bars = at.get("progress")
    assert len(bars) == 1 and bars[0].proto.value == 100
    assert f"({windows:,} of {windows:,})" in bars[0].proto.text
    assert len(at.session_state["z"]) > 0
