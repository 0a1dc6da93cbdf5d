"""core.cli.generation: `weightatlas sample`: fresh prompts, estimates, defaults, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.atlas import GeneratedCard, read_json
from core.cli import main


def test_sample_cli_fresh_prompts_and_progress_file(cnn_atlas, tmp_path, capsys):
    from core.cli import main

    prog = tmp_path / "progress.json"
    rc = main(
        ["sample", str(cnn_atlas), "--arch", "zoo:cnn", "--task", "digits-invert", "--n", "2", "--keep", "1",
         "--seed", "2", "--progress-file", str(prog), "--set", "n_prompts=1", "--set", "prompt_epochs=1"]
    )  # fmt: skip
    assert rc == 0
    state = read_json(prog)
    assert state["done"] and state["error"] is None and state["fraction"] == 1.0
    (out,) = state["outputs"]
    card = GeneratedCard(Path(out)).text()
    assert "prompt_source: fresh" in card and "task: digits-invert" in card
    assert "mode: joint" in card  # auto: fresh prompts (unrelated inits) are drawn jointly
    # prompts are scored as the draws are (rebuilt from their tokens, batch norm re-estimated),
    # and as trained
    block = GeneratedCard(Path(out)).block()
    assert len(block["prompt_scores"]) == len(block["prompt_scores_as_trained"]) == 1
    out = capsys.readouterr().out  # the summary names what the kept model is compared with
    assert "against: prompts " in out and "random init " in out and "draws joint" in out
    # bad input: one-line error, and the progress file says so
    assert main(["sample", str(cnn_atlas), "--arch", "zoo:nope", "--progress-file", str(prog)]) == 2
    state = json.loads(prog.read_text())
    assert state["done"] and "nope" in state["error"]


def test_sample_cli_estimate_prints_and_writes_nothing(cnn_atlas, tmp_path, capsys):
    out = tmp_path / "gen"
    assert (
        main(["sample", str(cnn_atlas), "--arch", "zoo:cnn", "--estimate", "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "estimate for zoo:cnn" in text and "Expected time about" in text
    assert "The atlas holds this architecture" in text
    assert not out.exists()


def test_sample_cli_defaults_to_one_anchor_and_five_draws(cnn_atlas, capsys):
    """``weightatlas sample`` follows 001 C.2's timm protocol by default (one anchor sample,
    five draws, the best kept): a target the atlas lacks costs one prompt's encode and decode
    plus five decodes, where ``ci`` costs two prompts and six draws."""
    import json

    def passes(*extra: str) -> dict:
        argv = ["sample", str(cnn_atlas), "--arch", "zoo:cnn", "--task", "digits-invert"]
        assert main([*argv, "--estimate", "--json", *extra]) == 0
        est = json.loads(capsys.readouterr().out)
        assert est["prompt_source"] == "fresh"
        return est["passes"]

    assert passes() == {"encode": 1, "decode": 1 + 5, "place": 0}  # no embeddings: no placing
    assert passes("--preset", "ci") == {"encode": 2, "decode": 2 + 6, "place": 0}


@pytest.mark.parametrize("extra", [[], ["--evaluate"]])
def test_sample_refuses_a_missing_atlas_before_any_progress_bar(tmp_path, capfd, extra):
    """Issue 27: one error line, no progress bar drawn first."""
    assert main(["sample", str(tmp_path / "nowhere"), "--arch", "zoo:mlp", *extra]) == 2
    err = capfd.readouterr().err
    assert err.strip().splitlines() == [
        f"weightatlas sample: error: {tmp_path / 'nowhere'} is not a directory"
    ]
