"""The stage notebooks: committed clean, parameterised, and each one runnable alone.

The fast checks read the notebooks (stripped outputs, one ``parameters`` cell, cells that only
import ``core`` and plotting libraries). The slow test executes every notebook on its own with
papermill and tiny parameters, in stage order on one shared atlas (a two-family zoo):

    .venv/bin/pytest tests/test_notebooks.py              # fast checks
    .venv/bin/pytest tests/test_notebooks.py -m slow      # run each notebook (a few minutes)
"""

from __future__ import annotations

import ast
import json
import logging
import math
from pathlib import Path

import nbformat
import pytest

from core.experiments.pipeline import NOTEBOOK_DIR, STAGES, _declared_parameters, table_numbers

ALLOWED_IMPORTS = {"core", "IPython", "matplotlib", "plotly"}


def _notebooks() -> list[Path]:
    return [NOTEBOOK_DIR / name for name in STAGES.values()]


def test_one_notebook_per_stage_in_order() -> None:
    names = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert names == list(STAGES.values())


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_is_clean_and_parameterised(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs not stripped"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[0], "the first code cell is the parameters cell"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3, "explain each step"
    assert "savefig" in "".join(c.source for c in code) or "save_figure" in "".join(
        c.source for c in code
    ), "each notebook saves at least one figure"
    for cell in code:
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            assert not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Lambda), (
                f"logic in a cell of {path.name}; move it into core"
            )
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [(node.module or "").split(".")[0]]
            else:
                continue
            assert set(mods) <= ALLOWED_IMPORTS, f"{path.name} imports {mods}"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_papermill_infers_every_parameter_the_pipeline_passes(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """papermill reads the parameters cell line by line and skips a line with two ``=`` (one in
    a comment was enough): it then warns "Passed unknown parameter" for the value the pipeline
    passes (which arrives all the same). Every name the pipeline may pass must be inferred."""
    import papermill

    with caplog.at_level(logging.WARNING, logger="papermill"):
        inferred = papermill.inspect_notebook(str(path))
    assert set(inferred) == _declared_parameters(path)
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("papermill")]


# ------------------------------------------------------------------------------------ slow

TINY_ZOO = {
    "families": ["cnn", "mlp"],
    "tasks": ["digits10:2", "wine:1"],
    "epochs": 3,
    "checkpoints": [1, 2, 3],
}
TINY = {
    "01_collect": dict(zoo_preset="ci", zoo_overrides=TINY_ZOO),
    "02_tokenize": dict(scheme="dense", token_size=64),
    "03_train": dict(backbone_preset="ci", train_steps=40),
    "04_embed_probe": dict(embed_preset="ci", probe_preset="ci"),
    "05_generate": dict(
        sample_arch="zoo:cnn", heldout_task="digits-invert", generation_overrides={"epochs": [0, 1]}
    ),
    "06_ablations": dict(ablation_preset="ci", ablation_steps=20, target_arch="zoo:cnn"),
}
# what each notebook must leave behind: (results table, figure names)
PRODUCES = {
    "01_collect": (["collection"], ["01_collection"]),
    "02_tokenize": (["tokens"], ["02_tokens"]),
    "03_train": (["training"], ["03_training"]),
    "04_embed_probe": (["probes"], ["04_map_pca", "04_probes"]),
    "05_generate": (["generation"], ["05_generation"]),
    "06_ablations": (
        ["ablation_mln", "ablation_tokenization", "ablation_composition"],
        ["06_ablation_mln", "ablation_mln_histograms", "06_ablation_tokenization"],
    ),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("stem", list(TINY))
def test_notebook_runs_alone(stem: str, run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    import papermill

    params = {
        "atlas_dir": str(run_dir / "atlas"),
        "figures_dir": str(run_dir / "figures"),
        **TINY[stem],
    }
    if stem == "01_collect":
        params["zoo_dir"] = str(run_dir / "zoo")
    if stem == "05_generate":
        params["generation_preset"] = "ci"
    out = run_dir / f"{stem}.ipynb"
    with caplog.at_level(logging.WARNING, logger="papermill"):
        papermill.execute_notebook(
            str(NOTEBOOK_DIR / f"{stem}.ipynb"),
            str(out),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(run_dir),
        )
    unknown = [r.getMessage() for r in caplog.records if "unknown parameter" in r.getMessage()]
    assert not unknown, unknown
    executed = nbformat.read(out, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert any(o.get("output_type") == "display_data" for o in outputs)
    tables, figures = PRODUCES[stem]
    for name in tables:
        text = (run_dir / "atlas" / "results" / f"{name}.md").read_text()
        values = table_numbers(text)
        assert values and all(math.isfinite(v) for v in values), (name, text)
    for fig in figures:
        assert (run_dir / "figures" / f"{fig}.png").stat().st_size > 5000
    if stem == "05_generate":  # generation_overrides arrived: the protocol ran its epochs
        generation = json.loads((run_dir / "atlas" / "results" / "generation.json").read_text())
        assert generation["config"]["epochs"] == [0, 1]
