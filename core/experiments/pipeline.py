"""The experiment pipeline: run the stage notebooks in order with papermill, then write a report.

    weightatlas pipeline --preset ci --out RUN            # zoo -> ... -> ablations, RUN/results/report.md
    weightatlas pipeline --preset demo --out RUN --from train   # resume from a stage
    weightatlas pipeline --preset ci --out RUN --set backbone.latent_dim=8 --set train.lr=3e-4

Each notebook in ``notebooks/`` has a ``parameters`` cell; this module injects the preset's
values (``PipelineConfig``'s knobs, and each stage config's dotted overrides as
``<stage>_overrides`` dicts, ``STAGE_OVERRIDES``), executes it into ``RUN/notebooks/NN_stage.ipynb`` and stops at the first failing cell,
keeping everything before it. The notebooks call ``core`` only, so the same experiment runs
from the CLI, from JupyterLab, or from here.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atlas import (
    Atlas,
    TokenTable,
    append_jsonl,
    atomic_write_bytes,
    read_json,
    read_jsonl,
    write_json,
)
from core.config import (
    ConfigError,
    build,
    build_config,
    check_preset,
    flatten,
    register_presets,
    to_dict,
)
from core.errors import WeightAtlasError
from core.experiments.ablations import ABLATIONS
from core.experiments.report import section_verdicts
from core.tokens.schemes import SCHEMES
from core.tokens.tokenize import TOKENIZE_PRESETS
from core.zoos.tasks import TASKS

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"

# stage name -> notebook file, in pipeline order
STAGES: dict[str, str] = {
    "collect": "01_collect.ipynb",
    "tokenize": "02_tokenize.ipynb",
    "train": "03_train.ipynb",
    "embed": "04_embed_probe.ipynb",
    "generate": "05_generate.ipynb",
    "ablations": "06_ablations.ipynb",
}


@dataclass
class PipelineConfig:
    """Knobs of one pipeline run; each stage notebook takes the subset its parameters cell declares.

    Attributes:
        zoo_preset: ``core.zoos.zoo`` preset built into ``RUN/zoo`` when ``source`` is None.
        source: collect from this directory / HF cache / ``hub`` instead of building a zoo.
        collect_preset: ``core.collection`` COLLECT_PRESETS name.
        scheme: token scheme of the main token store.
        token_size: values per token.
        backbone_preset: BACKBONE preset of the main backbone.
        train_steps: steps of the main backbone (None: the training preset's own length).
        embed_preset: EMBED_PRESETS name.
        probe_preset: PROBE_PRESETS name.
        sample_arch: architecture generated in the generation stage.
        sample_task: its in-distribution task (None: the family's default task).
        heldout_task: a task absent from the collection, for zero-shot transfer.
        generation_preset: GENERATION_PRESETS name (fine-tuning budget, seeds, n, keep).
        sample_preset: SAMPLE_PRESETS name.
        ablation_preset: ABLATION_PRESETS name.
        ablation_steps: steps of every ablation backbone (None: the ablation preset's).
        ablations: which ablations to run (``mln``, ``tokenization``, ``composition``).
        target_arch: architecture the ablations generate.
        seed: seed of the zoo, training and sampling.
    """

    zoo_preset: str = "ci"
    source: str | None = None
    collect_preset: str = "ci"
    scheme: str = "dense"
    token_size: int = TokenTable.DEFAULT_TOKEN_SIZE
    backbone_preset: str = "ci"
    train_steps: int | None = None
    embed_preset: str = "ci"
    probe_preset: str = "ci"
    sample_arch: str = "zoo:cnn"
    sample_task: str | None = None
    heldout_task: str = "gratings16"
    generation_preset: str = "ci"
    sample_preset: str = "ci"
    ablation_preset: str = "ci"
    ablation_steps: int | None = None
    ablations: tuple[str, ...] = ("mln", "tokenization", "composition")
    target_arch: str = "zoo:cnn"
    seed: int = 0


PIPELINE_PRESETS: dict[str, dict[str, Any]] = {
    "ci": dict(
        zoo_preset="ci",
        collect_preset="ci",
        backbone_preset="ci",
        embed_preset="ci",
        probe_preset="ci",
        generation_preset="ci",
        sample_preset="ci",
        ablation_preset="ci",
    ),
    "demo": dict(
        zoo_preset="demo",
        collect_preset="demo",
        backbone_preset="demo",
        embed_preset="demo",
        probe_preset="demo",
        generation_preset="demo",
        sample_preset="demo",
        ablation_preset="demo",
        scheme=TOKENIZE_PRESETS["demo"]["scheme"],
        # procedural gratings: in no zoo preset (digits-5to9 shares its inputs with digits10
        # and digits-0to4, which the collection holds)
        heldout_task="gratings16",
    ),
}
register_presets("pipeline", PipelineConfig, PIPELINE_PRESETS)
# the demo run with the main backbone trained to convergence (~1 h of the run's time on 2 CPU
# cores; `demo` keeps the whole pipeline near 30 min); assets/demo is exported from it
PIPELINE_PRESETS["demo-long"] = {**PIPELINE_PRESETS["demo"], "backbone_preset": "demo-long"}


class StageFailed(WeightAtlasError):
    """A notebook cell raised; the message names the stage, the cell and the error."""


# A pipeline ``--set`` key ``PREFIX.FIELD`` configures one stage's own config: PREFIX ->
# (the notebook parameter that takes these overrides, the component, the PipelineConfig field
# naming its preset, whether the prefix stays part of the key). The training run's config is
# one tree (core.backbone.config.TrainRunConfig), so ``backbone.*`` and ``train.*`` keep theirs.
STAGE_OVERRIDES: dict[str, tuple[str, str, str | None, bool]] = {
    "zoo": ("zoo_overrides", "zoo", "zoo_preset", False),
    "collect": ("collect_overrides", "collect", "collect_preset", False),
    "tokenize": ("tokenize_overrides", "tokenize", None, False),
    "backbone": ("train_overrides", "train", "backbone_preset", True),
    "train": ("train_overrides", "train", "backbone_preset", True),
    "embed": ("embed_overrides", "embed", "embed_preset", False),
    "probe": ("probe_overrides", "probe", "probe_preset", False),
    "generation": ("generation_overrides", "generation", "generation_preset", False),
    "ablation": ("ablation_overrides", "ablation", "ablation_preset", False),
}


def split_overrides(
    overrides: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(PipelineConfig keys, {notebook parameter: that stage's overrides})`` of pipeline keys.

    ``train.lr=3e-4`` goes to ``train_overrides`` as ``train.lr``, ``embed.window=64`` to
    ``embed_overrides`` as ``window``; keys without a stage prefix are PipelineConfig's.
    """
    own: dict[str, Any] = {}
    stages: dict[str, dict[str, Any]] = {param: {} for param, *_ in STAGE_OVERRIDES.values()}
    for key, value in flatten(overrides or {}).items():
        head, dot, rest = key.partition(".")
        if not dot:
            own[key] = value
        elif head in STAGE_OVERRIDES:
            param, _, _, keep = STAGE_OVERRIDES[head]
            stages[param][key if keep else rest] = value
        else:
            raise ConfigError(
                f"unknown pipeline key {key}: a dotted key starts with a stage's config, one of "
                f"{', '.join(STAGE_OVERRIDES)}"
            )
    return own, stages


def promoted(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """The PipelineConfig knobs each notebook folds into its stage's overrides (before the
    ``<stage>_overrides`` dict, which wins): the notebooks' own cells do the same."""
    steps = {} if cfg.train_steps is None else {"train.steps": cfg.train_steps}
    ablation_steps = {} if cfg.ablation_steps is None else {"steps": cfg.ablation_steps}
    return {
        "tokenize_overrides": {"scheme": cfg.scheme, "token_size": cfg.token_size},
        "train_overrides": {"train.seed": cfg.seed, **steps},
        "ablation_overrides": {"target_arch": cfg.target_arch, "seed": cfg.seed, **ablation_steps},
    }


def resolve_stages(
    cfg: PipelineConfig, stages: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each stage config as the run's notebooks build it: its preset <- the promoted knobs <-
    the pipeline's dotted overrides (the backbone's token size is then the token store's).

    Raises:
        ConfigError: an unknown or mistyped stage key (with the valid keys), before any stage.
    """
    out: dict[str, dict[str, Any]] = {}
    knobs = promoted(cfg)
    for prefix, (param, component, preset_field, _) in STAGE_OVERRIDES.items():
        if component in out:
            continue
        preset = getattr(cfg, preset_field) if preset_field else None
        overrides = {**knobs.get(param, {}), **stages.get(param, {})}
        try:
            out[component] = to_dict(build(component, preset, overrides=overrides))
        except ConfigError as e:
            raise ConfigError(f"pipeline --set {prefix}.*: {e}") from None
    return out


def _stage_parameters(
    cfg: PipelineConfig,
    run: Path,
    stage: str,
    stage_overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The papermill parameters of one stage: paths, the config fields it declares and the
    stage configs' overrides (``<stage>_overrides``)."""
    params: dict[str, Any] = {
        "run_dir": str(run),
        "atlas_dir": str(run / "atlas"),
        "zoo_dir": str(run / "zoo"),
        "figures_dir": str(run / "results" / "figures"),
    }
    params.update({k: list(v) if isinstance(v, tuple) else v for k, v in to_dict(cfg).items()})
    params.update(stage_overrides or {})
    return params


def _declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's ``parameters`` cell."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return set(re.findall(r"^([A-Za-z_]\w*)\s*=", cell.source, flags=re.M))
    raise WeightAtlasError(f"{notebook.name} has no cell tagged 'parameters'")


def run_stage(
    stage: str,
    run: Path,
    cfg: PipelineConfig,
    notebook_dir: Path = NOTEBOOK_DIR,
    stage_overrides: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Execute one stage notebook into ``RUN/notebooks``; raise StageFailed on a failing cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    src = notebook_dir / STAGES[stage]
    out = run / "notebooks" / STAGES[stage]
    out.parent.mkdir(parents=True, exist_ok=True)
    declared = _declared_parameters(src)
    params = _stage_parameters(cfg, run, stage, stage_overrides)
    params = {k: v for k, v in params.items() if k in declared}
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(src),
            str(out),
            parameters=params,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(run),
        )
    except PapermillExecutionError as e:
        raise StageFailed(
            f"stage {stage!r} failed in cell [{e.exec_count}] `{failing_cell_source(out)}`: "
            f"{e.ename}: {e.evalue} (executed notebook kept at {out})"
        ) from None
    append_jsonl(
        run / "results" / "stages.jsonl",
        [{"stage": stage, "seconds": round(time.perf_counter() - t0, 2), "notebook": str(out)}],
    )
    return out


def failing_cell_source(executed: Path, max_chars: int = 300) -> str:
    """The source of the first cell with an error output in an executed notebook, on one line."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except (OSError, ValueError):
        return "?"
    for cell in nb.cells:
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            text = " ; ".join(line.strip() for line in cell.source.splitlines() if line.strip())
            return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
    return "?"


# PipelineConfig field -> the component whose preset it names
SUB_PRESETS = {
    "zoo_preset": "zoo",
    "collect_preset": "collect",
    "backbone_preset": "train",
    "embed_preset": "embed",
    "probe_preset": "probe",
    "generation_preset": "generation",
    "sample_preset": "sample",
    "ablation_preset": "ablation",
}


def check_config(cfg: PipelineConfig) -> None:
    """Fail before the first stage on a sub-preset, scheme, task or ablation that does not exist.

    Raises:
        ConfigError: naming the field and the valid choices.
    """
    for field, component in SUB_PRESETS.items():
        try:
            check_preset(component, getattr(cfg, field))
        except ConfigError as e:
            raise ConfigError(f"{field}: {e}") from None
    if cfg.scheme not in SCHEMES:
        raise ConfigError(f"scheme: {cfg.scheme!r} is not one of {sorted(SCHEMES)}")
    for field in ("sample_task", "heldout_task"):
        task = getattr(cfg, field)
        if task is not None and task not in TASKS:
            raise ConfigError(f"{field}: unknown task {task!r}; tasks: {', '.join(sorted(TASKS))}")
    unknown = sorted(set(cfg.ablations) - set(ABLATIONS))
    if unknown:
        raise ConfigError(f"ablations: {unknown} are not among {list(ABLATIONS)}")


def pipeline(
    preset: str = "ci",
    out: str | Path = "runs/ci",
    from_stage: str | None = None,
    only: str | None = None,
    overrides: dict[str, Any] | None = None,
    notebook_dir: Path = NOTEBOOK_DIR,
) -> Path:
    """Run the stage notebooks in order and write ``RUN/results/report.md``.

    Args:
        preset: a PIPELINE_PRESETS name.
        out: the run directory (holds zoo/, atlas/, notebooks/, results/).
        from_stage: resume from this stage; earlier stages are taken as done.
        only: run this one stage.
        overrides: PipelineConfig fields, and stage config keys by their stage's dotted
            prefix (``train.lr``, ``backbone.latent_dim``, ``embed.window``: ``STAGE_OVERRIDES``).

    Returns:
        The path of the report.
    """
    from tqdm import tqdm

    own, stage_overrides = split_overrides(overrides)
    cfg = build_config(PipelineConfig, PIPELINE_PRESETS, preset, overrides=own)
    check_config(cfg)
    resolved = resolve_stages(cfg, stage_overrides)
    run = Path(out).resolve()  # notebooks run with cwd=run; relative paths would nest
    run.mkdir(parents=True, exist_ok=True)
    names = list(STAGES)
    for given in (from_stage, only):
        if given is not None and given not in STAGES:
            raise WeightAtlasError(f"unknown stage {given!r}; stages are {', '.join(names)}")
    todo = [only] if only else names[names.index(from_stage) if from_stage else 0 :]
    set_stages = {k: v for k, v in stage_overrides.items() if v}
    meta = {"preset": preset, "config": to_dict(cfg), "stage_overrides": set_stages}
    write_json(run / "pipeline.json", {**meta, "stages": resolved})
    t0 = time.perf_counter()
    for stage in tqdm(todo, desc="pipeline", unit="stage"):
        run_stage(stage, run, cfg, notebook_dir, stage_overrides)
    append_jsonl(
        run / "results" / "stages.jsonl",
        [{"stage": "pipeline", "seconds": round(time.perf_counter() - t0, 2), "stages": todo}],
    )
    return write_report(run)  # after the total, so the report shows this invocation's


# Report: the tables each stage wrote into ATLAS/results as (title, file) in report order.
REPORT_TABLES: list[tuple[str, str]] = [
    ("Collection", "collection.md"),
    ("Token store", "tokens.md"),
    ("Backbone training", "training.md"),
    ("Map quality: nearest neighbours vs s(W)", "map_quality.md"),
    # `weightatlas evaluate` writes it beside map_quality.md (atlases evaluated before: none)
    ("Permutation invariance: permuted copies vs inter-model distance", "permutation.md"),
    ("Property probes vs s(W)", "probes.md"),
    ("Generation vs random init", "generation.md"),
    ("Ablation: loss normalization (MLN)", "ablation_mln.md"),
    ("Ablation: tokenization", "ablation_tokenization.md"),
    ("Ablation: collection composition", "ablation_composition.md"),
    # issue 17's experiment (core.experiments.modality.run_modality), when it ran on this atlas
    ("Experiment: a second modality", "experiment_modality.md"),
    # issue 26: `weightatlas lineage` (core.trees), when it ran on this atlas
    ("Model trees: lineage from the weights", "lineage.md"),
]

# What the papers report for each comparison, shown above our numbers (not a verdict).
PAPER_CLAIMS: dict[str, str] = {
    "probes.md": "Paper 003, Table 9 (Table 1, Tables 10-12): linear probes inside one small-CNN "
    "zoo (one architecture, one data set) predict test accuracy, epoch and generalization gap "
    "from SANE embeddings about as well as from the weight statistics s(W). Test R², SANE vs "
    "s(W): MNIST 0.978 vs 0.987 (Acc), 0.958 vs 0.974 (Epoch), 0.402 vs 0.393 (Ggap); SVHN "
    "0.991 vs 0.985, 0.930 vs 0.953, 0.760 vs 0.711; CIFAR-10 0.885 vs 0.965, 0.771 vs 0.923, "
    "0.772 vs 0.909; STL 0.305 vs 0.919, 0.344 vs 0.977, 0.307 vs 0.858. The flattened "
    "weights W trail both (CIFAR-10 Acc -7.580, STL -18.818). So s(W) is ahead on CIFAR-10 "
    "and far ahead on STL; 003 never pools zoos.",
    "permutation.md": "Paper 003 §2 (Model Alignment): 'we reduced all training models to a "
    "unique, canonical basis of a reference model' (git re-basin against one fixed reference, "
    "Ainsworth et al. 2022); §3: 'As augmentations, we use noise and permutation. The "
    "permutation is computed relative to the aligned model', one view aligned, the other "
    "permuted; Appendix A, Table 6: alignment halves the reconstruction loss (test 0.167 -> "
    "0.082). 003 reports no figure for how far a permuted copy's embedding moves.",
    "generation.md": "Paper 003 §5.2, Tables 3-5 (001 C.2 the same protocol: sample, keep the "
    "best, fine-tune 5 epochs with Adam lr 1e-3): sampled models start above training from "
    "scratch and stay ahead, e.g. Table 3 CIFAR-10 CNNs epoch 0 SANE-SUB 57.9 ± 0.2 % vs "
    "scratch ~10 %, epoch 5 59.6 ± 0.3 vs 48.5 ± 1.0; Table 4 ResNet-18 CIFAR-10 epoch 0 "
    "68.1 ± 0.7 vs ~10 %. On a new task with few prompt examples (Table 5, CIFAR-100 -> "
    "Tiny-ImageNet): epoch 0 0.6 ± 0.0 vs 0.5 ± 0.0 (both at chance), epoch 1 39.4 ± 1.5 vs "
    "10.4 ± 2.2, epoch 2 61.0 ± 0.2 vs 28.5 ± 0.9.",
    "ablation_mln.md": "Paper 001 §4.1, Table 1 (generated ResNet-18s, SANE with LWLN vs MLN, "
    "zero-shot accuracy): CIFAR-10 LWLN 68.6 ± 1.2 vs MLN 60.8 ± 0.7; CIFAR-100 20.4 ± 1.3 vs "
    "29.0 ± 0.7; Tiny-ImageNet 11.7 ± 0.5 vs 24.8 ± 0.2. D.4.1, Fig. 6 (ResNet layers of test "
    "models, qualitative): without normalization the weights of layers with narrow "
    "distributions are squashed towards the mean; normalizing per token fixes that; ignoring "
    "the mask introduces a strong bias, particularly for batch-norm layers; MLN matches the "
    "original distributions the closest.",
    "ablation_tokenization.md": "Paper 001 D.4.2, Fig. 7: sparse tokenization adds 20 % "
    "padding per token, dense 0.01 %; both reach similar reconstruction R² on held-out models; "
    "dense uses 20 % less disk.",
    "experiment_modality.md": "Paper 001 §4.4.1, Fig. 4 (qualitative, no table): a backbone "
    "trained only on vision models generates GPT-2 (~125M) weights that converge faster on "
    "OpenWebText than training from scratch (validation loss, perplexity, accuracy, F1), which "
    "001 reads as generalization to a different modality.",
    "ablation_composition.md": "Paper 001 §4.2, Table 2 (generated ResNet-18s, CIFAR-10 / "
    "CIFAR-100 / Tiny-ImageNet): backbones trained on one family (ResNet 360 models: 10.68 / "
    "1.09 / 0.58 %; ConvNext 306: 21.66 / 14.95 / 9.12 %; ViT 2,000: 31.38 / 32.24 / 20.14 %) "
    "vs all 2,000 HF models: 40.71 / 26.23 / 21.45 %; paper 000: more diverse zoos help.",
}


VERDICT_RULE = (
    "Verdicts: **agree** / **disagree** when the two arms differ by more than the sum of their "
    "spreads (std over folds, models or seeds, as each table says); **inconclusive** when both "
    "arms sit at chance (within max(std, 0.02) of the most frequent test class) or their "
    "spreads overlap. The probe claim is one of parity: overlapping spreads with both above "
    "the mean predictor and both R² >= 0.5 agree with it. **not testable** when the setup "
    "cannot answer the claim, and the line says why: an untrained backbone (kept step 0), a "
    "target whose spread is within its measurement noise (the generalization gap against the "
    "test accuracy's standard error), arms whose batch-norm statistics were estimated "
    "differently, or a training set below the paper's own floor (001 Table 12: ~45 M tokens). "
    "Paired comparisons (the same held-out layers in two arms) use medians and an exact sign "
    "test (p < 0.05)."
)


def _timings(run: Path) -> list[str]:
    """The stage timing table: the latest run of each stage, and the latest pipeline total."""
    last: dict[str, dict[str, Any]] = {}
    for t in read_jsonl(run / "results" / "stages.jsonl"):
        last[t["stage"]] = t
    if not last:
        return []
    lines = ["| stage | seconds |", "|---|---|"]
    lines += [f"| {st} | {last[st]['seconds']:.1f} |" for st in STAGES if st in last]
    if "pipeline" in last:
        ran = ", ".join(last["pipeline"].get("stages", []))
        lines += [f"| total of the last invocation ({ran}) | {last['pipeline']['seconds']:.1f} |"]
    return [*lines, ""]


# sections shown only when their table exists (experiments the pipeline does not run itself)
OPTIONAL_TABLES = {"experiment_modality.md", "lineage.md", "permutation.md"}

# a pointer under a section to a page of the repository's docs
SECTION_NOTES: dict[str, str] = {
    "map_quality.md": "What the map is for (DESIGN): nearby models share family, task and "
    "quality. Issue 25's targets on the demo atlas: family >= 0.90 in the embedding and >= 0.85 "
    "in the 2-D UMAP, within-family task >= majority + 0.25, kNN test-accuracy R² >= 0.5, and "
    "the embedding no worse than s(W) by more than 0.05 on any figure "
    "(`core.embeddings.map_quality`; `weightatlas evaluate` prints the table).",
    "permutation.md": "Issue 25's target: a function-preserving permuted copy of a validation "
    "or test model within 0.1 of the median inter-model distance of its original, per family "
    "with permutation views. The canonical form (`EmbedConfig.canonical`, on in atlases embedded "
    "since it exists) sorts each model's hidden units by norm on its own, not 003's alignment "
    "to a reference model; the "
    "learned column is the same backbone on raw tokens (`core.embeddings.invariance`; "
    "`weightatlas evaluate` prints both).",
    "training.md": "Why the demo backbone keeps 62 of 64 values per token, and what a 2x squeeze "
    "(001's 230 -> 128) reaches on these weights: `docs/results/backbone.md` (issue 14).",
    "ablation_mln.md": "Why the demo arms keep 56 of 64 values per token rather than 001's 2x: "
    "these conv/linear weights are white per token, so a linear code of latent L keeps median "
    "per-layer R² ~= L / 64 and a 2x squeeze caps near 0.5 (the arms reached 0.46 at best); "
    "the linear path starts random, not as the shared PCA code, so each arm's loss shapes it "
    "(`docs/results/README.md`, issue 15).",
}

# figures shown under each section (the rest go to the end)
SECTION_FIGURES: dict[str, tuple[str, ...]] = {
    "collection.md": ("01_collection",),
    "tokens.md": ("02_tokens",),
    "training.md": ("03_training",),
    "probes.md": ("04_probes", "04_map_pca"),
    "generation.md": ("05_generation",),
    "ablation_mln.md": ("06_ablation_mln", "ablation_mln_histograms"),
    "ablation_tokenization.md": ("06_ablation_tokenization",),
    "ablation_composition.md": ("06_ablation_composition",),
}


def write_report(run: str | Path) -> Path:
    """Assemble ``RUN/results/report.md`` from the tables and figures the stages wrote."""

    run = Path(run)
    results = Atlas(run / "atlas").results_dir
    lines = ["# Weight Atlas pipeline report", ""]
    info = run / "pipeline.json"
    if info.exists():
        meta = read_json(info)
        knobs = ", ".join(f"`{k}={v}`" for k, v in meta["config"].items())
        lines += [f"Preset `{meta['preset']}`: {knobs}.", ""]
    lines += _timings(run)
    lines += [VERDICT_RULE, ""]
    figures = {f.stem: f for f in sorted((run / "results" / "figures").glob("*.png"))}
    for title, name in REPORT_TABLES:
        if name in OPTIONAL_TABLES and not (results / name).exists():
            continue
        lines += [f"## {title}", ""]
        if name in PAPER_CLAIMS:
            lines += [f"> {PAPER_CLAIMS[name]}", ""]
        path = results / name
        lines.append(path.read_text().strip() if path.exists() else "_not produced in this run_")
        lines.append("")
        verdicts = section_verdicts(results, name) if path.exists() else []
        if verdicts:
            lines += ["**Verdict against the paper:**", "", *verdicts, ""]
        if name in SECTION_NOTES:
            lines += [SECTION_NOTES[name], ""]
        for stem in SECTION_FIGURES.get(name, ()):
            if stem in figures:
                lines += [f"![{stem}](figures/{figures.pop(stem).name})", ""]
    if figures:
        lines += ["## Other figures", ""]
        lines += [f"![{f.stem}](figures/{f.name})" for f in figures.values()]
        lines.append("")
    report = run / "results" / "report.md"
    atomic_write_bytes(report, "\n".join(lines).encode())
    return report


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_CELL = re.compile(rf"^({_NUM})%?(?:\s*±\s*({_NUM})%?)?$", flags=re.I)


def table_numbers(text: str) -> list[float]:
    """Every number in markdown table cells: plain values, percentages and ``mean ± std``."""
    values = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line.strip()) <= set("|-: "):
            for cell in line.strip().strip("|").split("|"):
                m = _CELL.match(cell.strip())
                if m:
                    values += [float(g) for g in m.groups() if g is not None]
    return values


def report_numbers(report: str | Path) -> list[float]:
    """Every number in the report's table cells (for checks that all are finite)."""
    return table_numbers(Path(report).read_text())


def section_numbers(report: str | Path) -> dict[str, list[float]]:
    """The numbers of each ``## section`` of the report's tables, by section title."""
    out: dict[str, list[float]] = {}
    title = None
    chunk: list[str] = []
    for line in [*Path(report).read_text().splitlines(), "## "]:
        if line.startswith("## "):
            if title is not None:
                out[title] = table_numbers("\n".join(chunk))
            title, chunk = line[3:].strip(), []
        else:
            chunk.append(line)
    return out
