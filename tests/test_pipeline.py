"""The papermill pipeline: stage order, --from/--only, failure handling, report assembly.

Fast tests drive ``core.experiments.pipeline`` with two throw-away notebooks (a kernel start each); the
slow test runs ``weightatlas pipeline --preset ci`` end to end as CI does:

    .venv/bin/pytest tests/test_pipeline.py                 # fast
    .venv/bin/pytest tests/test_pipeline.py -m slow         # the ci pipeline (<= 10 minutes)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import core.experiments.pipeline as pl
from core.errors import WeightAtlasError

ROOT = Path(__file__).resolve().parent.parent


def _notebook(path: Path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def fake_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two stages writing marker files; the second fails when ``seed`` is negative."""
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(
        nbdir / "a.ipynb",
        'run_dir = "x"\nseed = 0',
        "from pathlib import Path\nPath(run_dir, 'a.txt').write_text(str(seed))",
    )
    _notebook(
        nbdir / "b.ipynb",
        'run_dir = "x"\nseed = 0',
        "from pathlib import Path\nassert seed >= 0, 'seed must be >= 0'\n"
        "Path(run_dir, 'b.txt').write_text(str(seed))",
    )
    monkeypatch.setattr(pl, "STAGES", {"first": "a.ipynb", "second": "b.ipynb"})
    return nbdir


