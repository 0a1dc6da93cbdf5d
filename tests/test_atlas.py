"""Atlas I/O: atomic writes, torn-tail-safe JSONL, clear errors for non-atlas paths, and no stage
working through a symlink that leads outside the atlas."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from core.atlas import (
    Atlas,
    AtlasError,
    BackboneFiles,
    EmbeddingTables,
    TokenTable,
    append_jsonl,
    atomic_path,
    read_jsonl,
    write_json,
)


def test_jsonl_survives_a_torn_tail_and_appends_stay_aligned(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, [{"id": "a"}, {"id": "b"}])
    with open(path, "a") as f:  # a writer killed mid-line
        f.write('{"id": "c", "sta')
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b"]
    append_jsonl(path, [{"id": "d"}])
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "d"]


def test_atomic_path_leaves_no_file_on_failure(tmp_path):
    target = tmp_path / "w.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and os.listdir(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


def test_manifest_last_row_wins_and_nan_becomes_null(tmp_path):
    atlas = Atlas.create(tmp_path / "A")
    append_jsonl(atlas.manifest_path, [{"id": "x", "status": "rejected", "score": float("nan")}])
    append_jsonl(atlas.manifest_path, [{"id": "x", "status": "accepted", "split": "train"}])
    assert atlas.accepted("train")[0]["id"] == "x"
    assert next(read_jsonl(atlas.manifest_path))["score"] is None


def test_open_rejects_non_atlas_paths(tmp_path):
    with pytest.raises(AtlasError, match="not a directory"):
        Atlas.open(tmp_path / "missing")
    with pytest.raises(AtlasError, match="not an atlas"):
        Atlas.open(tmp_path)
    write_json(tmp_path / "atlas.json", {"version": 1})
    assert Atlas.open(tmp_path).info() == {"version": 1}


# ------------------------------------------- a shared atlas whose folders lead elsewhere (issue 27)

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"


@pytest.fixture
def linked(tmp_path):
    """``link(name) -> (atlas, outside)``: a copy of the demo atlas whose ``name`` (a table or a
    stage folder) is moved to ``outside/`` and replaced by a symlink to it."""

    def link(name: str) -> tuple[Path, Path]:
        atlas, outside = tmp_path / "atlas", tmp_path / "outside"
        shutil.copytree(DEMO, atlas, ignore=shutil.ignore_patterns("generated"))
        outside.mkdir()
        src = atlas / name
        if src.exists():
            shutil.move(src, outside / name)
        else:
            (outside / name).mkdir()
        (atlas / name).symlink_to(outside / name)
        return atlas, outside

    return link


def _snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*")}


def _refused(args: list[str], outside: Path, capsys) -> None:
    """The stage exits 2 with one line naming the link, and writes nothing outside the atlas."""
    from core.cli import main

    before = _snapshot(outside)
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and "is a symlink" in err[0] and "outside the atlas" in err[0], err
    assert err[0].startswith(f"weightatlas {args[0]}: error:")
    assert _snapshot(outside) == before


def test_collect_refuses_a_symlinked_manifest(linked, tmp_path, capsys):
    from core.collection.specs import resolve_arch
    from core.models.families import build_from_config
    from core.models.io import save_model_dir

    atlas, outside = linked("manifest.jsonl")
    arch = resolve_arch("mlp")
    src = tmp_path / "models"
    save_model_dir(build_from_config(arch.config, 0), src / "m0", arch.library, config=arch.config)
    _refused(["collect", str(atlas), "--source", str(src), "--no-progress"], outside, capsys)


def test_tokenize_refuses_a_symlinked_token_store(linked, capsys):
    atlas, outside = linked("tokens")
    _refused(["tokenize", str(atlas)], outside, capsys)


def test_train_refuses_a_symlinked_backbone(linked, capsys):
    atlas, outside = linked("backbone")
    _refused(["train", str(atlas), "--preset", "ci", "--set", "steps=20"], outside, capsys)


def test_embed_refuses_symlinked_embeddings(linked, capsys):
    atlas, outside = linked("embeddings")
    _refused(["embed", str(atlas)], outside, capsys)


def test_evaluate_refuses_symlinked_results(linked, capsys):
    atlas, outside = linked("results")
    _refused(["evaluate", str(atlas)], outside, capsys)


def test_sample_refuses_a_symlinked_atlas_json(linked, capsys):
    atlas, outside = linked("atlas.json")
    _refused(["sample", str(atlas), "--arch", "cnn"], outside, capsys)


def test_a_link_inside_a_stage_folder_is_refused_and_links_inside_the_atlas_are_kept(linked):
    atlas, outside = linked("generated")
    (atlas / "generated").unlink()
    (atlas / "generated").symlink_to(atlas / "backbones" / "mln-layer")  # inside: fine
    assert Atlas.open(atlas).root == atlas
    (atlas / "generated").unlink()
    metrics = atlas / "backbone" / "metrics.jsonl"
    shutil.move(metrics, outside / "metrics.jsonl")
    metrics.symlink_to(outside / "metrics.jsonl")  # train appends to it
    with pytest.raises(AtlasError, match="metrics.jsonl is a symlink"):
        Atlas.open(atlas)
    with pytest.raises(AtlasError, match="outside the atlas"):
        Atlas.create(atlas)


def test_app_refuses_an_atlas_with_a_symlinked_stage_folder(linked):
    pytest.importorskip("streamlit")
    import sys

    from streamlit.testing.v1 import AppTest

    atlas, _outside = linked("embeddings")
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    at = AppTest.from_file(str(repo / "explorer" / "app.py"), default_timeout=60)
    at.session_state["atlas_path"] = str(atlas)
    at.run()
    assert not at.exception
    errors = " ".join(str(e.value) for e in at.error)
    assert "embeddings is a symlink" in errors and "outside the atlas" in errors, errors


def test_a_corrupt_manifest_line_warns_with_its_number(tmp_path, capsys):
    """Issue 27: a damaged line in the middle of a table is skipped with a warning naming the
    file and the line (the CLI prints it as one line), not silently."""
    from core.atlas import CorruptLineWarning
    from core.cli import main

    atlas = Atlas.create(tmp_path / "A")
    rows = [{"id": f"m{i}", "status": "accepted", "split": "train"} for i in range(5)]
    append_jsonl(atlas.manifest_path, rows)
    lines = atlas.manifest_path.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:10] + "\x1b[2J\n"  # damaged mid-file, with an escape sequence in it
    atlas.manifest_path.write_text("".join(lines))
    with pytest.warns(CorruptLineWarning, match=r"manifest.jsonl line 3 is not a JSON object"):
        ids = [r["id"] for r in atlas.manifest()]
    assert ids == ["m0", "m1", "m3", "m4"]
    capsys.readouterr()
    assert main(["tokenize", str(atlas.root)]) == 0  # rows without weights: nothing to cut
    err = capsys.readouterr().err
    warned = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warned) == 1 and "\x1b" not in err, err
    assert warned[0] == (
        f"weightatlas tokenize: warning: {atlas.manifest_path} line 3 is not a JSON object; "
        "skipped (its row is ignored)"
    )


def test_known_atlases_find_a_name_from_any_folder(tmp_path, monkeypatch):
    """Issue 27: a stage run on ``my-atlas`` in one folder records it; the app's sidebar then
    resolves ``my-atlas`` started from any other folder (its working directory first)."""
    from core.atlas import KnownAtlases
    from core.cli import main
    from explorer.common import resolve_atlas

    monkeypatch.setenv("WEIGHTATLAS_WORKSPACE", str(tmp_path / "ws"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    zoo_dir = tmp_path / "empty-source"
    zoo_dir.mkdir()
    assert main(["collect", "my-atlas", "--source", str(zoo_dir), "--no-progress"]) == 0
    assert KnownAtlases().paths() == [(work / "my-atlas").resolve()]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_atlas("my-atlas") == (work / "my-atlas").resolve()
    (elsewhere / "my-atlas").mkdir()  # the working directory's own folder comes first
    assert resolve_atlas("my-atlas") == (elsewhere / "my-atlas").resolve()
    assert resolve_atlas("assets/demo").parts[-2:] == ("assets", "demo")
    assert KnownAtlases().find("nope") == []


def test_the_suite_keeps_out_of_the_users_workspace():
    """conftest points the workspace at a temporary folder for the whole run (subprocesses
    included), so no test leaves a folder in ``~/.cache/weightatlas``."""
    import os

    from core.atlas import workspace_root

    tmp = os.environ["WEIGHTATLAS_TEST_WORKSPACE"]
    assert workspace_root() == Path(tmp).resolve()
    assert not workspace_root().is_relative_to(Path.home() / ".cache")


# ------------------------------------------------------------------ one owner per table

TABLE_FILES = {
    *(v for c in (TokenTable, BackboneFiles, EmbeddingTables) for k, v in vars(c).items()
      if k.isupper() and isinstance(v, str) and v.endswith((".json", ".jsonl", ".safetensors"))),
    "atlas.json",
    "manifest.jsonl",
}  # fmt: skip
# Hub-format model folders (core.models) share two names with a backbone folder
HUB_FORMAT = {BackboneFiles.WEIGHTS, BackboneFiles.CONFIG}
OWNERS = {"core/atlas.py", "core/manifest.py"}


def _spelled_table_names(root: Path) -> list[str]:
    """``path:line name`` for every string constant in core/ and explorer/ that is a table's
    file name (or ends in ``/name``), outside the owners."""
    import ast

    hits = []
    for pkg in ("core", "explorer"):
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in OWNERS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in TABLE_FILES - HUB_FORMAT:
                        if node.value == name or node.value.endswith("/" + name):
                            hits.append(f"{rel}:{node.lineno} {name}")
    return hits


def test_table_file_names_are_spelled_only_by_their_owners():
    root = Path(__file__).resolve().parent.parent
    assert {"index.json", "maps.json", "models.jsonl", "info.json"} <= TABLE_FILES
    assert _spelled_table_names(root) == []


def test_table_name_check_finds_a_planted_spelling(tmp_path):
    (tmp_path / "core").mkdir()
    (tmp_path / "explorer").mkdir()
    (tmp_path / "core" / "x.py").write_text('p = "maps.json"\nq = "embeddings/models.jsonl"\n')
    assert _spelled_table_names(tmp_path) == [
        "core/x.py:1 maps.json",
        "core/x.py:2 models.jsonl",
    ]


def test_old_atlases_open_through_the_tables():
    demo = Path(__file__).resolve().parent.parent / "assets" / "demo"
    a = Atlas.open(demo)
    assert a.tokens.exists() and a.backbone.exists() and a.embeddings.exists()
    assert len(a.embeddings.models()) == len(a.manifest()) > 0
    assert a.embeddings.stamp() > 0 and a.tokens.stamp() > 0


def test_write_result_writes_the_table_and_its_rendering(tmp_path):
    """``Atlas.write_result``: the one writer of ``results/NAME.json`` + ``NAME.md``."""
    a = Atlas.create(tmp_path / "atlas")
    path = a.write_result("figure", {"value": 0.25, "rows": [1, 2]}, "| a |\n")
    assert path == a.results_dir / "figure.json"
    assert json.loads(path.read_text()) == {"value": 0.25, "rows": [1, 2]}
    assert (a.results_dir / "figure.md").read_text() == "| a |\n"
    assert sorted(p.name for p in a.results_dir.iterdir()) == ["figure.json", "figure.md"]
