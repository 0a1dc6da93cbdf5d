"""weightatlas: learn one weight-space representation of many trained models, then explore it.

    weightatlas zoo --preset ci --out ZOO                 # (optional) train a small model zoo
    weightatlas collect ATLAS --source ZOO                # or hf-cache (your HF cache), or hub
    weightatlas tokenize ATLAS                            # weights -> tokens
    weightatlas train ATLAS --preset demo                 # the backbone autoencoder
    weightatlas embed ATLAS                               # embeddings and 2-D maps
    weightatlas evaluate ATLAS ; weightatlas sample ATLAS --arch SPEC
    weightatlas lineage ATLAS                             # model trees from the weights
    streamlit run explorer/app.py                         # explore (type ATLAS in the sidebar)

Every stage reads and writes one atlas directory and can be re-run alone (it resumes).
Every stage takes ``--preset NAME``, ``--config FILE`` and ``--set KEY=VALUE`` (applied in that
order over the defaults); each prints a short summary (``--json`` for the machine-readable
result). ``weightatlas STAGE --help`` lists a stage's options.

This file is the whole command line: one ``add_<stage>_cli(parser)`` and ``run_<stage>_cli(args)``
pair per stage, calling core's public functions; :func:`main` turns expected errors into one-line
messages and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tqdm.auto import tqdm

from core.atlas import (
    Atlas,
    BackboneFiles,
    CorruptLineWarning,
    EmbeddingTables,
    KnownAtlases,
    atomic_write_bytes,
    dumps,
    read_json,
    read_jsonl,
)
from core.backbone.train import split_warning, train
from core.bench import BENCHES
from core.catalog import backbone_budget, generated_card
from core.collection.collect import collect, reasons_table, summary
from core.config import build_config, file_and_overrides, parse_overrides, presets_of
from core.embeddings.distances import atlas_distance, model_architecture, place_on_map
from core.embeddings.embed import embed
from core.embeddings.encode import EMBED_PRESETS, EmbedConfig
from core.embeddings.fidelity import layer_report
from core.embeddings.map_quality import map_quality_markdown
from core.embeddings.probes import evaluate, probes_markdown
from core.embeddings.table import _model_path, embed_model_dir_full, neighbours
from core.errors import USER_ERRORS, DiskFullError, WeightAtlasError
from core.experiments.demo import demo, dir_bytes
from core.experiments.pipeline import STAGES, pipeline
from core.generation.config import DEFAULT_SAMPLE_PRESET, GENERATION_PRESETS
from core.generation.draws import PRIORS
from core.generation.estimate import estimate_sample
from core.generation.evaluation import (
    evaluate_generation,
    generation_markdown,
    reconstruction_accuracy,
)
from core.generation.sample import progress_file_writer, sample
from core.safety import is_disk_full, printable
from core.tokens.schemes import DEFAULT_TOKEN_SIZE, SCHEMES
from core.tokens.tokenize import tokenize
from core.zoos.zoo import ZOO_INDEX, zoo


def add_json_flag(p: argparse.ArgumentParser) -> None:
    """``--json``: print the stage's result as JSON instead of the human summary."""
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON (for scripts) instead of the short summary",
    )


# the one default preset of the stages that build an atlas of your models (collect, train,
# embed, evaluate): ``ci`` is the explicit smoke test (``--preset ci``); ``zoo`` and
# ``pipeline`` keep ``ci``, their own smoke-test runs
USER_PRESET = "demo"


def add_config_flags(
    p: argparse.ArgumentParser,
    component: str,
    default: str | None,
    what: str | None = None,
    default_text: str | None = None,
) -> None:
    """``--preset NAME``, ``--config FILE`` and ``--set KEY=VALUE``: the one way to configure a stage.

    The config is built as defaults <- preset <- file <- ``--set`` (``core.config.build``); an
    unknown or mistyped key fails with the list of valid keys.
    """
    cls, table = presets_of(component)
    what = what or cls.__name__
    p.add_argument(
        "--preset",
        default=default,
        choices=list(table),
        help=f"{what} preset (default: {default_text or default or 'the dataclass defaults'})",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"JSON or YAML file of {what} fields, applied over the preset",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a {what} field, applied last (repeatable)",
    )


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--config`` file's fields with the ``--set`` pairs on top."""
    return file_and_overrides(args.config, parse_overrides(args.overrides))


def emit(args: argparse.Namespace, data: object, summary: str) -> None:
    """Print ``summary`` (a few human lines), or ``data`` as JSON with ``--json``."""
    if getattr(args, "json", False):
        print(dumps(data, indent=2))  # JSON escapes control characters itself
    else:
        print(printable(summary, newlines=True))
    sys.stdout.flush()


