"""The embedded demo atlas that the explorer opens with no network and no prior run.

    weightatlas demo --out assets/demo                    # zoo -> collect -> tokenize -> train -> embed -> evaluate
    weightatlas demo --out assets/demo --from-atlas RUN/atlas   # export a finished pipeline run

A full atlas holds every model's weights and the whole token store; the demo keeps what the
app shows: the manifest, embeddings and maps, the backbone, result tables, and the weights of a
small subset of models (one or more per family and task) for the Layers page. It must stay under
``max_mb`` (30 MB) because it is committed; backbone weights ship in bf16.
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atlas import (
    Atlas,
    BackboneFiles,
    TokenTable,
    append_jsonl,
    atomic_path,
    read_json,
    write_json,
)
from core.backbone.config import LAYERS_FILE
from core.backbone.train import train
from core.collection.collect import collect
from core.config import build_config, register_presets
from core.embeddings.embed import embed
from core.embeddings.probes import evaluate
from core.embeddings.table import token_scheme
from core.errors import WeightAtlasError
from core.tokens.tokenize import TOKENIZE_PRESETS, tokenize
from core.trees.table import LineageTable
from core.zoos.zoo import zoo


def strip_machine_paths(obj: Any, root: str | Path) -> Any:
    """``obj`` (JSON-like) with no absolute path of this machine left in it.

    A string that is an absolute path inside ``root`` becomes relative to ``root``; any other
    absolute path keeps only its last component. For files shipped to other machines (the
    embedded demo atlas), so that no developer's directories travel with them.
    """
    base = Path(root).resolve()
    if isinstance(obj, dict):
        return {k: strip_machine_paths(v, base) for k, v in obj.items()}
    if isinstance(obj, list):
        return [strip_machine_paths(v, base) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and "\n" not in obj and len(obj) < 4096:
        p = Path(obj)
        for candidate in (p, p.resolve()):
            if candidate.is_relative_to(base):
                return str(candidate.relative_to(base)) or "."
        return p.name
    return obj


@dataclass
class DemoConfig:
    """What the demo atlas is built from and how much of it is kept."""

    zoo_preset: str = "demo"
    backbone_preset: str = "demo"
    scheme: str = "dense"
    token_size: int = TokenTable.DEFAULT_TOKEN_SIZE
    per_group: int = 1  # models kept with weights per (family, task) group
    tokens_per_family: int = 1  # of those, shipped with their tokens too, per family (0: all)
    max_mb: float = 30.0
    backbone_dtype: str = "bf16"  # shipped backbone weights: bf16 (half the bytes) or fp32
    seed: int = 0


DEMO_PRESETS: dict[str, dict[str, Any]] = {
    "demo": {"scheme": TOKENIZE_PRESETS["demo"]["scheme"]},
    "ci": dict(zoo_preset="ci", backbone_preset="ci", max_mb=30.0),
}
register_presets("demo", DemoConfig, DEMO_PRESETS)

# What is copied from a full atlas: directories whole, and per-model weights for a subset.
KEEP_DIRS = ("backbone", "backbones", "embeddings", "results", LineageTable.DIR)
# training-time state and diagnostics the app never reads (resume state, per-layer validation
# rows, window coverage): left out of the demo to keep it under its size limit
SKIP_IN_BACKBONE = ("train_state", LAYERS_FILE, "coverage.jsonl")
# ablation backbones shipped for the Layers page's comparison: the MLN arms (the tokenization,
# composition and modality ones would push the demo over its size limit)
DEMO_BACKBONES = ("mln-*",)


def _ignore(root: Path) -> Any:
    """``copytree`` ignore: train states everywhere, and ablation backbones not in
    ``DEMO_BACKBONES`` at the top of ``backbones/``."""
    skip = shutil.ignore_patterns(*SKIP_IN_BACKBONE)

    def ignore(path: str, names: list[str]) -> set[str]:
        out = set(skip(path, names))
        if Path(path) == root / "backbones":
            out |= {n for n in names if not any(fnmatch.fnmatch(n, p) for p in DEMO_BACKBONES)}
        return out

    return ignore


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _accuracy_key(row: dict[str, Any]) -> tuple[float, float]:
    """Sort key: test accuracy, then epoch (newest first on ties, sorted in reverse)."""
    labels = row.get("labels") or {}
    return (float(labels.get("test_accuracy") or 0.0), float(labels.get("epoch") or 0.0))


def _weights_subset(atlas: Atlas, per_group: int) -> list[dict[str, Any]]:
    """The best-accuracy accepted models per (family, task), newest epoch first on ties.

    Models that declare a base model (fine-tunes, merges, precision copies of a model tree) are
    left out: the Layers page shows trained-from-scratch models, and a tree's weights would push
    the demo over its size limit."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in atlas.accepted():
        if row.get("base_model"):
            continue
        task = (row.get("labels") or {}).get("task", row.get("pipeline_tag") or "")
        groups.setdefault((row.get("family") or "", str(task)), []).append(row)

    keep = []
    for rows in groups.values():
        keep += sorted(rows, key=_accuracy_key, reverse=True)[:per_group]
    return keep


def _best_per_family(rows: list[dict[str, Any]], n: int) -> set[str]:
    """Ids of the ``n`` best rows (``_accuracy_key``; ties: by id) of each family."""
    by_family: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        by_family.setdefault(row.get("family") or "", []).append(row)
    return {
        r["id"]
        for group in by_family.values()
        for r in sorted(group, key=_accuracy_key, reverse=True)[:n]
    }