def test_stages_run_in_order_with_parameters(fake_stages: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = pl.pipeline("ci", run, overrides={"seed": 3}, notebook_dir=fake_stages)
    assert (run / "a.txt").read_text() == "3" and (run / "b.txt").read_text() == "3"
    assert report == run / "results" / "report.md"
    executed = nbformat.read(run / "notebooks" / "a.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "seed = 3" in injected[0].source
    stages = [json.loads(line)["stage"] for line in (run / "results" / "stages.jsonl").open()]
    assert stages == ["first", "second", "pipeline"]
    assert "| total of the last invocation (first, second) |" in report.read_text()
    pl.pipeline("ci", run, only="second", overrides={"seed": 3}, notebook_dir=fake_stages)
    assert "| total of the last invocation (second) |" in report.read_text()


def test_relative_run_dir_is_not_nested(
    fake_stages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notebooks run with cwd=RUN, so a relative --out must not become RUN/RUN."""
    monkeypatch.chdir(tmp_path)
    pl.pipeline("ci", Path("runs/rel"), overrides={"seed": 5}, notebook_dir=fake_stages)
    assert (tmp_path / "runs" / "rel" / "a.txt").read_text() == "5"
    assert not (tmp_path / "runs" / "rel" / "runs").exists()


def test_failing_stage_names_cell_and_keeps_earlier_outputs(
    fake_stages: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    pl.pipeline("ci", run, overrides={"seed": 1}, notebook_dir=fake_stages)
    first_nb = run / "notebooks" / "a.ipynb"
    before = first_nb.stat().st_mtime_ns
    with pytest.raises(pl.StageFailed) as err:
        pl.pipeline(
            "ci", run, from_stage="second", overrides={"seed": -1}, notebook_dir=fake_stages
        )
    msg = str(err.value)
    assert "stage 'second'" in msg and "assert seed >= 0" in msg and "seed must be >= 0" in msg
    assert first_nb.stat().st_mtime_ns == before  # --from skipped the first stage
    assert (run / "a.txt").read_text() == "1"  # earlier results kept
    failed = nbformat.read(run / "notebooks" / "b.ipynb", as_version=4)
    errors = [o for c in failed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors and errors[0].ename == "AssertionError"
    # resume from the failed stage with a good parameter
    pl.pipeline("ci", run, from_stage="second", overrides={"seed": 2}, notebook_dir=fake_stages)
    assert (run / "b.txt").read_text() == "2" and (run / "a.txt").read_text() == "1"


def test_unknown_stage_and_config_key_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightAtlasError, match="unknown stage 'nope'"):
        pl.pipeline("ci", tmp_path / "r", from_stage="nope")
    with pytest.raises(ValueError, match="unknown PipelineConfig key"):
        pl.pipeline("ci", tmp_path / "r", overrides={"no_such_knob": 1})


def test_dotted_stage_keys_reach_the_notebooks_and_the_run_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(
        nbdir / "t.ipynb",
        'run_dir = "x"\ntrain_overrides = {}\nembed_overrides = {}',
        "import json\nfrom pathlib import Path\n"
        "Path(run_dir, 't.json').write_text(json.dumps([train_overrides, embed_overrides]))",
    )
    monkeypatch.setattr(pl, "STAGES", {"train": "t.ipynb"})
    run = tmp_path / "run"
    over = {"backbone.latent_dim": "8", "train.lr": "3e-4", "embed.halo": "4", "seed": 2}
    pl.pipeline("ci", run, overrides=over, notebook_dir=nbdir)
    train_over, embed_over = json.loads((run / "t.json").read_text())
    assert train_over == {"backbone.latent_dim": "8", "train.lr": "3e-4"}
    assert embed_over == {"halo": "4"}
    meta = json.loads((run / "pipeline.json").read_text())
    assert meta["config"]["seed"] == 2
    resolved = meta["stages"]["train"]  # preset ci <- seed (promoted) <- the dotted keys
    assert (resolved["backbone"]["latent_dim"], resolved["train"]["lr"]) == (8, 3e-4)
    assert (resolved["train"]["seed"], resolved["train"]["steps"]) == (2, 300)
    assert meta["stages"]["embed"]["halo"] == 4


def test_a_mistyped_stage_key_fails_before_any_stage(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown BackboneConfig key backbone.latent_dimm.*"
                       "valid keys: backbone.token_size"):  # fmt: skip
        pl.pipeline("ci", tmp_path / "r", overrides={"backbone.latent_dimm": 8})
    with pytest.raises(ValueError, match="unknown pipeline key trian.lr"):
        pl.pipeline("ci", tmp_path / "r", overrides={"trian.lr": 1})
    assert not (tmp_path / "r" / "notebooks").exists()


def test_every_notebook_declares_parameters_the_config_feeds() -> None:
    fields = set(pl.PipelineConfig.__dataclass_fields__)
    paths = {"run_dir", "atlas_dir", "zoo_dir", "figures_dir"}
    local = {param for param, *_ in pl.STAGE_OVERRIDES.values()}  # dotted stage overrides
    for stage, name in pl.STAGES.items():
        declared = pl._declared_parameters(pl.NOTEBOOK_DIR / name)
        assert "atlas_dir" in declared and "figures_dir" in declared, stage
        assert declared <= fields | paths | local, (stage, declared - fields - paths - local)


def _empty_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder whose atlas has only ``atlas.json``: ``(run, its results folder)``."""
    run = tmp_path / "run"
    results = run / "atlas" / "results"
    results.mkdir(parents=True)
    (run / "atlas" / "atlas.json").write_text("{}")
    return run, results


def test_report_collects_tables_and_parses_numbers(tmp_path: Path) -> None:
    run, results = _empty_run(tmp_path)
    (results / "tokens.md").write_text("| a | b |\n|---|---|\n| dense | 0.25 |\n")
    (results / "generation.md").write_text("| init | acc |\n|---|---|\n| sampled | 0.5 ± 0.1 |\n")
    (results / "probes.md").write_text("| t | v |\n|---|---|\n| acc | nan |\n")
    report = pl.write_report(run)
    sections = pl.section_numbers(report)
    assert sections["Token store"] == [0.25]
    assert sections["Generation vs random init"] == [0.5, 0.1]
    assert math.isnan(sections["Property probes vs s(W)"][0])
    assert sections["Collection"] == []
    assert "_not produced in this run_" in report.read_text()
    assert pl.table_numbers("| digits10 | n/a | 12% | -1e-3 |") == [12.0, -0.001]


@pytest.mark.slow
def test_ci_pipeline_end_to_end(tmp_path: Path) -> None:
    """`weightatlas pipeline --preset ci` end to end: every table with finite numbers.

    Its wall time is reported by pytest --durations in .ci/run and in the report's timing
    table, not asserted here.
    """
    run = tmp_path / "run"
    # one intra-op thread per process: on a shared 2-core runner two threads oversubscribe the
    # cores and the small backbones train 10-20x slower (measured: train stage 13 s vs 313 s)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "core.cli", "pipeline", "--preset", "ci", "--out", str(run)]
    proc = subprocess.run(cli, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run / "results" / "report.md"
    text = report.read_text()
    sections = pl.section_numbers(report)
    for title, name in pl.REPORT_TABLES:
        if name not in pl.OPTIONAL_TABLES:
            assert sections.get(title), f"report section {title!r} has no numbers"
    values = pl.report_numbers(report)
    assert values and all(math.isfinite(v) for v in values)
    assert "_not produced" not in text
    figures = sorted(p.name for p in (run / "results" / "figures").glob("*.png"))
    assert "ablation_mln_histograms.png" in figures and len(figures) >= 8, figures
    for fig in figures:
        assert f"figures/{fig}" in text

    # a sub-preset that does not exist stops the run before its first stage, keeping everything
    kept = {p.name: p.stat().st_mtime_ns for p in (run / "notebooks").glob("0[1-5]_*.ipynb")}
    bad = subprocess.run(
        [*cli, "--from", "ablations", "--set", "ablation_preset=nope"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2
    err = bad.stderr.strip().splitlines()[-1]
    assert "ablation_preset" in err and "'nope'" in err and "choose from ci, demo" in err
    assert {
        p.name: p.stat().st_mtime_ns for p in (run / "notebooks").glob("0[1-5]_*.ipynb")
    } == kept
    assert report.read_text() == text

    # --from resumes: trained ablation backbones are reused, the report is rewritten
    ok = subprocess.run(
        [*cli, "--from", "ablations", "--set", "ablations=tokenization"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert {
        p.name: p.stat().st_mtime_ns for p in (run / "notebooks").glob("0[1-5]_*.ipynb")
    } == kept
    assert all(math.isfinite(v) for v in pl.report_numbers(report))


def test_report_quotes_each_claim_and_states_verdicts(tmp_path: Path) -> None:
    from core.atlas import write_json

    run, results = _empty_run(tmp_path)
    (results / "ablation_composition.md").write_text("| c | acc |\n|---|---|\n| diverse | 0.1 |\n")
    gen = {"generation": {"mean": 0.101, "std": 0.004}}
    write_json(
        results / "ablation_composition.json",
        {"chance": 0.103, "variants": {"diverse": gen, "single-family": {"generation": {"mean": 0.098, "std": 0.0}}}},
    )  # fmt: skip
    text = pl.write_report(run).read_text()
    assert pl.VERDICT_RULE in text
    for name, claim in pl.PAPER_CLAIMS.items():
        assert (claim in text) == (name not in pl.OPTIONAL_TABLES), name
    section = text.split("## Ablation: collection composition")[1]
    assert "**Verdict against the paper:**" in section
    assert "- **inconclusive**: diverse 0.101 ± 0.004 vs single-family 0.098 ± 0.000" in section
    assert "both at chance" in section
    # a section without its JSON has a table but no verdict
    assert "**Verdict" not in text.split("## Ablation: collection composition")[0]


def test_report_has_a_map_quality_section_with_verdicts(tmp_path: Path) -> None:
    from core.atlas import write_json
    from core.embeddings.map_quality import map_quality_markdown

    run, results = _empty_run(tmp_path)
    fig = {"family_accuracy": 0.93, "task_accuracy": 0.5, "test_accuracy_r2": 0.2}
    out = {
        "k": 5, "n_models": 10, "n_runs": 5, "metric": "zscore", "pooling": "depth-mean+std",
        "spaces": {
            "embedding": fig,
            "umap": {**fig, "family_accuracy": 0.5},
            "pca": None,
            "s(W)": {"family_accuracy": 0.96, "task_accuracy": 0.4, "test_accuracy_r2": 0.5},
        },
        "reference": {"family_accuracy": 0.3, "task_accuracy": 0.6, "test_accuracy_r2": -0.01},
    }  # fmt: skip
    write_json(results / "map_quality.json", out)
    (results / "map_quality.md").write_text(map_quality_markdown(out))
    text = pl.write_report(run).read_text()
    section = text.split("## Map quality: nearest neighbours vs s(W)")[1].split("\n## ")[0]
    assert "| family of the neighbours = the model's family (accuracy) | 0.930 | 0.500 |" in section
    assert "issue 25" in section.lower() or "Issue 25" in section
    # within 0.05 of s(W): agree; behind by more: disagree; at or below the reference: disagree
    assert "- **agree**: family accuracy, embedding: 0.930 vs s(W) 0.960" in section
    assert "- **disagree**: family accuracy, 2-D UMAP: 0.500 vs s(W) 0.960" in section
    assert "- **disagree**: task accuracy, embedding: 0.500 vs s(W) 0.400" in section
    assert "no better than the predictor that ignores the weights" in section
    assert "test accuracy r2, embedding: 0.200 vs s(W) 0.500" in section
    assert "2-D PCA" not in section.split("**Verdict")[1]  # no map, no verdict


def test_report_has_a_permutation_section_after_map_quality(tmp_path: Path) -> None:
    """`weightatlas evaluate`'s permutation.md: a table, verdicts on the learned figure, the
    paper's own practice quoted; a run evaluated before the file existed renders without it."""
    from core.atlas import write_json
    from core.embeddings.invariance import permutation_markdown

    run, results = _empty_run(tmp_path)
    (results / "map_quality.md").write_text("| figure | embedding |\n|---|---|\n| family | 0.5 |\n")
    write_json(results / "probes.json", {"split": {}})  # an old result: no "permutation"
    old = pl.write_report(run).read_text()
    title = "## Permutation invariance: permuted copies vs inter-model distance"
    assert "## Map quality: nearest neighbours vs s(W)" in old and title not in old
    assert pl.PAPER_CLAIMS["permutation.md"] not in old

    zero = {"median_ratio": 0.0, "max_ratio": 0.0, "models": 6}
    learned = {"median_ratio": 0.265, "max_ratio": 0.41, "models": 6}
    out = {
        "embedding": {"median_distance": 10.0, "models": 12, "cnn": zero},
        "learned": {"median_distance": 11.0, "models": 12, "cnn": learned},
        "canonical": True, "pooling": "depth-mean+std", "copies": 1, "seed": 0, "target": 0.1,
    }  # fmt: skip
    write_json(results / "permutation.json", out)
    (results / "permutation.md").write_text(permutation_markdown(out))
    text = pl.write_report(run).read_text()
    assert text.index("## Map quality") < text.index(title) < text.index("## Property probes")
    section = text.split(title)[1].split("\n## ")[0]
    assert "| cnn | 0.000 | 0.265 | 0.410 | 6 |" in section
    assert pl.PAPER_CLAIMS["permutation.md"] in section and "git re-basin" in section
    assert "- **disagree**: cnn, learned permutation ratio (raw tokens): 0.265" in section
    assert "not learned" in section and "Issue 25's target" in section
    assert pl.section_numbers(run / "results" / "report.md")[title[3:]] == [0.0, 0.265, 0.41, 6.0]