def disk_full_message(e: BaseException, args: argparse.Namespace) -> str:
    """``disk full while writing X; nothing lost, re-run to resume`` (X: the file, else the atlas)."""
    where = None
    cur: BaseException | None = e
    while cur is not None and where is None:
        where = getattr(cur, "filename", None)
        cur = cur.__cause__ or cur.__context__
    where = where or getattr(args, "atlas", None) or getattr(args, "out", None) or "the output"
    return f"disk full while writing {where}; nothing lost, re-run to resume"


# ------------------------------------------------------------ zoo
def add_zoo_cli(p: argparse.ArgumentParser) -> None:

    add_config_flags(p, "zoo", "ci")
    p.add_argument("--out", required=True, help="output directory (written in HF cache layout)")
    p.add_argument("--seed", type=int, default=0, help="zoo seed (default: 0)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many new checkpoints")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once (processes)")
    add_json_flag(p)


def run_zoo_cli(args: argparse.Namespace) -> int:

    out = zoo(
        args.preset,
        args.out,
        seed=args.seed,
        overrides=config_overrides(args),
        limit=args.limit,
        workers=args.workers,
    )
    done = (out / ZOO_INDEX).exists()
    rows = list(read_jsonl(out / ZOO_INDEX)) if done else []
    families = sorted({str(r["family"]) for r in rows if r.get("family")})
    tasks = sorted({str(r["task"]) for r in rows if r.get("task")})
    data = {"out": str(out), "complete": done, "checkpoints": len(rows)}
    data.update(families=families, tasks=tasks)
    if done:
        text = (
            f"zoo: {len(rows)} checkpoints ({len(families)} families x {len(tasks)} tasks) "
            f"written to {out} (HF cache layout)\n"
            f"next: weightatlas collect ATLAS --source {out}"
        )
    else:
        text = f"zoo: stopped after --limit; re-run the same command to finish {out}"
    emit(args, data, text)
    return 0


# ------------------------------------------------------------ collect


