"""core.catalog: what the explorer reads of an atlas."""

from __future__ import annotations

from core.catalog import zip_dir


def test_zip_dir_round_trip(tmp_path):
    import io
    import zipfile

    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"x" * 10)
    names = zipfile.ZipFile(io.BytesIO(zip_dir(d))).namelist()
    assert sorted(names) == ["model/config.json", "model/model.safetensors"]
