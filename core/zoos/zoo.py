"""Zoo factory: train populations of small models and write them as Hugging Face cache repos.

Every (family, task, run) trains one model with its own seed, learning rate, weight decay,
width and depth, and keeps checkpoints at several epochs. Each checkpoint is one repo in the
Hugging Face cache layout, exactly as a Hub download looks on disk:

    DIR/models--weightatlas-zoo--{family}-{task}-r{run}-e{epoch}/
        blobs/{sha}                       file contents (sha256 for weights, git sha1 otherwise)
        refs/main                         the revision
        snapshots/{rev}/config.json       -> ../../blobs/...
        snapshots/{rev}/model.safetensors -> ../../blobs/...
        snapshots/{rev}/README.md         model card, YAML front matter with labels and metrics
    DIR/zoo.jsonl                         one row per checkpoint, written when the build finishes
    DIR/zoo.json                          the ZooConfig, counts and wall time of the build

The same preset and seed give bit-identical weights on CPU (threads fixed, every random draw
seeded); the revision is a hash of the content. A repo is written into a temp dir and renamed
into place, so a killed build leaves only whole repos and a re-run continues where it stopped.

    weightatlas zoo --preset ci --out zoo-ci                 # 39 checkpoints, ~1 minute
    weightatlas zoo --preset demo --out zoo-demo --seed 1 --set epochs=4
    weightatlas zoo --preset seeds --out zoo-seeds           # 200 seeds x 7 checkpoints
    weightatlas zoo --preset trees --out zoo-trees           # model trees (core.zoos.trees), ~4 minutes
    weightatlas zoo --preset trees-timm --out zoo-trees-timm # the same trees for timm families
    python -c "from core.zoos.zoo import zoo; zoo('ci', 'zoo-ci')"
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import metadata_load
from tqdm.auto import tqdm

from core.atlas import append_jsonl, atomic_write_bytes, dumps, read_json, read_jsonl, write_json
from core.config import build_config, register_presets, to_dict
from core.errors import WeightAtlasError
from core.models.families import FAMILIES, build_family
from core.models.io import config_of, render_card, save_model_dir
from core.safety import printable
from core.zoos.tasks import PIPELINE_TAGS, evaluate, get_task, train_epochs
from core.zoos.trees import TreeNode, grow, node_run, plan_trees, read_weights, stored_model

ZOO_ORG = "weightatlas-zoo"
ZOO_INDEX = "zoo.jsonl"
ZOO_INFO = "zoo.json"
PROGRESS = ".zoo-progress.jsonl"  # rows of finished repos while building; zoo.jsonl at the end


@dataclass
class ZooConfig:
    """What a zoo contains and how each run trains.

    ``tasks`` entries are ``"task:runs"``: every family that can train on the task gets that
    many runs. Each run draws its ``lr``, ``weight_decay``, width and depth (from the first
    ``size_levels`` entries of the family's ``widths`` / ``depths``) from a seeded generator,
    trains ``epochs`` epochs and saves the checkpoints of ``checkpoints`` epochs; epochs,
    checkpoints and lr are scaled by the family's ``epoch_scale`` / ``lr_scale``.
    """

    families: tuple[str, ...] = tuple(FAMILIES)
    tasks: tuple[str, ...] = ("digits10:1",)
    epochs: int = 8
    checkpoints: tuple[int, ...] = (1, 3, 8)
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-2)
    size_levels: int = 1
    # homogeneous zoos, "FAMILY/TASK:RUNS": one family, one task and one size (the family's
    # first width and depth) for every run; lr, weight decay and seed drawn as above. Their runs
    # are numbered after the ``tasks`` runs of the same family and task and labelled
    # ``zoo: FAMILY/TASK`` (003 Tables 1 and 9 probe inside such zoos)
    zoos: tuple[str, ...] = ()
    batch_size: int = 32
    seed: int = 0
    threads: int = 1
    license: str = "mit"
    # model trees (issue 26, ``core.zoos.trees``): "FAMILY/TASK:ROOTS" entries; each root is
    # trained from scratch on TASK (the family's first width and depth, ``epochs`` epochs) and
    # grows one fine-tune per fitting ``tree_tasks`` entry (lr from ``tree_lrs``, epochs from
    # ``tree_epochs``), ``tree_grandchildren`` fine-tunes of those, ``tree_merges`` sibling
    # averages and ``tree_precision_copies`` copies cast to ``tree_dtypes``; ``tree_wrong`` /
    # ``tree_undeclared`` fine-tunes (over the whole zoo) declare a wrong parent / none
    trees: tuple[str, ...] = ()
    tree_tasks: tuple[str, ...] = (
        "digits10",
        "digits-rot90",
        "digits-invert",
        "digits-0to4",
        "digits-parity",
    )
    tree_lrs: tuple[float, ...] = (1e-3, 3e-3)
    tree_epochs: tuple[int, ...] = (4, 8)
    tree_grandchildren: int = 2
    tree_merges: int = 1
    tree_precision_copies: int = 1
    tree_dtypes: tuple[str, ...] = ("float16", "bfloat16")
    tree_wrong: int = 0
    tree_undeclared: int = 0


ZOO_PRESETS: dict[str, dict[str, Any]] = {
    "ci": {
        "tasks": ("digits10:1", "wine:1", "seq-brackets:1"),
        "epochs": 8,
        "checkpoints": (1, 3, 8),
        "size_levels": 1,
    },
    "demo": {
        "tasks": (
            "digits10:2",
            "digits-rot90:1",
            "digits-invert:1",
            "digits-0to4:1",
            "digits16:1",
            "shapes16:1",
            "wine:3",
            "breast-cancer:2",
            "seq-majority:2",
            "seq-sorted:1",
            "seq-brackets:1",
        ),
        "epochs": 8,
        "checkpoints": (1, 2, 4, 8),
        "lrs": (5e-4, 1e-3, 3e-3),
        "size_levels": 2,
        # two homogeneous zoos for per-zoo probes and the MLN ablation (issue 15): 30 runs x 4
        # checkpoints each, cnn w8 d2 / mlp w16 d1 on digits10; ~90 s + ~30 s on one core
        "zoos": ("cnn/digits10:30", "mlp/digits10:30"),
    },
    "full": {
        "tasks": (
            "digits10:10",
            "digits-rot90:4",
            "digits-invert:4",
            "digits-0to4:4",
            "digits-5to9:4",
            "digits-parity:4",
            "digits16:4",
            "shapes16:4",
            "wine:8",
            "breast-cancer:8",
            "seq-majority:6",
            "seq-sorted:4",
            "seq-brackets:4",
        ),
        "epochs": 20,
        "checkpoints": (1, 2, 4, 8, 12, 16, 20),
        "lrs": (3e-4, 1e-3, 3e-3, 1e-2),
        "weight_decays": (0.0, 1e-4, 1e-3, 1e-2, 1e-1),
        "size_levels": 3,
    },
    # a SANE-style seed zoo (003 §5.1 / Table 9; its zoos hold ~1,000 seeds of one architecture
    # at fixed hyper-parameters, tested on 10k images): 200 seeds of the cnn (w8 d2, 1,374
    # weights) on shapes16-probe (6,000 test images), one lr, no weight decay, checkpoints up to
    # epoch 20; only the seed (init and batch order) differs between runs
    "seeds": {
        "families": ("cnn",),
        "tasks": (),
        "zoos": ("cnn/shapes16-probe:200",),
        "epochs": 20,
        "checkpoints": (1, 2, 4, 8, 12, 16, 20),
        "lrs": (1e-3,),
        "weight_decays": (0.0,),
    },
}
# the demo zoo with every task of the demo trained in 3 runs per family (digits10 keeps its 2;
# the demo's runs under the same names, plus more): in the demo, 21 of 56 family x task pairs
# have a single run, so no leave-one-run-out neighbour vote can name their task (map-quality
# task ceiling 0.888); here every pair has 2+ runs (ceiling 0.997 with the trees zoo beside it)
ZOO_PRESETS["demo-tasks"] = {
    **ZOO_PRESETS["demo"],
    "tasks": tuple(
        entry if entry.startswith("digits10:") else f"{entry.split(':')[0]}:3"
        for entry in ZOO_PRESETS["demo"]["tasks"]
    ),
}
ZOO_PRESETS["trees"] = {
    # issue 26: 3 trees per family (cnn, mlp, transformers ViT), each a root, 5 fine-tunes,
    # 2 grandchildren, 1 merge, 1 precision copy (10 models); 3 wrong and 3 missing
    # declarations planted; beside them 2 independent runs per family (one checkpoint each)
    "families": ("cnn", "mlp", "vit"),
    # tasks no other preset trains, so the independent runs' ids never collide with the demo
    # zoo's when both are collected into one atlas
    "tasks": ("digits-5to9:1", "digits-parity:1"),
    "epochs": 8,
    "checkpoints": (8,),
    "trees": ("cnn/digits10:3", "mlp/digits10:3", "vit/digits10:3"),
    "tree_wrong": 3,
    "tree_undeclared": 3,
}
# the same trees for the three timm families (ResNet, ViT, ConvNeXt at their smallest sizes):
# issue 26 asks that native, transformers and timm families can all grow from a parent checkpoint
ZOO_PRESETS["trees-timm"] = {
    **ZOO_PRESETS["trees"],
    "families": ("timm-resnet", "timm-vit", "timm-convnext"),
    "trees": ("timm-resnet/digits10:3", "timm-vit/digits10:3", "timm-convnext/digits10:3"),
}
register_presets("zoo", ZooConfig, ZOO_PRESETS)


@dataclass(frozen=True)
class Run:
    """One training run of the zoo plan, with its drawn hyper-parameters."""

    family: str
    task: str
    run: int
    seed: int
    lr: float
    weight_decay: float
    width: int
    depth: int
    epochs: int
    checkpoints: tuple[int, ...]
    zoo: str | None = None  # ``FAMILY/TASK`` for the runs of a homogeneous zoo

    def name(self, epoch: int) -> str:
        """Repo name (without org) of this run's checkpoint at ``epoch``."""
        return f"{self.family}-{self.task}-r{self.run}-e{epoch}"


def _parse_task_runs(entry: str) -> tuple[str, int]:
    task, _, runs = entry.partition(":")
    try:
        n = int(runs) if runs else 1
    except ValueError:
        raise WeightAtlasError(f"bad zoo task entry {entry!r}; expected TASK:RUNS") from None
    get_task(task)  # unknown task -> one-line error
    return task, n


def _parse_zoo(entry: str) -> tuple[str, str, int]:
    """``FAMILY/TASK:RUNS`` -> (family, task, runs); a bad entry is a one-line error."""
    spec, _, runs = entry.partition(":")
    family, _, task = spec.partition("/")
    try:
        n = int(runs)
    except ValueError:
        n = -1
    if not family or not task or n < 1:
        raise WeightAtlasError(f"bad zoo entry {entry!r}; expected FAMILY/TASK:RUNS (RUNS >= 1)")
    if family not in FAMILIES:
        raise WeightAtlasError(f"unknown zoo family {family!r}; choose from {', '.join(FAMILIES)}")
    kind = get_task(task).info.kind
    if kind not in FAMILIES[family].kinds:
        raise WeightAtlasError(f"zoo {entry!r}: family {family!r} cannot train on {kind} tasks")
    return family, task, n


def _draw(cfg: ZooConfig, family: str, task: str, r: int, fixed_size: bool, zoo: str | None) -> Run:
    """Run ``r`` of ``family`` on ``task`` with its seeded hyper-parameters (the draw order is
    fixed: adding zoos leaves every other run as it was); ``fixed_size``: the family's first
    width and depth."""
    fam = FAMILIES[family]
    rng = np.random.default_rng([cfg.seed, zlib.crc32(f"{family}/{task}/{r}".encode())])
    seed = int(rng.integers(0, 2**31 - 1))
    lr = float(rng.choice(cfg.lrs)) * fam.lr_scale
    wd = float(rng.choice(cfg.weight_decays))
    width = int(rng.choice(fam.widths[: cfg.size_levels]))
    depth = int(rng.choice(fam.depths[: cfg.size_levels]))
    if fixed_size:
        width, depth = fam.widths[0], fam.depths[0]
    factor = fam.epoch_scale
    return Run(
        family=family,
        task=task,
        run=r,
        seed=seed,
        lr=lr,
        weight_decay=wd,
        width=width,
        depth=depth,
        epochs=cfg.epochs * factor,
        checkpoints=tuple(sorted({c * factor for c in cfg.checkpoints})),
        zoo=zoo,
    )


def plan(cfg: ZooConfig) -> list[Run]:
    """All runs of a zoo config, in build order (task entries x families x runs, then zoos)."""
    for fam in cfg.families:
        if fam not in FAMILIES:
            raise WeightAtlasError(f"unknown zoo family {fam!r}; choose from {', '.join(FAMILIES)}")
    if not cfg.checkpoints or max(cfg.checkpoints) > cfg.epochs or min(cfg.checkpoints) < 1:
        raise WeightAtlasError(f"checkpoints {cfg.checkpoints} must lie in 1..epochs={cfg.epochs}")
    runs = []
    for entry in cfg.tasks:
        task, n_runs = _parse_task_runs(entry)
        kind = get_task(task).info.kind
        for fam_name in cfg.families:
            if kind not in FAMILIES[fam_name].kinds:
                continue
            runs += [_draw(cfg, fam_name, task, r, False, None) for r in range(n_runs)]
    for entry in cfg.zoos:
        family, task, n_runs = _parse_zoo(entry)
        first = 1 + max((r.run for r in runs if (r.family, r.task) == (family, task)), default=-1)
        runs += [
            _draw(cfg, family, task, r, True, f"{family}/{task}")
            for r in range(first, first + n_runs)
        ]
    return runs


def repo_dir(out: Path, name: str) -> Path:
    """``out/models--weightatlas-zoo--{name}`` (the HF cache folder of repo ``ORG/name``)."""
    return out / f"models--{ZOO_ORG}--{name}"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _write_cache_repo(out: Path, name: str, files: dict[str, bytes]) -> Path:
    """Write one repo in HF cache layout via a temp dir renamed into place; returns the snapshot."""
    blobs = {
        fn: hashlib.sha256(data).hexdigest()
        if fn.endswith(".safetensors")
        else _git_blob_sha1(data)
        for fn, data in files.items()
    }
    rev = hashlib.sha1("".join(f"{fn}\0{blobs[fn]}\n" for fn in sorted(files)).encode()).hexdigest()
    final = repo_dir(out, name)
    tmp = out / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    snap = tmp / "snapshots" / rev
    (tmp / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (tmp / "refs").mkdir()
    for fn, data in files.items():
        with open(tmp / "blobs" / blobs[fn], "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.symlink(f"../../blobs/{blobs[fn]}", snap / fn)
    (tmp / "refs" / "main").write_text(rev)
    os.rename(tmp, final)
    return final / "snapshots" / rev


def snapshot_dir(repo: Path) -> Path | None:
    """The snapshot ``refs/main`` points to, or None if the repo is not complete."""
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    snap = repo / "snapshots" / ref.read_text().strip()
    return snap if snap.is_dir() else None


def _card(
    run: Run,
    epoch: int,
    labels: dict[str, Any],
    library: str,
    dataset: str,
    kind: str,
    lic: str,
    node: TreeNode | None = None,
) -> str:
    repo_id = f"{ZOO_ORG}/{node.name if node is not None else run.name(epoch)}"
    pipeline = PIPELINE_TAGS[kind]
    metrics = [
        {"type": "accuracy", "value": labels["test_accuracy"], "name": "test accuracy"},
        {"type": "loss", "value": labels["test_loss"], "name": "test cross-entropy"},
    ]
    meta = {
        "library_name": library,
        "license": lic,
        "pipeline_tag": pipeline,
        "tags": [run.task, run.family, "weightatlas-zoo", library, f"epoch-{epoch}"],
        "datasets": [dataset],
        "metrics": ["accuracy"],
        "model-index": [
            {
                "name": repo_id,
                "results": [
                    {
                        "task": {"type": pipeline},
                        "dataset": {"name": run.task, "type": dataset, "split": "test"},
                        "metrics": metrics,
                    }
                ],
            }
        ],
        "weightatlas": labels,
    }
    if node is not None and node.declared:
        bases = [f"{ZOO_ORG}/{p}" for p in node.declared]
        meta["base_model"] = bases[0] if len(bases) == 1 else bases
        meta["base_model_relation"] = node.relation
    if node is not None:
        return render_card(meta, repo_id, _tree_body(run, node, labels, library, dataset))
    body = (
        f"A `{run.family}` model ({library}) trained by the Weight Atlas zoo factory on `{run.task}` "
        f"({dataset}), checkpoint after epoch {epoch} of {run.epochs}.\n\n"
        f"| split | accuracy | loss |\n|---|---|---|\n"
        f"| train | {labels['train_accuracy']:.4f} | {labels['train_loss']:.4f} |\n"
        f"| val | {labels['val_accuracy']:.4f} | {labels['val_loss']:.4f} |\n"
        f"| test | {labels['test_accuracy']:.4f} | {labels['test_loss']:.4f} |\n\n"
        f"Hyper-parameters: lr {run.lr:g}, weight decay {run.weight_decay:g}, width {run.width}, "
        f"depth {run.depth}, batch size {labels['batch_size']}, seed {run.seed}."
    )
    return render_card(meta, repo_id, body)


def _tree_body(run: Run, node: TreeNode, labels: dict[str, Any], library: str, dataset: str) -> str:
    """Card text of a tree node: what was done, never which model it came from."""
    what = {
        "root": f"trained from scratch for {run.epochs} epochs",
        "finetune": f"fine-tuned for {run.epochs} epochs",
        "merge": "a weight average of fine-tuned models",
        "quantized": f"stored in {node.dtype}",
    }[node.kind]
    return (
        f"A `{run.family}` model ({library}) on `{run.task}` ({dataset}), {what}.\n\n"
        f"| split | accuracy | loss |\n|---|---|---|\n"
        f"| train | {labels['train_accuracy']:.4f} | {labels['train_loss']:.4f} |\n"
        f"| val | {labels['val_accuracy']:.4f} | {labels['val_loss']:.4f} |\n"
        f"| test | {labels['test_accuracy']:.4f} | {labels['test_loss']:.4f} |\n"
    )


def _labels(
    run: Run, epoch: int, model: torch.nn.Module, cfg: ZooConfig, dataset: str
) -> dict[str, Any]:
    task = get_task(run.task)
    m = {s: evaluate(model, task, s) for s in ("train", "val", "test")}
    r6 = lambda v: round(float(v), 6)  # noqa: E731 - rounded once so card and zoo.jsonl agree
    return {
        "family": run.family,
        "task": run.task,
        "dataset": dataset,
        "run": run.run,
        "epoch": epoch,
        "max_epochs": run.epochs,
        "seed": run.seed,
        "lr": run.lr,
        "weight_decay": run.weight_decay,
        "width": run.width,
        "depth": run.depth,
        "batch_size": cfg.batch_size,
        "params": sum(p.numel() for p in model.parameters()),
        "train_accuracy": r6(m["train"].accuracy),
        "val_accuracy": r6(m["val"].accuracy),
        "test_accuracy": r6(m["test"].accuracy),
        "train_loss": r6(m["train"].loss),
        "val_loss": r6(m["val"].loss),
        "test_loss": r6(m["test"].loss),
        "generalization_gap": r6(m["train"].accuracy - m["test"].accuracy),
        **({"zoo": run.zoo} if run.zoo else {}),
    }


def _checkpoint_files(
    model: torch.nn.Module, library: str, card: str, tmp: Path
) -> dict[str, bytes]:
    save_model_dir(model, tmp, library, card=card, config=config_of(model, library))
    files = {
        fn: (tmp / fn).read_bytes() for fn in ("config.json", "model.safetensors", "README.md")
    }
    shutil.rmtree(tmp)
    return files


def _row(out: Path, snap: Path) -> dict[str, Any]:
    labels = metadata_load(snap / "README.md")["weightatlas"]
    repo = snap.parent.parent
    name = repo.name.removeprefix(f"models--{ZOO_ORG}--")
    return {"id": f"{ZOO_ORG}/{name}", "path": str(snap.relative_to(out)), **labels}


def train_run(
    run: Run,
    cfg: ZooConfig,
    out: Path,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    budget: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Train one run and write its missing checkpoints (existing ones are never rewritten).

    Args:
        run, cfg, out: the run, its zoo config and the zoo directory.
        on_checkpoint: called with the zoo.jsonl row of each checkpoint written.
        budget: a one-element list; each new checkpoint takes one, and the run stops with
            ``_StopBuild`` when none is left.

    Returns:
        The zoo.jsonl rows of the checkpoints written.
    """
    task = get_task(run.task)
    info = task.info
    library = FAMILIES[run.family].library
    model = build_family(run.family, info, run.width, run.depth, run.seed)
    written: list[dict[str, Any]] = []

    def on_epoch(epoch: int, m: torch.nn.Module) -> None:
        if epoch not in run.checkpoints or snapshot_dir(repo_dir(out, run.name(epoch))):
            return
        if budget is not None:
            if budget[0] <= 0:
                raise _StopBuild
            budget[0] -= 1
        labels = _labels(run, epoch, m, cfg, info.dataset)
        card = _card(run, epoch, labels, library, info.dataset, info.kind, cfg.license)
        files = _checkpoint_files(m, library, card, out / f".tmp-files-{os.getpid()}")
        row = _row(out, _write_cache_repo(out, run.name(epoch), files))
        written.append(row)
        if on_checkpoint is not None:
            on_checkpoint(row)

    train_epochs(
        model,
        task,
        run.epochs,
        run.lr,
        run.weight_decay,
        cfg.batch_size,
        run.seed,
        on_epoch=on_epoch,
    )
    return written


def train_tree_node(
    node: TreeNode,
    cfg: ZooConfig,
    out: Path,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Grow one tree node from its (already written) parents and write its repo.

    Returns:
        Its zoo.jsonl row.
    """
    run = node_run(node)
    info = get_task(node.task).info
    library = FAMILIES[node.family].library

    def parent_weights(name: str) -> dict[str, torch.Tensor]:
        snap = snapshot_dir(repo_dir(out, name))
        if snap is None:
            raise WeightAtlasError(f"tree node {node.name}: parent {name} is not written yet")
        return read_weights(snap)

    model = grow(node, parent_weights)
    labels = _labels(run, node.epochs, model, cfg, info.dataset)
    card = _card(run, node.epochs, labels, library, info.dataset, info.kind, cfg.license, node)
    files = _checkpoint_files(
        stored_model(model, node), library, card, out / f".tmp-files-{os.getpid()}"
    )
    row = _row(out, _write_cache_repo(out, node.name, files))
    if on_checkpoint is not None:
        on_checkpoint(row)
    return row


def _worker(run: Run, cfg: ZooConfig, out: Path) -> list[dict[str, Any]]:
    """One run in a worker process (``workers > 1``), with the config's thread count."""
    with _Threads(cfg.threads):
        return train_run(run, cfg, out)


class _StopBuild(Exception):
    """Raised inside a run when ``limit`` new repos have been written."""


@dataclass
class _Threads:
    n: int

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.old)


def iter_checkpoints(runs: list[Run]) -> Iterator[tuple[Run, int]]:
    """``(run, epoch)`` of every checkpoint in plan order."""
    for run in runs:
        for epoch in run.checkpoints:
            yield run, epoch


def zoo(
    preset: str = "ci",
    out: str | Path = "zoo",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    limit: int | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Train (or finish) a zoo and write it under ``out``; returns ``out``.

    Args:
        preset: a ``ZOO_PRESETS`` name (``ci``, ``demo``, ``demo-tasks``, ``full``, ``seeds``, ...).
        out: output directory (an HF cache directory afterwards).
        seed: zoo seed; every run's seed and hyper-parameters derive from it.
        overrides: ZooConfig fields that win over the preset (strings are coerced).
        config_file: optional JSON/YAML file of ZooConfig fields.
        limit: write at most this many new checkpoints, then return without zoo.jsonl (a later
            call finishes the build). Runs sequentially.
        workers: train this many runs at once in spawned processes (each with ``cfg.threads``
            threads); the weights do not depend on it.
        progress: show a tqdm bar.
    """
    cfg = build_config(
        ZooConfig, ZOO_PRESETS, preset, config_file, {"seed": seed, **(overrides or {})}
    )
    runs = plan(cfg)
    nodes = plan_trees(cfg)
    out = _zoo_dir(out)
    info_path = out / ZOO_INFO
    cfg_dict = to_dict(cfg)
    spent = _resume_info(out, preset, cfg_dict)  # over all sessions of an interrupted build

    total = sum(len(r.checkpoints) for r in runs) + len(nodes)
    names = [r.name(e) for r, e in iter_checkpoints(runs)] + [n.name for n in nodes]
    done = {n for n in names if snapshot_dir(repo_dir(out, n))}
    todo = [r for r in runs if any(r.name(e) not in done for e in r.checkpoints)]
    budget = [limit] if limit is not None else None
    start = time.time()
    bar = tqdm(
        total=total, initial=len(done), desc=f"zoo {preset}", unit="ckpt", disable=not progress
    )

    def record(row: dict[str, Any]) -> None:
        append_jsonl(out / PROGRESS, [row])
        bar.update(1)
        bar.set_postfix_str(printable(f"{row['id'].split('/')[-1]} acc={row['test_accuracy']:.3f}"))

    try:
        _train_runs(todo, cfg, out, record, budget, workers)
        _train_nodes(nodes, done, cfg, out, record, budget)
    finally:
        bar.close()
        spent += time.time() - start
        write_json(
            info_path,
            {
                "preset": preset,
                "config": cfg_dict,
                "complete": False,
                "build_seconds": round(spent, 2),
            },
        )
    if not all(snapshot_dir(repo_dir(out, n)) for n in names):
        return out  # stopped by ``limit``
    rows = [_row(out, snapshot_dir(repo_dir(out, n))) for n in names]
    atomic_write_bytes(out / ZOO_INDEX, "".join(dumps(r) + "\n" for r in rows).encode())
    (out / PROGRESS).unlink(missing_ok=True)
    info = {"preset": preset, "config": cfg_dict, "complete": True, "checkpoints": len(rows)}
    info.update(runs=len(runs), families=sorted({r.family for r in runs}))
    info.update(tasks=sorted({r.task for r in runs}), build_seconds=round(spent, 2))
    write_json(info_path, {**info, **({"trees": [n.truth() for n in nodes]} if nodes else {})})
    return out


def _zoo_dir(out: str | Path) -> Path:
    """``out`` as a zoo directory (created), without temporary files of a killed build."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WeightAtlasError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".tmp-*"):  # left by a killed build; never a finished repo
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return out


def _resume_info(out: Path, preset: str, cfg_dict: dict[str, Any]) -> float:
    """Mark the zoo's info incomplete for this build; return the seconds earlier sessions spent.

    Raises:
        WeightAtlasError: ``out`` holds a zoo built with another config.
    """
    info_path = out / ZOO_INFO
    old = read_json(info_path) if info_path.exists() else {}
    if old.get("config") not in (None, cfg_dict):
        raise WeightAtlasError(f"{out} holds a zoo built with another config; use a new --out")
    spent = float(old.get("build_seconds", 0.0))
    write_json(
        info_path, {"preset": preset, "config": cfg_dict, "complete": False, "build_seconds": spent}
    )
    return spent


def _train_runs(
    todo: list[Run],
    cfg: ZooConfig,
    out: Path,
    record: Callable[[dict[str, Any]], None],
    budget: list[int] | None,
    workers: int,
) -> None:
    """Train the runs left to do: in ``workers`` spawned processes (without a checkpoint
    budget), else in turn until the budget is spent."""
    if workers > 1 and budget is None:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_worker, run, cfg, out) for run in todo]
            for fut in as_completed(futures):
                for row in fut.result():
                    record(row)
        return
    with _Threads(cfg.threads):
        for run in todo:
            try:
                train_run(run, cfg, out, record, budget)
            except _StopBuild:
                break


def _train_nodes(
    nodes: list[TreeNode],
    done: set[str],
    cfg: ZooConfig,
    out: Path,
    record: Callable[[dict[str, Any]], None],
    budget: list[int] | None,
) -> None:
    """Train the tree nodes not yet written, in order (every parent before its children),
    each counting against the checkpoint budget."""
    for node in nodes:
        if node.name in done:
            continue
        if budget is not None:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        with _Threads(cfg.threads):
            train_tree_node(node, cfg, out, record)


def read_zoo(out: str | Path) -> list[dict[str, Any]]:
    """Rows of a finished zoo's ``zoo.jsonl`` (``id``, ``path`` relative to ``out``, labels)."""
    path = Path(out) / ZOO_INDEX
    if not path.is_file():
        raise WeightAtlasError(
            f"{out} has no {ZOO_INDEX}; build it with `weightatlas zoo --out {out}`"
        )
    return list(read_jsonl(path))
