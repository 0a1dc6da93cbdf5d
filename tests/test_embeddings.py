"""core.cli.embeddings: `weightatlas embed` says what is wrong in one line."""

from __future__ import annotations

import json


def test_embed_cli_unknown_metric_is_one_line(small_atlas, capsys):
    from core.cli import main

    assert main(["embed", str(small_atlas), "--set", "neighbour_metric=manhattan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown distance metric 'manhattan'" in err[0], err


def test_embed_cli_unknown_pooling_is_one_line(small_atlas, capsys):
    from core.cli import main

    assert main(["embed", str(small_atlas), "--set", "pooling=median"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown pooling 'median'" in err[0] and "depth-mean+std" in err[0]


def test_embed_cli_single_model_rejects_pickles(small_atlas, tmp_path, capsys):
    from core.cli import main

    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text(
        json.dumps({"library_name": "weightatlas", "architecture": "mlp"})
    )
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    assert main(["embed", str(small_atlas), "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and len(err.strip().splitlines()) == 1
