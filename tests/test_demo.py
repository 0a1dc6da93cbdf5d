"""core.experiments.demo: the shipped demo atlas export."""

from __future__ import annotations


def test_strip_machine_paths_for_shipped_files(tmp_path):
    from core.experiments.demo import strip_machine_paths

    root = tmp_path / "atlas"
    info = {
        "sources": [{"kind": "hf-cache", "spec": "/home/dev/runs/demo/zoo", "n": 3}],
        "backbone": str(root / "backbones" / "mln-none"),
        "models": [str(root / "generated" / "m0"), "weightatlas-zoo/cnn"],
        "note": "relative/path stays",
    }
    out = strip_machine_paths(info, root)
    assert out == {
        "sources": [{"kind": "hf-cache", "spec": "zoo", "n": 3}],
        "backbone": "backbones/mln-none",
        "models": ["generated/m0", "weightatlas-zoo/cnn"],
        "note": "relative/path stays",
    }
