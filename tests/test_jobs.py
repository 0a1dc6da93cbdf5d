"""explorer.jobs: the app's workspace lies outside the atlas; sample requests become CLI arguments."""

from __future__ import annotations

import pytest

from explorer.jobs import SampleRequest, atlas_workspace, generated_dir


def test_workspace_is_outside_the_atlas_and_overridable(syn, monkeypatch, tmp_path):
    monkeypatch.setenv("WEIGHTATLAS_WORKSPACE", str(tmp_path / "ws"))
    out = generated_dir(syn)
    assert out.is_dir() and out.is_relative_to(tmp_path / "ws")
    assert atlas_workspace(syn) == out.parent and syn.name in out.parent.name
    monkeypatch.delenv("WEIGHTATLAS_WORKSPACE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert generated_dir(syn).is_relative_to(tmp_path / "cache" / "weightatlas" / "workspace")
    monkeypatch.setenv("WEIGHTATLAS_WORKSPACE", str(syn / "inside"))
    with pytest.raises(Exception, match="inside the atlas"):
        generated_dir(syn)
    argv = SampleRequest("zoo:mlp", n=3, keep=1, task="wine", width=8, depth=1).argv()
    assert argv == ["--arch", "zoo:mlp", "--n", "3", "--keep", "1", "--seed", "0"] + [
        "--task",
        "wine",
        "--width",
        "8",
        "--depth",
        "1",
    ]