def add_collect_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("atlas", help="atlas directory (created if needed)")
    # shorthands for `--set FIELD=VALUE` of the commonest CollectConfig fields
    p.add_argument(
        "--source",
        default=None,
        help="'hub' (default), 'hf-cache' (your Hugging Face cache), an HF cache dir "
        "(models--org--name/...) or a dir of model folders",
    )
    p.add_argument(
        "--tags", nargs="*", default=None, help="required tags, e.g. image-classification"
    )
    p.add_argument("--pipeline-tag", default=None, help="required pipeline tag")
    p.add_argument("--library", default=None, help="required library (transformers, timm, ...)")
    p.add_argument(
        "--sort",
        default=None,
        help="Hub listing order (downloads, likes, last_modified, ...)",
    )
    p.add_argument("--limit", type=int, default=None, help="at most this many candidates")
    p.add_argument("--max-params", type=int, default=None, help="largest model (float values)")
    p.add_argument(
        "--n-train", type=int, default=None, help="stop once this many train models are accepted"
    )
    p.add_argument(
        "--n-val", type=int, default=None, help="stop once this many val models are accepted"
    )
    p.add_argument("--workers", type=int, default=None, help="concurrent candidates")
    add_config_flags(p, "collect", USER_PRESET)
    p.add_argument(
        "--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    add_json_flag(p)


def run_collect_cli(args: argparse.Namespace) -> int:
    shorthands = ("source", "tags", "pipeline_tag", "library", "sort", "limit", "max_params")
    shorthands += ("n_train", "n_val", "workers", "endpoint")
    flags = {k: getattr(args, k) for k in shorthands if getattr(args, k) is not None}
    rows = collect(
        args.atlas, args.preset, {**flags, **config_overrides(args)}, progress=not args.no_progress
    )

    status = Counter(r.get("status") for r in rows)
    data = {
        "atlas": str(args.atlas),
        "candidates": len(rows),
        "accepted": status.get("accepted", 0),
        "rejected": status.get("rejected", 0),
        "splits": dict(Counter(r["split"] for r in rows if r.get("status") == "accepted")),
        "reasons": dict(reasons_table(rows)),
    }
    text = summary(rows) + f"\nmanifest: {Atlas(Path(args.atlas)).manifest_path}"
    if data["accepted"]:
        text += f"\nnext: weightatlas tokenize {args.atlas}"
    emit(args, data, text)
    return 0


# ------------------------------------------------------------ tokenize
def add_tokenize_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("atlas", help="atlas directory (after `weightatlas collect`)")
    p.add_argument(
        "--scheme",
        choices=sorted(SCHEMES),
        default=None,
        help="token scheme (default: the store's, else dense)",
    )
    p.add_argument(
        "--token-size",
        type=int,
        default=None,
        help=f"values per token (default: the store's, else {DEFAULT_TOKEN_SIZE})",
    )
    add_config_flags(p, "tokenize", None)
    p.add_argument("--shard-mb", type=float, default=None, help="target weight MiB per shard file")
    p.add_argument("--rank", type=int, default=None, help="this process' rank (default: env RANK)")
    p.add_argument(
        "--retry-failed", action="store_true", help="tokenize models that failed before again"
    )
    p.add_argument(
        "--world-size", type=int, default=None, help="number of processes (default: env WORLD_SIZE)"
    )

    add_json_flag(p)


def run_tokenize_cli(args: argparse.Namespace) -> int:
    stats = tokenize(
        args.atlas,
        scheme=args.scheme,
        token_size=args.token_size,
        rank=args.rank,
        world_size=args.world_size,
        shard_bytes=None if args.shard_mb is None else int(args.shard_mb * 2**20),
        retry_failed=args.retry_failed,
        preset=args.preset,
        overrides=config_overrides(args),
    )

    where = Path(args.atlas) / "tokens"
    if not stats.get("models") and not stats.get("failed"):
        text = (
            f"tokenize: nothing to tokenize in {args.atlas} (no accepted model in its manifest)\n"
            f"first: weightatlas collect {args.atlas} --source SOURCE"
        )
    else:
        text = (
            f"tokenize: {stats['models']} models cut into {stats['tokens']:,} tokens of "
            f"{stats['token_size']} values ({stats['scheme']} scheme, "
            f"{100 * stats['padding_fraction']:.1f}% padding); {stats['failed']} failed\n"
            f"token store: {where}\n"
            f"next: weightatlas train {args.atlas} --preset demo"
        )
    emit(args, {**stats, "out": str(where)}, text)
    return 0


# ------------------------------------------------------------ train


def train_summary_text(summary: dict[str, Any], atlas: str | Path, preset: str) -> str:
    """A few lines on a finished training run: steps, time, models, validation R², where."""
    out = Path(str(summary.get("out", "")))
    cfg = BackboneFiles(out).config()
    n_train, n_val = cfg.get("n_train_models"), cfg.get("n_val_models")
    lines = [
        f"train: {summary.get('steps', '?')} steps in {summary.get('seconds', 0):.0f} s "
        f"(preset {preset}) on {n_train if n_train is not None else '?'} training models"
        + (" (stopped early)" if summary.get("stopped_early") else "")
    ]
    best = summary.get("best")
    if isinstance(best, dict) and isinstance(best.get("value"), int | float):
        start = " (the starting point: training did not beat it)" if best.get("step") == 0 else ""
        lines.append(
            f"kept: the checkpoint of step {best.get('step')}, {best.get('metric')} "
            f"{best['value']:.3f}{start}"
        )
    else:
        lines.append(f"kept: the last step ({summary.get('steps', '?')}); no validation score")
    for fam, n in (summary.get("families_not_trained") or {}).items():
        lines.append(printable(split_warning(fam, n)))
    if isinstance(summary.get("val_r2"), int | float):
        lines.append(
            f"last validation R² {summary['val_r2']:.3f} on {summary.get('val_models', n_val)} "
            "held-out models"
            + (
                f"; training R² {summary['train_r2']:.3f} on a sample of "
                f"{summary.get('train_models', '?')} training models"
                if isinstance(summary.get("train_r2"), int | float)
                else ""
            )
        )
    if preset == "ci":
        lines.append("note: preset ci is a smoke test; use --preset demo or larger for a map")
    lines.append(f"backbone written to {out}")
    default_out = Atlas(Path(atlas)).backbone_dir
    own = str(out) and out.resolve() != default_out.resolve()
    lines.append(f"next: weightatlas embed {atlas}" + (f" --backbone {out}" if own else ""))
    return "\n".join(lines)


def add_train_cli(p: argparse.ArgumentParser) -> None:
    """Flags of ``weightatlas train``."""

    p.add_argument("atlas", help="atlas directory (collected and tokenized)")
    add_config_flags(p, "train", USER_PRESET, "BackboneConfig/TrainConfig")
    p.add_argument("--out", default=None, help="output dir (default ATLAS/backbone)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    add_json_flag(p)


def run_train_cli(args: argparse.Namespace) -> int:
    """Run ``weightatlas train``; prints a short summary (``--json``: the summary dict) on rank 0."""

    summary = train(
        args.atlas,
        args.preset,
        config_overrides(args),
        out=args.out,
        resume=not args.fresh,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        emit(args, summary, train_summary_text(summary, args.atlas, args.preset))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


# ------------------------------------------------------------ embed
# CLI


def add_embed_cli(p: argparse.ArgumentParser) -> None:

    add_json_flag(p)
    p.add_argument("atlas", help="atlas directory (tokenized, with a trained backbone)")
    add_config_flags(p, "embed", USER_PRESET)
    p.add_argument("--model", default=None, help="embed one model directory or Hub id instead")
    p.add_argument("--k", type=int, default=5, help="neighbours to list with --model")
    p.add_argument("--window", type=int, default=None, help="tokens per encoder pass")
    p.add_argument("--halo", type=int, default=None, help="context tokens on each side")
    p.add_argument(
        "--batch-size", type=int, default=None, help="windows per encoder batch (default: preset's)"
    )
    p.add_argument(
        "--rank",
        type=int,
        default=None,
        help="this process' share of the models when several embed at once (default: env RANK)",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="number of processes sharing the work (default: env WORLD_SIZE, else 1)",
    )
    p.add_argument("--backbone", default=None, help="another backbone directory")


def run_embed_cli(args: argparse.Namespace) -> int:
    shorthands = {"halo": args.halo, "window": args.window, "batch_size": args.batch_size}
    overrides = {**{k: v for k, v in shorthands.items() if v is not None}, **config_overrides(args)}
    if args.model is None:
        out = embed(
            args.atlas,
            args.preset,
            overrides,
            rank=args.rank,
            world_size=args.world_size,
            backbone_dir=args.backbone,
        )

        done = EmbeddingTables(out).tensors_path.exists()
        if not done:
            emit(args, {"out": str(out), "done": False}, f"embed: this rank's part written to {out}; "
                 "the maps are built when every rank has finished")  # fmt: skip
            return 0
        info = EmbeddingTables(out).info()
        ratio = info.get("pca_explained_variance_ratio") or []
        pca = f" (PCA axes explain {100 * sum(ratio[:2]):.0f}% of the variance)" if ratio else ""
        emit(
            args,
            {"out": str(out), "done": True, **info},
            f"embed: {info.get('n_models', '?')} models embedded in {info.get('latent_dim', '?')} "
            f"dimensions; UMAP and PCA maps{pca}\n"
            f"written to {out}\n"
            f"next: streamlit run explorer/app.py (type {args.atlas} in the sidebar), or "
            f"weightatlas evaluate {args.atlas}",
        )
        return 0
    cfg = build_config(EmbedConfig, EMBED_PRESETS, args.preset, overrides=overrides)
    path = _model_path(args.model, args.atlas)
    summ = embed_model_dir_full(path, args.atlas, cfg=cfg, progress=True)
    v = summ["z"].numpy()
    result = {
        "model": args.model,
        "path": str(path),
        "map": place_on_map(args.atlas, v),
        "neighbours": [{"id": i, "distance": d} for i, d in neighbours(args.atlas, v, args.k)],
        "atlas_distance": atlas_distance(
            args.atlas, v, architecture=model_architecture(path)
        ),  # issue 16, strangers
        "z": v.tolist(),
    }

    ad = result["atlas_distance"]
    near = ", ".join(f"{n['id']} ({n['distance']:.3f})" for n in result["neighbours"][:3])
    emit(
        args,
        result,
        f"embed: {args.model} ({path})\n"
        f"map position: UMAP {result['map']['umap'][0]:.2f}, {result['map']['umap'][1]:.2f}\n"
        f"nearest: {near}\n"
        f"atlas distance {ad['distance']:.4f} (mean {ad['metric']} distance to its {ad['k']} "
        f"nearest atlas models), percentile {ad['percentile']:.1f} of the atlas' own: "
        f"{ad['meaning']}\n"
        f"architecture in atlas: {'yes' if ad['architecture_in_atlas'] else 'no'} -- "
        f"{ad['architecture_note']}",
    )
    if ad["outside"] and getattr(args, "json", False):
        print(f"warning: {args.model} is {ad['meaning']}", file=sys.stderr)
    if not ad["architecture_in_atlas"] and getattr(args, "json", False):
        print(f"warning: {args.model}: {ad['architecture_note']}", file=sys.stderr)
    return 0


# ------------------------------------------------------------ evaluate
# CLI


def add_evaluate_cli(p: argparse.ArgumentParser) -> None:

    p.add_argument("atlas", help="an embedded atlas directory")
    add_config_flags(p, "probe", USER_PRESET)
    p.add_argument("--backbone", default=None, help="probe another backbone's embeddings")
    p.add_argument(
        "--layers",
        default=None,
        metavar="MODEL_ID",
        help="print the layer report of one model instead",
    )
    p.add_argument(
        "--encode-decode",
        default=None,
        metavar="FAMILY/TASK",
        help="print test accuracy of the val/test models of FAMILY/TASK (e.g. cnn/digits10) "
        "before and after an encode-decode through the backbone instead",
    )
    add_json_flag(p)


def run_evaluate_cli(args: argparse.Namespace) -> int:

    if getattr(args, "encode_decode", None):
        family, _, task = args.encode_decode.partition("/")
        if not task:
            raise WeightAtlasError(f"--encode-decode {args.encode_decode!r}: use FAMILY/TASK")
        rows = reconstruction_accuracy(args.atlas, family, task, backbone_dir=args.backbone)
        lines = [f"{'model':48s} {'split':5s} {'orig':>6s} {'decoded':>8s} {'+bn':>6s} {'r2':>6s}"]
        for r in rows:
            bn = r.get("accuracy_decoded_bn")
            lines.append(
                f"{r['id'][-48:]:48s} {r['split']:5s} {r['accuracy_original']:6.3f} "
                f"{r['accuracy_decoded']:8.3f} {'' if bn is None else f'{bn:6.3f}':>6s} "
                f"{r['r2']:6.3f}"
            )
        emit(args, rows, "\n".join(lines))
        return 0
    if args.layers is not None:
        recs = layer_report(args.atlas, args.layers, args.backbone)
        if args.json:
            emit(args, [{k: v for k, v in r.items() if k not in ("original", "reconstructed")}
                        for r in recs], "")  # fmt: skip
            return 0
        print(f"{'layer':40s} {'kind':7s} {'shape':>18s} {'r2':>8s} {'mse':>10s} {'w1/std':>8s}")
        for r in recs:
            r2 = "n/a" if r["r2"] is None else f"{r['r2']:.3f}"
            w1 = "n/a" if r["w1_over_std"] is None else f"{r['w1_over_std']:.3f}"
            print(
                f"{r['name'][:40]:40s} {r['kind']:7s} {'x'.join(map(str, r['shape'])):>18s} {r2:>8s} {r['mse']:10.3g} {w1:>8s}"
            )
        return 0
    out = evaluate(
        args.atlas,
        preset=args.preset,
        backbone_dir=args.backbone,
        overrides=config_overrides(args),
    )
    a = Atlas.open(args.atlas)
    notes = []
    if args.preset == "ci":
        notes.append(
            "preset ci is a smoke test (3-fold CV, coarse hyper-parameter grids): it checks "
            "that the stage runs; use --preset demo for numbers to report."
        )
    trained = backbone_budget(Path(args.backbone) if args.backbone else a.backbone_dir)
    if trained.get("preset") == "ci":
        notes.append(
            f"the backbone was trained with the ci preset ({trained.get('steps', '?')} steps), "
            "a smoke test as well: its embeddings say little about the method."
        )
    text = probes_markdown(out).rstrip("\n")
    text += "\n\n**Map quality** (nearest neighbours)\n\n" + map_quality_markdown(
        out["map_quality"]
    )
    text += f"\nwritten: {a.results_dir / 'probes.json'}, probes.md, map_quality.json and .md"
    text += "".join(f"\nnote: {n}" for n in notes)
    emit(args, out, text)
    return 0


# ------------------------------------------------------------ sample
# CLI and bench


def add_sample_cli(p: argparse.ArgumentParser) -> None:

    p.add_argument("atlas", help="a tokenized atlas with a trained backbone")
    p.add_argument(
        "--arch",
        required=True,
        help="target architecture: zoo:<family>, timm:<name> or hf:<model dir or repo id>",
    )
    p.add_argument("--n", type=int, default=None, help="draws per round, K (default: preset's)")
    p.add_argument(
        "--keep",
        type=int,
        default=None,
        help="models kept, M: the best draws by validation accuracy",
    )
    p.add_argument(
        "--prompts",
        default=None,
        help="comma-separated atlas model ids used as prompts (default: the best atlas models "
        "with the target's exact layer table, else freshly trained ones)",
    )
    p.add_argument(
        "--mode",
        choices=("auto", "independent", "joint"),
        default=None,
        help="independent: every token draws its own kernel centre among the prompts; "
        "joint: one prompt per draw for all tokens; auto: joint for fresh prompts, independent "
        "for atlas prompts (default: preset's)",
    )
    p.add_argument(
        "--prior",
        choices=sorted(PRIORS),
        default=None,
        help="distribution fitted to the prompt latents: kde or gaussian (default: preset's)",
    )
    p.add_argument(
        "--bootstrap-rounds",
        type=int,
        default=None,
        help="extra rounds that re-fit the prior on the kept draws (default: preset's)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of prompts, draws and conditioning")
    p.add_argument(
        "--task",
        default=None,
        help="target task (default: the architecture's own; none: an hf: model generated unscored)",
    )
    p.add_argument(
        "--width", type=int, default=None, help="zoo family width (default: the atlas' most common)"
    )
    p.add_argument(
        "--depth", type=int, default=None, help="zoo family depth (default: the atlas' most common)"
    )
    add_config_flags(
        p, "sample", None, "SampleConfig",
        default_text=f"{DEFAULT_SAMPLE_PRESET}, 001 C.2's one anchor and five draws; with "
        "--evaluate: ci, the sampling inside each evaluation run",
    )  # fmt: skip
    p.add_argument("--backbone", default=None, help="another backbone directory")
    p.add_argument(
        "--out",
        default=None,
        help="folder for the generated model directories (default: ATLAS/generated)",
    )
    p.add_argument("--progress-file", default=None, help="JSON progress for a polling app")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print what the run would do (prompts from the atlas or fresh, backbone passes) and "
        "its expected time on this machine now, then exit without generating",
    )
    p.add_argument(
        "--estimate-file",
        default=None,
        help="JSON of an estimate already shown for this run (the Generate page writes it): "
        "reported instead of timing the machine again",
    )
    p.add_argument("--evaluate", action="store_true", help="run the generation evaluation instead")
    p.add_argument(
        "--heldout-task", default=None, help="with --evaluate: a task absent from the atlas"
    )
    p.add_argument(
        "--eval-preset",
        default="ci",
        choices=sorted(GENERATION_PRESETS),
        help="with --evaluate: GenerationConfig preset (ci is a smoke test; default: ci)",
    )
    add_json_flag(p)


def read_estimate(path: str | Path) -> dict[str, Any]:
    """An ``estimate_sample`` result from ``--estimate-file`` (checked for its two fields)."""
    est = read_json(path)
    if (
        not isinstance(est, dict)
        or not isinstance(est.get("text"), str)
        or not isinstance((est.get("seconds") or {}).get("total"), int | float)
    ):
        raise WeightAtlasError(f"{path} is not an estimate (needs 'text' and 'seconds.total')")
    return est


def run_sample_cli(args: argparse.Namespace) -> int:
    if args.preset is None:
        args.preset = "ci" if args.evaluate else DEFAULT_SAMPLE_PRESET
    if args.estimate:
        est = estimate_sample(
            args.atlas, args.arch, args.task, preset=args.preset, overrides=config_overrides(args),
            width=args.width, depth=args.depth, backbone_dir=args.backbone,
            prompts=[p for p in args.prompts.split(",") if p] if args.prompts else None,
        )  # fmt: skip
        emit(args, est, f"estimate for {args.arch}: {est['text']}")
        return 0
    writer = progress_file_writer(args.progress_file) if args.progress_file else None
    bars: list[tqdm] = []  # drawn at the stage's first report, not before a bad atlas is refused

    def progress(fraction: float, message: str) -> None:
        if not bars:
            bars.append(tqdm(total=100, desc="sample", unit="%"))
        bar = bars[0]
        bar.n = int(100 * fraction)
        bar.set_postfix_str(printable(message[:60]))
        bar.refresh()
        if writer is not None:
            writer(fraction, message)

    try:
        if args.evaluate:
            out = evaluate_generation(
                args.atlas, args.arch, args.task, args.heldout_task, preset=args.eval_preset,
                sample_preset=args.preset, overrides=config_overrides(args), progress=progress,
            )  # fmt: skip
            for bar in bars:
                bar.close()

            note = ""
            if args.eval_preset == "ci":
                note = "\nnote: --eval-preset ci is a smoke test; use demo for numbers to report"
            emit(args, out, generation_markdown(out).rstrip("\n") + note)
            if writer is not None:
                writer(
                    1.0,
                    "done",
                    done=True,
                    outputs=[str(Atlas(Path(args.atlas)).results_dir / "generation.json")],
                )
            return 0
        shorthands = ("n", "keep", "mode", "prior", "bootstrap_rounds", "seed", "task")
        shorthands += ("width", "depth")
        flags = {k: getattr(args, k) for k in shorthands if getattr(args, k) is not None}
        paths = sample(
            args.atlas, args.arch, args.preset, {**flags, **config_overrides(args)},
            prompts=[p for p in args.prompts.split(",") if p] if args.prompts else None,
            progress=progress, backbone_dir=args.backbone, out_dir=args.out,
            estimate=read_estimate(args.estimate_file) if args.estimate_file else None,
        )  # fmt: skip
    except BaseException as e:
        for bar in bars:
            bar.close()
        if writer is not None:
            writer(
                1.0,
                "failed",
                done=True,
                error=str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
        raise
    for bar in bars:
        bar.close()
    if writer is not None:
        writer(1.0, "done", done=True, outputs=[str(p) for p in paths])

    cards = [generated_card(p) for p in paths]
    keys = ("test_accuracy", "at_chance", "chance_accuracy", "scored", "note", "prompts", "n",
            "keep", "atlas_distance", "atlas_percentile", "outside_atlas",
            "architecture_in_atlas")  # fmt: skip
    data = [{"path": str(p), **{k: c.get(k) for k in keys}} for p, c in zip(paths, cards)]
    first = cards[0] if cards else {}
    lines = [
        f"sample: kept {len(paths)} of {first.get('n', '?')} draws of {args.arch} "
        f"(best by validation accuracy), from {len(first.get('prompts') or [])} prompt(s)"
    ]
    for p, c in zip(paths, cards):
        acc = c.get("test_accuracy")
        chance = " (at chance)" if c.get("at_chance") is True else ""
        lines.append(
            (
                f"  {p.name}: test accuracy {acc:.3f}{chance}"
                if isinstance(acc, float)
                else f"  {p.name}: not scored"
            )
            + _distance_text(c)
        )
    if isinstance(first.get("chance_accuracy"), float):
        lines.append("  against: " + _baselines_text(first))
    if first.get("note"):
        lines.append(f"note: {first['note']}")
    if paths:
        lines.append(f"written to {paths[0].parent}")
    emit(args, data, "\n".join(lines))
    return 0


def _baselines_text(card: dict[str, Any]) -> str:
    """Prompts (before / after an encode-decode), random init and chance, from a generated card."""

    def fmt(values: Any) -> str:
        vals = [v for v in values or [] if isinstance(v, int | float)]
        return " / ".join(f"{v:.3f}" for v in vals) or "n/a"

    rnd = card.get("random_init_val_accuracy")
    return (
        f"prompts {fmt(card.get('prompt_scores'))} (val), after encode-decode "
        f"{fmt(card.get('round_trip_val_accuracy'))}; random init "
        + (f"{rnd:.3f}" if isinstance(rnd, int | float) else "n/a")
        + f" (val); chance {card['chance_accuracy']:.3f}; draws {card.get('mode', '?')}"
    )


def _distance_text(card: dict[str, Any]) -> str:
    """``; atlas distance D (percentile P, inside|OUTSIDE the atlas)`` for a generated card."""
    d, pct = card.get("atlas_distance"), card.get("atlas_percentile")
    if not isinstance(d, int | float) or not isinstance(pct, int | float):
        return ""
    where = "OUTSIDE the atlas" if card.get("outside_atlas") else "inside the atlas"
    arch = "" if card.get("architecture_in_atlas", True) else "; architecture not in the atlas"
    return f"; atlas distance {d:.3f} (percentile {pct:.1f}, {where}{arch})"


# ------------------------------------------------------------ pipeline
def add_pipeline_cli(p: argparse.ArgumentParser) -> None:

    add_config_flags(p, "pipeline", "ci")
    p.add_argument("--out", required=True, help="run directory (notebooks, atlas, report.md)")
    p.add_argument(
        "--from", dest="from_stage", default=None, choices=list(STAGES), help="start at this stage"
    )
    p.add_argument("--only", default=None, choices=list(STAGES), help="run only this stage")
    add_json_flag(p)


def run_pipeline_cli(args: argparse.Namespace) -> int:

    report = pipeline(args.preset, args.out, args.from_stage, args.only, config_overrides(args))
    note = (
        " (ci is a smoke test: its numbers check that the stages run)"
        if args.preset == "ci"
        else ""
    )
    emit(
        args,
        {"report": str(report), "preset": args.preset},
        f"pipeline {args.preset}: notebooks run, report written to {report}{note}",
    )
    return 0


# ------------------------------------------------------------ demo
def add_demo_cli(p: argparse.ArgumentParser) -> None:

    p.add_argument("--out", default="assets/demo", help="where to write the demo atlas")
    p.add_argument(
        "--from-atlas", default=None, help="export this finished atlas instead of building"
    )
    p.add_argument("--work", default=None, help="scratch dir for the zoo and full atlas")
    add_config_flags(p, "demo", "demo")
    add_json_flag(p)


def run_demo_cli(args: argparse.Namespace) -> int:

    path = demo(args.out, args.from_atlas, args.work, args.preset, config_overrides(args))
    size_mb = dir_bytes(path) / 2**20
    n = sum(1 for _ in Atlas.open(path).accepted())
    emit(
        args,
        {"out": str(path), "size_mb": size_mb, "models": n},
        f"demo: atlas of {n} models ({size_mb:.1f} MB) written to {path}\n"
        f"open it: WEIGHTATLAS_ATLAS={path} streamlit run explorer/app.py",
    )
    return 0


# ------------------------------------------------------------ lineage
def add_lineage_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("atlas", help="atlas directory (after collect; the weights must be in reach)")
    add_config_flags(p, "lineage", "default")
    p.add_argument(
        "--zoo",
        default=None,
        help="a zoo directory with model trees: also score the result against its ground truth",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_flag(p)


def run_lineage_cli(args: argparse.Namespace) -> int:
    from core.experiments.report import lineage_table
    from core.trees.lineage import lineage
    from core.trees.score import score_atlas
    from core.trees.table import LineageTable

    info = lineage(args.atlas, args.preset, config_overrides(args), progress=not args.no_progress)
    if args.zoo:  # scored before the report section is written, so it shows the figures
        LineageTable(args.atlas).update_info(score=score_atlas(args.atlas, args.zoo))
    report = lineage_table(args.atlas)
    data = dict(info)
    st = info["status"]
    text = (
        f"lineage: {info['models']} models, {info['trees']} trees, {info['edges']} parent edges "
        f"({info['fingerprint_seconds'] + info['recover_seconds']:.1f} s)\n"
        f"declared vs weights: {st['agrees']} agree, {st['missing']} missing declarations, "
        f"{st['contradicts']} contradictions, {st['differs']} differ inside their tree, "
        f"{st['unverifiable']} unverifiable\n"
        f"table: {args.atlas}/lineage/lineage.jsonl; report section: {report}"
    )
    if args.zoo:
        s = LineageTable(args.atlas).info()["score"]
        data["score"] = s
        ours, mother = s["ours"], s.get("mother") or {}
        text += (
            f"\nvs the zoo's truth: tree ARI {ours['ari']:.3f} (MoTHer {mother.get('ari')}), "
            f"parent edges {ours['edge_accuracy']:.3f} (MoTHer {mother.get('edge_accuracy')}), "
            f"planted declarations found {s['planted_found']}/{s['planted']}, "
            f"false alarms {len(s['false_alarms'])}"
        )
    emit(args, data, text)
    return 0


# ------------------------------------------------------------ bench
def add_bench_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    p.add_argument("--preset", default=None, help="preset for benchmarks that take one")
    p.add_argument("--n", type=int, default=None, help="problem size for benchmarks that take one")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--device", default="cpu", help="torch device for benchmarks that use one")
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: all cores)"
    )


def run_bench_cli(args: argparse.Namespace) -> int:
    result = BENCHES[args.name](args)
    text = dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_bytes(args.out, (text + "\n").encode())
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------ wiring

# subcommand -> (add flags, run, one-line help)
COMMANDS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
] = {
    "zoo": (add_zoo_cli, run_zoo_cli, "train a local model zoo and write it in Hub cache layout"),
    "collect": (
        add_collect_cli,
        run_collect_cli,
        "collect models from the Hub, an HF cache or a directory into an atlas",
    ),
    "tokenize": (
        add_tokenize_cli,
        run_tokenize_cli,
        "cut the atlas' accepted models into weight tokens",
    ),
    "train": (add_train_cli, run_train_cli, "train the backbone autoencoder on the token store"),
    "embed": (
        add_embed_cli,
        run_embed_cli,
        "embed models with the trained backbone and build 2-D maps",
    ),
    "evaluate": (add_evaluate_cli, run_evaluate_cli, "property probes against the s(W) baseline"),
    "sample": (add_sample_cli, run_sample_cli, "generate new weights for an architecture"),
    "pipeline": (
        add_pipeline_cli,
        run_pipeline_cli,
        "run the stage notebooks in order and write a report",
    ),
    "demo": (add_demo_cli, run_demo_cli, "build the small embedded demo atlas the app opens on"),
    "lineage": (
        add_lineage_cli,
        run_lineage_cli,
        "recover model trees from the weights and check the declared base models",
    ),
    "bench": (add_bench_cli, run_bench_cli, "speed benchmarks with an in-run baseline (JSON)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="weightatlas",
        description=__doc__.split("\n\nThis file")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``weightatlas`` console script (and of ``python -m core.cli``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default", CorruptLineWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            if issubclass(category, CorruptLineWarning):  # one line, above any progress bar
                tqdm.write(f"weightatlas {args.command}: warning: {printable(message)}", sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; expected errors become one line on stderr and exit code 2."""
    try:
        rc = int(args._run(args) or 0)
        if rc == 0 and isinstance(getattr(args, "atlas", None), str | Path):
            KnownAtlases().add(args.atlas)  # the app finds it by name from any folder
        return rc
    except DiskFullError as e:
        print(f"weightatlas {args.command}: {printable(e)}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        if not is_disk_full(e):
            print(f"weightatlas {args.command}: error: {printable(e)}", file=sys.stderr)
            return 2
        print(
            f"weightatlas {args.command}: {printable(disk_full_message(e, args))}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        print(f"weightatlas {args.command}: interrupted; re-run to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk surfaces as OSError, RuntimeError, SafetensorError...
        if not is_disk_full(e):
            raise
        print(
            f"weightatlas {args.command}: {printable(disk_full_message(e, args))}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