def shrink_weights(path: str | Path, dtype: str = "bf16") -> None:
    """Rewrite a ``model.safetensors`` with its float tensors in ``dtype`` (bf16 or fp32).

    ``load_backbone`` copies them into the fp32 parameters, so a bf16 file loads as before
    with each weight rounded to 8 significant bits (about 3 decimal digits).
    """
    import torch
    from safetensors.torch import load_file, save_file

    if dtype not in ("bf16", "fp32"):
        raise WeightAtlasError(f"backbone_dtype {dtype!r}: choose bf16 or fp32")
    target = torch.bfloat16 if dtype == "bf16" else torch.float32
    tensors = load_file(str(path))
    tensors = {k: v.to(target) if v.is_floating_point() else v for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def export_demo(
    src: str | Path,
    out: str | Path,
    per_group: int = 1,
    max_mb: float = 30.0,
    backbone_dtype: str = "bf16",
    tokens_per_family: int = 1,
) -> Path:
    """Copy the app-facing parts of atlas ``src`` into a slim atlas at ``out``.

    Args:
        src: a finished atlas (collected, tokenized, trained, embedded, evaluated).
        out: destination; replaced atomically (built beside it, then renamed).
        per_group: models per (family, task) whose weights are kept for the Layers page.
        max_mb: size limit; exceeding it is an error.
        backbone_dtype: dtype of the shipped backbone weights (``shrink_weights``).
        tokens_per_family: kept models per family whose tokens are shipped too (the best by
            test accuracy); 0: every kept model's. The Layers page tokenizes the other kept
            models from their weights when opened (``core.embeddings.fidelity.model_tokens``):
            per-channel tokens of the demo's kept models take 15 MB.

    Returns:
        The demo atlas path.
    """
    source = Atlas.open(src)
    if not (source.embeddings_dir.exists() and source.backbone_dir.exists()):
        raise WeightAtlasError(f"{src} has no embeddings/backbone yet; run the pipeline first")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for name in KEEP_DIRS:
            if (source.root / name).exists():
                shutil.copytree(source.root / name, tmp / name, ignore=_ignore(source.root))
        shipped = Atlas(tmp)
        for f in [
            shipped.backbone.weights_path,
            *tmp.glob(f"backbones/*/{BackboneFiles.WEIGHTS}"),
        ]:
            if f.exists():
                shrink_weights(f, backbone_dtype)

        for f in sorted((tmp / "results").glob("*.json")):
            write_json(f, strip_machine_paths(read_json(f), source.root))
        subset = _weights_subset(source, per_group)
        kept = {row["id"] for row in subset}
        rows = []
        for row in source.manifest():
            row = dict(row)
            if row["id"] in kept and row.get("path"):
                src_dir = Path(row["path"])
                src_dir = src_dir if src_dir.is_absolute() else source.root / src_dir
                rel = Path("hub") / row["id"].replace("/", "--")
                shutil.copytree(src_dir, tmp / rel, symlinks=False)
                row["path"] = str(rel)
            else:
                row["path"] = None  # weights not shipped with the demo
            rows.append(row)
        append_jsonl(shipped.manifest_path, rows)
        info = strip_machine_paths(source.info(), source.root)
        info["demo"] = {
            "source": str(Path(src).resolve().name),
            "weights_kept": sorted(kept),
            "backbone_weights_dtype": backbone_dtype,
        }
        write_json(shipped.info_path, info)
        # a token store of some kept models, in the source's scheme: the Layers page
        # reconstructs them (the other kept models from their weights) and "Embed a model"
        # tokenizes new folders alike
        scheme, size = token_scheme(source)
        only = _best_per_family(subset, tokens_per_family) if tokens_per_family > 0 else None
        tokenize(tmp, scheme=scheme, token_size=size, progress=False, only=only)
        size_mb = dir_bytes(tmp) / 2**20
        if size_mb > max_mb:
            raise WeightAtlasError(f"demo atlas is {size_mb:.1f} MB > {max_mb} MB; lower per_group")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def demo(
    out: str | Path = "assets/demo",
    from_atlas: str | Path | None = None,
    work: str | Path | None = None,
    preset: str = "demo",
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Build the demo atlas: run the stages into ``work`` (or reuse ``from_atlas``), then export.

    Args:
        out: where the slim demo atlas goes (``assets/demo`` for the committed default).
        from_atlas: a finished atlas to export instead of building one.
        work: scratch directory for the zoo and the full atlas (kept, so a re-run resumes).
        preset: a DEMO_PRESETS name.
        overrides: DemoConfig fields.
    """
    cfg = build_config(DemoConfig, DEMO_PRESETS, preset, overrides=overrides)
    if from_atlas is None:
        work = Path(work or Path(tempfile.gettempdir()) / f"weightatlas-demo-{cfg.zoo_preset}")
        zoo_dir = zoo(preset=cfg.zoo_preset, out=work / "zoo", seed=cfg.seed)
        from_atlas = work / "atlas"
        collect(from_atlas, overrides={"source": str(zoo_dir)})
        tokenize(from_atlas, scheme=cfg.scheme, token_size=cfg.token_size)
        train(from_atlas, preset=cfg.backbone_preset)
        embed(from_atlas)
        evaluate(from_atlas)
    return export_demo(
        from_atlas, out, per_group=cfg.per_group, max_mb=cfg.max_mb,
        backbone_dtype=cfg.backbone_dtype, tokens_per_family=cfg.tokens_per_family,
    )  # fmt: skip
