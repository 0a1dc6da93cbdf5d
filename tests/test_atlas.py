"""Atlas I/O: atomic writes, torn-tail-safe JSONL, clear errors for non-atlas paths."""

from __future__ import annotations

import os

import pytest

from core.atlas import Atlas, AtlasError, append_jsonl, atomic_path, read_jsonl, write_json


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
