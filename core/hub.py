"""Collection: candidate models from the Hugging Face Hub, an HF cache or a directory -> manifest.

Paper 001, section 2: query the Hub by tags, keep only models that instantiate with their
library's own classes (no remote code) and that tokenize, record why every other candidate was
dropped, and continue until N train and M validation models are accepted.

    weightatlas collect ATLAS --source hub --tags image-classification --limit 2000
    weightatlas collect ATLAS --source hub --tags image-classification --n-train 2000 --n-val 200
    weightatlas collect ATLAS --source /work/zoo-ci          # an HF cache (models--org--name/...)
    weightatlas collect ATLAS --source ~/.cache/huggingface  # the user's cache
    weightatlas collect ATLAS --source ./my-models           # a plain directory of model folders
    weightatlas bench collect --n 1000

Sources are a small registry (``@register_source``): ``hub`` lists with ``HfApi.list_models``
and downloads ``config.json``, ``*.safetensors`` and ``README.md`` with ``snapshot_download``
into ``ATLAS/hub/`` (HF cache layout, resumable); ``hf-cache`` and ``dir`` read local folders in
place. Every candidate goes through the same checks, cheapest first, each with a reason:

1. header-only (``inspect_model_dir``, no tensor data read): ``remote code`` (a ``custom_code``
   tag, ``auto_map`` / ``custom_class`` in the config), ``no config`` / ``bad config`` /
   ``unknown config``, ``no safetensors`` (pickle-only repos; pickles are never opened),
   ``no weights``, ``truncated safetensors`` / ``bad safetensors header`` /
   ``inconsistent offsets`` (we parse the 8-byte length + JSON header ourselves and check that
   the offsets tile the data section exactly and match each shape and dtype),
   ``unsupported dtype``, ``too large`` (float values over ``max_params``);
2. deep (``check_model``): the library's own classes build the model from its config
   (``core.architectures.empty_model``: ``unknown model_type``, ``unsupported architecture``,
   ...), ``non-finite weights`` (NaN/Inf), ``weights do not match config`` (names and shapes,
   strict as ``load_model_dir``; tied weights may be stored once), ``untokenizable`` (the dense
   token plan from shapes is empty).

Hub candidates are also pre-checked from the listing (``custom_code`` tag, pickle-only file
list, ``safetensors.total`` over the limit) so that such repos are never downloaded.

The manifest (``ATLAS/manifest.jsonl``, docs/interfaces.md) is append-only, one fsync'd row per
candidate written by one thread; a re-run skips ids already there, and a killed run resumes
losing nothing: files already in ``ATLAS/hub/`` are not fetched again (huggingface_hub 2.4
restarts an unfinished file rather than reusing its partial bytes). Network failures are not recorded
as rejections: those candidates are retried on the next run. The split is a hash of the *run
key* (zoo cards: ``family-task-rN`` from the ``weightatlas:`` block, so one run's checkpoints
never straddle splits; otherwise the repo id) into train/val/test at 70/15/15 (``CollectConfig``).
With ``n_train`` / ``n_val``, candidates whose split is already full are skipped undownloaded
and the run stops once every quota is met; candidates in flight count against their split's
quota, so a quota is met exactly (one whose in-flight candidate is rejected takes the next).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
import types
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.atlas import Atlas, append_jsonl, read_jsonl
from core.config import build_config, to_dict
from core.errors import RejectedModel, WeightAtlasError

# ---------------------------------------------------------------------------------- config


@dataclass
class CollectConfig:
    """How candidates are fetched and checked.

    Attributes:
        max_params: largest accepted number of float values in a model's safetensors.
        split_fractions: train/val/test shares of the hash of the run key (sum 1).
        workers: concurrent candidates (downloads and header checks).
        check_workers: concurrent deep checks (they hold a model's weights in memory twice).
        token_size: D of the dense token plan used for the "it tokenizes" check.
        max_header_bytes: largest accepted safetensors JSON header.
        supported_dtypes: safetensors dtypes a model may contain.
        allow_patterns: files downloaded from a Hub repo.
        check_finite: read every float tensor and reject NaN/Inf.
    """

    max_params: int = 350_000_000
    split_fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    workers: int = 8
    check_workers: int = 2
    token_size: int = 64
    max_header_bytes: int = 100_000_000
    supported_dtypes: tuple[str, ...] = (
        "F64",
        "F32",
        "F16",
        "BF16",
        "I64",
        "I32",
        "I16",
        "I8",
        "U8",
        "BOOL",
    )
    allow_patterns: tuple[str, ...] = (
        "config.json",
        "*.safetensors",
        "*.safetensors.index.json",
        "README.md",
    )
    check_finite: bool = True


COLLECT_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "ci": {"workers": 2, "check_workers": 1, "max_params": 5_000_000},
    "paper": {"max_params": 1_000_000_000, "split_fractions": (0.9, 0.1, 0.0)},
}

SPLITS = ("train", "val", "test")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ROW_FIELDS = (
    "id",
    "revision",
    "source",
    "status",
    "reason",
    "detail",
    "library",
    "model_type",
    "architecture",
    "family",
    "params",
    "tags",
    "pipeline_tag",
    "datasets",
    "metrics",
    "license",
    "base_model",
    "base_model_relation",
    "split",
    "path",
    "labels",
)

# ------------------------------------------------------------------- safetensors headers

# safetensors dtype -> bits per element (sub-byte float formats included so their sizes check)
ST_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
ST_FLOAT = frozenset(
    {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F16", "BF16", "F32", "F64", "F4", "F6_E2M3", "F6_E3M2"}
)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors header: dtype code, shape, byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(
    path: str | Path, max_header_bytes: int = 100_000_000
) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header without reading any tensor data.

    Checks the 8-byte little-endian header length against the file size, the JSON structure,
    every dtype and shape, that each byte range matches its shape and dtype, and that the
    ranges tile the data section exactly (no gap, overlap or trailing bytes).

    Raises:
        RejectedModel: ``truncated safetensors``, ``bad safetensors header`` or
            ``inconsistent offsets``.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise RejectedModel(
                "truncated safetensors", f"{path.name}: {size} bytes, no header length"
            )
        n = int.from_bytes(head, "little")
        if n > max_header_bytes:
            raise RejectedModel(
                "bad safetensors header", f"{path.name}: header length {n} over {max_header_bytes}"
            )
        if 8 + n > size:
            raise RejectedModel(
                "truncated safetensors", f"{path.name}: header needs {8 + n} bytes, file has {size}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RejectedModel("bad safetensors header", f"{path.name}: not JSON ({e})") from None
    if not isinstance(header, dict):
        raise RejectedModel("bad safetensors header", f"{path.name}: header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise RejectedModel(
            "bad safetensors header", f"{path.name}: __metadata__ is not a str -> str map"
        )
    tensors: dict[str, TensorInfo] = {}
    for name, e in header.items():
        try:
            dtype, shape, (start, end) = e["dtype"], e["shape"], e["data_offsets"]
            ok = (
                dtype in ST_DTYPE_BITS
                and isinstance(shape, list)
                and all(type(d) is int and d >= 0 for d in shape)
                and type(start) is int
                and type(end) is int
                and 0 <= start <= end
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise RejectedModel("bad safetensors header", f"{path.name}: malformed entry {name!r}")
        info = TensorInfo(dtype, tuple(shape), start, end)
        need = -(-info.numel * ST_DTYPE_BITS[dtype] // 8)
        if end - start != need:
            raise RejectedModel(
                "inconsistent offsets",
                f"{path.name}: {name} {dtype}{list(shape)} needs {need} bytes, offsets span {end - start}",
            )
        tensors[name] = info
    data_len = size - 8 - n
    pos = 0
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != pos:
            what = (
                "overlaps the previous tensor"
                if info.start < pos
                else f"leaves a gap at byte {pos}"
            )
            raise RejectedModel("inconsistent offsets", f"{path.name}: {name} {what}")
        pos = info.end
    if pos > data_len:
        raise RejectedModel(
            "truncated safetensors", f"{path.name}: data ends at byte {pos}, file has {data_len}"
        )
    if pos < data_len:
        raise RejectedModel(
            "inconsistent offsets", f"{path.name}: {data_len - pos} bytes after the last tensor"
        )
    return tensors


# --------------------------------------------------------------------------- model facts


@dataclass
class ModelFacts:
    """What is known about one candidate; filled in as the checks proceed."""

    id: str
    revision: str | None
    source: str
    path: Path | None = None
    card: dict[str, Any] = field(default_factory=dict)
    hub_tags: list[str] | None = None
    hub_pipeline_tag: str | None = None
    config: dict[str, Any] | None = None
    library: str | None = None
    model_type: str | None = None
    architecture: str | None = None
    family: str | None = None
    params: int | None = None
    files: list[Path] = field(default_factory=list)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)


def read_card(path: Path) -> dict[str, Any]:
    """YAML front matter of ``README.md``; {} if absent or malformed.

    Same block as ``huggingface_hub.metadata_load`` (its ``REGEX_YAML_BLOCK``), parsed with
    libyaml's safe loader when available: the pure-Python one was 90 % of a header-only scan.
    """
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    readme = path / "README.md"
    try:
        text = readme.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return {}
    match = REGEX_YAML_BLOCK.search(text)
    if not match:
        return {}
    try:
        meta = yaml.load(match.group(2), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:  # malformed YAML in an untrusted card: no metadata, not a rejection
        return {}
    return meta if isinstance(meta, dict) else {}


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, list | tuple) else [v]


def card_tags(card: dict[str, Any]) -> list[str]:
    """Tags as the Hub derives them from a card: its tags, library, pipeline tag, datasets, license."""
    tags = [str(t) for t in _as_list(card.get("tags"))]
    for key, prefix in (("library_name", ""), ("pipeline_tag", ""), ("license", "license:")):
        if isinstance(card.get(key), str):
            tags.append(prefix + card[key])
    tags += [f"dataset:{d}" for d in _as_list(card.get("datasets")) if isinstance(d, str)]
    return list(dict.fromkeys(tags))


def card_metrics(card: dict[str, Any]) -> dict[str, float]:
    """``model-index`` results flattened to ``{metric type (or name): value}``."""
    out: dict[str, float] = {}
    for entry in _as_list(card.get("model-index")):
        if not isinstance(entry, dict):
            continue
        for result in _as_list(entry.get("results")):
            if not isinstance(result, dict):
                continue
            for m in _as_list(result.get("metrics")):
                if (
                    isinstance(m, dict)
                    and isinstance(m.get("value"), int | float)
                    and not isinstance(m["value"], bool)
                ):
                    key = m.get("type") or m.get("name")
                    if isinstance(key, str):
                        out[key] = float(m["value"])
    return out


def base_model_of(
    card: dict[str, Any], files: list[str]
) -> tuple[str | list[str] | None, str | None]:
    """``base_model`` and its relation: the card's ``base_model_relation``, else the Hub's rule
    (adapter files -> adapter, several bases -> merge, quantized tag -> quantized, else finetune)."""
    bases = [b for b in _as_list(card.get("base_model")) if isinstance(b, str)]
    if not bases:
        return None, None
    base: str | list[str] = bases[0] if len(bases) == 1 else bases
    relation = card.get("base_model_relation")
    if isinstance(relation, str):
        return base, relation
    if "adapter_config.json" in files:
        return base, "adapter"
    if len(bases) > 1:
        return base, "merge"
    if "quantized" in card_tags(card):
        return base, "quantized"
    return base, "finetune"


def zoo_labels(card: dict[str, Any]) -> dict[str, Any]:
    """The flat ``weightatlas:`` block of a zoo card (task, run, epoch, accuracies, ...)."""
    block = card.get("weightatlas")
    return dict(block) if isinstance(block, dict) else {}


def run_key(model_id: str, labels: dict[str, Any]) -> str:
    """``family-task-rN`` for zoo checkpoints (one run never straddles splits), else the id."""
    if all(k in labels for k in ("family", "task", "run")):
        return f"{labels['family']}-{labels['task']}-r{labels['run']}"
    return model_id


def split_of(key: str, fractions: tuple[float, ...] = (0.7, 0.15, 0.15)) -> str:
    """Deterministic train/val/test from a SHA-256 of ``key``."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise WeightAtlasError(
            f"split_fractions must be 3 non-negative shares summing to 1, got {fractions}"
        )
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac
        if u < acc:
            return name
    return next(s for s, f in zip(reversed(SPLITS), reversed(fractions)) if f > 0)


# ------------------------------------------------------------------------------- checks


def _remote_code_tag(tags: list[str]) -> None:
    if "custom_code" in tags:
        raise RejectedModel("remote code", "tagged custom_code; custom code is never run")


def inspect_model_dir(
    path: str | Path, cfg: CollectConfig, facts: ModelFacts | None = None
) -> ModelFacts:
    """Header-only checks of a model folder: card, config, file list, safetensors headers.

    No tensor data and no pickle is ever read. ``facts`` (if given) is filled in place, so that
    a rejected candidate's row still carries what was learned before the failing check.

    Raises:
        RejectedModel: with the first failing check's reason.
    """
    from core.architectures import family_of, library_of, model_type_of, read_config, weight_files

    path = Path(path)
    facts = facts or ModelFacts(id=path.name, revision=None, source="dir")
    facts.path = path
    facts.card = read_card(path)
    _remote_code_tag([*(facts.hub_tags or []), *card_tags(facts.card)])
    facts.config = read_config(path)
    facts.architecture = _architecture(facts.config)
    facts.library = library_of(facts.config)  # raises "remote code" for auto_map / custom_class
    facts.model_type = model_type_of(facts.config)
    facts.family = family_of(facts.config)
    names = os.listdir(path)
    if not any(n.endswith(".safetensors") for n in names) and any(
        n.endswith(PICKLE_SUFFIXES) for n in names
    ):
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        raise RejectedModel(
            "no safetensors", f"only pickled weights ({', '.join(pickles)}), never opened"
        )
    facts.files = weight_files(path)
    tensors: dict[str, TensorInfo] = {}
    for f in facts.files:
        for name, info in read_safetensors_header(f, cfg.max_header_bytes).items():
            if name in tensors:
                raise RejectedModel("bad safetensors header", f"{name} in more than one file")
            tensors[name] = info
    facts.tensors = tensors
    bad = sorted({t.dtype for t in tensors.values()} - set(cfg.supported_dtypes))
    if bad:
        raise RejectedModel("unsupported dtype", ", ".join(bad))
    facts.params = sum(t.numel for t in tensors.values() if t.dtype in ST_FLOAT)
    if facts.params > cfg.max_params:
        raise RejectedModel(
            "too large", f"{facts.params:,} float values > max_params {cfg.max_params:,}"
        )
    return facts


def _architecture(config: dict[str, Any]) -> str | None:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    arch = config.get("architecture")
    return arch if isinstance(arch, str) else None


_BUILD_LOCK = threading.Lock()

_TORCH_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def check_model(facts: ModelFacts, cfg: CollectConfig) -> int:
    """Deep checks after ``inspect_model_dir``: load (``core.architectures.load_model_dir``),
    finite weights, and the tokenize stage's plan.

    Returns:
        The number of dense tokens of size ``cfg.token_size``.

    Raises:
        RejectedModel: with the first failing check's reason.
    """
    import torch

    from core.architectures import load_model_dir
    from core.tokenize import model_structure, plan_tokens

    assert facts.config is not None and facts.path is not None
    # the loader every later stage uses: the library's own classes from the config, strict
    # names and shapes (tied weights stored once), legacy transformers key layouts through the
    # class's from_pretrained; transformers' lazy module is not safe to first-touch from threads
    with _BUILD_LOCK:
        loaded = load_model_dir(facts.path)
    facts.library = loaded.library
    if cfg.check_finite:
        for name, t in loaded.model.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                n_bad = int((~torch.isfinite(t)).sum())
                raise RejectedModel(
                    "non-finite weights", f"{name}: {n_bad} of {t.numel()} values NaN/Inf"
                )
    del loaded
    # the tokenize stage's own plan, from header shapes and the module structure
    with _BUILD_LOCK:
        st = model_structure(facts.path)
    metas = {
        k: types.SimpleNamespace(
            shape=t.shape, dtype=getattr(torch, _TORCH_DTYPES.get(t.dtype, ""), None)
        )
        for k, t in facts.tensors.items()
    }
    plan = plan_tokens(metas, "dense", cfg.token_size, st.trainable, st.order, st.kinds, st.buffers)
    # tensors the tokenizer cannot place, while module tensors are absent under their own
    # names: a key layout the library renames on load, whose tokens would miss those layers
    # (unused extras alone, e.g. a pre-training head, or tied aliases alone are fine)
    unplaced = [e["name"] for e in plan.excluded if e["reason"] == "not in the architecture"]
    absent = sorted((st.trainable or set()) - set(facts.tensors))
    if unplaced and absent:
        raise RejectedModel(
            "untokenizable",
            f"{len(unplaced)} stored tensors have no place in the module (e.g. {unplaced[0]}) "
            f"and {len(absent)} module tensors are not stored under their names (e.g. "
            f"{absent[0]}): a key layout the library renames on load",
        )
    if plan.n_tokens == 0:
        raise RejectedModel("untokenizable", "no trainable float tensor to cut into tokens")
    return plan.n_tokens


# ------------------------------------------------------------------------------ sources


@dataclass
class Query:
    """What to collect: Hub-style filters (also applied to local cards), order and count."""

    tags: tuple[str, ...] = ()
    pipeline_tag: str | None = None
    library: str | None = None
    sort: str = "downloads"
    limit: int | None = None


@dataclass
class Candidate:
    """One model to check: where it comes from, and what the listing already told us."""

    id: str
    revision: str | None
    path: Path | None = None
    tags: list[str] | None = None
    pipeline_tag: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    remote_files: list[str] | None = None
    remote_params: int | None = None


class Source(ABC):
    """A place candidates come from."""

    kind: str = ""

    def __init__(self, spec: str, query: Query, cfg: CollectConfig, endpoint: str | None = None):
        self.spec, self.query, self.cfg, self.endpoint = spec, query, cfg, endpoint

    @abstractmethod
    def candidates(self) -> Iterator[Candidate]:
        """Candidates in collection order (lazily: the Hub is paged)."""

    @abstractmethod
    def fetch(self, cand: Candidate, atlas: Atlas) -> Path:
        """A local folder with the candidate's files."""

    def describe(self) -> dict[str, Any]:
        """What atlas.json records about this source."""
        q = {k: v for k, v in to_dict(self.query).items() if v not in (None, (), [])}
        return {"kind": self.kind, "spec": self.spec, "query": q}


SOURCES: dict[str, type[Source]] = {}


def register_source(name: str) -> Callable[[type[Source]], type[Source]]:
    """Class decorator adding a ``Source`` to ``SOURCES``."""

    def deco(cls: type[Source]) -> type[Source]:
        cls.kind = name
        SOURCES[name] = cls
        return cls

    return deco


def _matches(query: Query, card: dict[str, Any], config_library: str | None = None) -> bool:
    tags = set(card_tags(card))
    if config_library:
        tags.add(config_library)
    if not set(query.tags) <= tags:
        return False
    if query.pipeline_tag and card.get("pipeline_tag") != query.pipeline_tag:
        return False
    return not (query.library and query.library not in tags)


def _local_candidate(
    model_id: str, revision: str | None, path: Path, query: Query
) -> Candidate | None:
    card = read_card(path)
    library = None
    if query.library and not isinstance(card.get("library_name"), str):
        from core.architectures import library_of, read_config

        try:  # a card without library_name: the config says which library it is
            library = library_of(read_config(path))
        except RejectedModel:
            library = None
    if (query.tags or query.pipeline_tag or query.library) and not _matches(query, card, library):
        return None
    return Candidate(model_id, revision, path=path, card=card)


@register_source("hf-cache")
class CacheSource(Source):
    """A Hugging Face cache: ``models--org--name/snapshots/REV`` (``refs/main`` picks REV)."""

    def candidates(self) -> Iterator[Candidate]:
        n = 0
        for repo in _cache_repos(Path(self.spec)):
            if self.query.limit is not None and n >= self.query.limit:
                return
            model_id, rev, snap = repo
            cand = _local_candidate(model_id, rev, snap, self.query)
            if cand is not None:
                n += 1
                yield cand

    def fetch(self, cand: Candidate, atlas: Atlas) -> Path:
        assert cand.path is not None
        return cand.path


def _cache_repos(root: Path) -> Iterator[tuple[str, str, Path]]:
    """``(id, revision, snapshot dir)`` for every model repo of an HF cache, sorted by id."""
    for d in sorted(root.iterdir()):
        if not d.name.startswith("models--") or not d.is_dir():
            continue
        parts = d.name[len("models--") :].split("--", 1)
        model_id = "/".join(parts)
        snaps = d / "snapshots"
        rev = None
        ref = d / "refs" / "main"
        if ref.is_file():
            rev = ref.read_text().strip()
        if not rev or not (snaps / rev).is_dir():
            dirs = (
                sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime) if snaps.is_dir() else []
            )
            if not dirs:
                continue
            rev = dirs[-1].name
        yield model_id, rev, snaps / rev


def _looks_like_model(path: Path) -> bool:
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return "config.json" in names or any(
        n.endswith((".safetensors", *PICKLE_SUFFIXES)) for n in names
    )


@register_source("dir")
class DirSource(Source):
    """A plain directory of model folders (``NAME/`` or ``ORG/NAME/``), or one model folder."""

    def candidates(self) -> Iterator[Candidate]:
        root = Path(self.spec)
        if _looks_like_model(root):
            folders = [root]
        else:
            folders = []
            for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if _looks_like_model(d):
                    folders.append(d)
                else:
                    folders += sorted(p for p in d.iterdir() if p.is_dir() and _looks_like_model(p))
        n = 0
        for d in folders:
            if self.query.limit is not None and n >= self.query.limit:
                return
            model_id = d.name if d == root else d.relative_to(root).as_posix()
            cand = _local_candidate(model_id, "local", d, self.query)
            if cand is not None:
                n += 1
                yield cand

    def fetch(self, cand: Candidate, atlas: Atlas) -> Path:
        assert cand.path is not None
        return cand.path


HUB_EXPAND = [
    "sha",
    "tags",
    "library_name",
    "pipeline_tag",
    "cardData",
    "siblings",
    "safetensors",
    "downloads",
]


@register_source("hub")
class HubSource(Source):
    """The Hugging Face Hub (or ``HF_ENDPOINT`` / ``endpoint``): paged listing, concurrent downloads."""

    def candidates(self) -> Iterator[Candidate]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint)
        filters = [*self.query.tags, *([self.query.library] if self.query.library else [])]
        infos = api.list_models(
            filter=filters or None,
            pipeline_tag=self.query.pipeline_tag,
            sort=self.query.sort or None,
            limit=self.query.limit,
            expand=HUB_EXPAND,
        )
        for info in infos:
            card = info.card_data.to_dict() if info.card_data is not None else {}
            yield Candidate(
                id=info.id,
                revision=info.sha,
                tags=list(info.tags or []),
                pipeline_tag=info.pipeline_tag,
                card=card,
                remote_files=[s.rfilename for s in info.siblings]
                if info.siblings is not None
                else None,
                remote_params=info.safetensors.total if info.safetensors is not None else None,
            )

    def precheck(self, cand: Candidate) -> None:
        """Reject from the listing alone, before anything is downloaded."""
        _remote_code_tag(cand.tags or [])
        if cand.remote_files is not None:
            files = cand.remote_files
            if not any(f.endswith(".safetensors") for f in files):
                pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
                if pickles:
                    raise RejectedModel(
                        "no safetensors",
                        f"only pickled weights ({', '.join(pickles)}), not downloaded",
                    )
                raise RejectedModel("no weights", "the repo has no safetensors file")
        if cand.remote_params is not None and cand.remote_params > self.cfg.max_params:
            raise RejectedModel(
                "too large",
                f"{cand.remote_params:,} parameters > max_params {self.cfg.max_params:,}",
            )

    def fetch(self, cand: Candidate, atlas: Atlas) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        self.precheck(cand)
        try:
            return Path(
                snapshot_download(
                    cand.id,
                    revision=cand.revision or "main",
                    allow_patterns=list(self.cfg.allow_patterns),
                    cache_dir=atlas.hub_dir,
                    endpoint=self.endpoint,
                    max_workers=2,
                )
            )
        except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise RejectedModel("unavailable", f"{type(e).__name__}") from None


def make_source(spec: str, query: Query, cfg: CollectConfig, endpoint: str | None = None) -> Source:
    """``hub``, an HF cache (folders ``models--*``, or a folder with ``hub/models--*``), or a plain dir."""
    if spec in SOURCES and spec not in ("hf-cache", "dir"):
        return SOURCES[spec](spec, query, cfg, endpoint)
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise WeightAtlasError(f"--source {spec}: not 'hub' and not a directory")
    for candidate_root in (root, root / "hub"):
        if candidate_root.is_dir() and any(
            p.name.startswith("models--") for p in candidate_root.iterdir()
        ):
            return SOURCES["hf-cache"](str(candidate_root), query, cfg, endpoint)
    return SOURCES["dir"](str(root), query, cfg, endpoint)


# ------------------------------------------------------------------------------ collect


class _Transient(Exception):
    """A network failure: not the model's fault, so nothing is recorded and a re-run retries."""


def _transient_errors() -> tuple[type[BaseException], ...]:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # LocalEntryNotFoundError: snapshot_download could not reach the Hub and had no cached copy
    return (
        httpx2.TransportError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        ConnectionError,
        TimeoutError,
    )


def _row(
    facts: ModelFacts,
    atlas: Atlas,
    cfg: CollectConfig,
    status: str,
    reason: str | None,
    detail: str,
) -> dict:
    card = facts.card
    labels = zoo_labels(card)
    files = os.listdir(facts.path) if facts.path is not None and facts.path.is_dir() else []
    base, relation = base_model_of(card, files)
    path = None
    if facts.path is not None:
        p = facts.path.absolute()
        try:
            path = p.relative_to(atlas.root.absolute()).as_posix()
        except ValueError:
            path = str(p)
    row = {
        "id": facts.id,
        "revision": facts.revision,
        "source": facts.source,
        "status": status,
        "reason": reason,
        "detail": detail or None,
        "library": facts.library or card.get("library_name"),
        "model_type": facts.model_type,
        "architecture": facts.architecture,
        "family": facts.family,
        "params": facts.params,
        "tags": facts.hub_tags if facts.hub_tags is not None else card_tags(card),
        "pipeline_tag": facts.hub_pipeline_tag or card.get("pipeline_tag"),
        "datasets": [d for d in _as_list(card.get("datasets")) if isinstance(d, str)],
        "metrics": card_metrics(card),
        "license": card.get("license") if isinstance(card.get("license"), str) else None,
        "base_model": base,
        "base_model_relation": relation,
        "split": split_of(run_key(facts.id, labels), cfg.split_fractions),
        "path": path,
        "labels": labels,
    }
    return row


def process_candidate(
    cand: Candidate,
    source: Source,
    atlas: Atlas,
    cfg: CollectConfig,
    check_slots: threading.Semaphore | None = None,
) -> dict[str, Any]:
    """Fetch and check one candidate; return its manifest row (never raises for bad models).

    ``check_slots`` bounds how many deep checks (weights in memory) run at once while
    downloads and header checks of other candidates go on.

    Raises:
        _Transient: a network failure (the candidate is retried on the next run).
    """
    facts = ModelFacts(
        id=cand.id,
        revision=cand.revision,
        source=source.kind,
        card=dict(cand.card),
        hub_tags=cand.tags,
        hub_pipeline_tag=cand.pipeline_tag,
    )
    try:
        try:
            path = source.fetch(cand, atlas)
        except _transient_errors() as e:
            raise _Transient(
                f"{cand.id}: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
            ) from None
        inspect_model_dir(path, cfg, facts)
        with check_slots or contextlib.nullcontext():
            check_model(facts, cfg)
    except RejectedModel as e:
        return _row(facts, atlas, cfg, "rejected", e.reason, e.detail)
    except _Transient:
        raise
    except Exception as e:  # an untrusted model must never stop the run
        return _row(facts, atlas, cfg, "rejected", "check failed", f"{type(e).__name__}: {e}"[:500])
    return _row(facts, atlas, cfg, "accepted", None, "")


@dataclass
class _Quota:
    """Accepted models wanted per split, accepted so far, and candidates in flight per split."""

    need: dict[str, int]
    have: Counter = field(default_factory=Counter)
    inflight: Counter = field(default_factory=Counter)

    def full(self, split: str) -> bool:
        return split in self.need and self.have[split] >= self.need[split]

    def room(self, split: str) -> bool:
        return split not in self.need or self.have[split] + self.inflight[split] < self.need[split]

    def met(self) -> bool:
        return bool(self.need) and all(self.have[s] >= n for s, n in self.need.items())


class _Feed:
    """Candidates in source order, minus done ids and splits whose quota is full.

    A candidate whose split is only full counting the ones in flight is deferred, not dropped:
    if one in flight is rejected, it is tried next. So quotas are met exactly, never exceeded.
    """

    def __init__(
        self, src: Source, done: set[str], quota: _Quota, cfg: CollectConfig, stats: Counter
    ):
        self.it = src.candidates()
        self.kind = src.kind
        self.done, self.quota, self.cfg, self.stats = done, quota, cfg, stats
        self.deferred: list[tuple[Candidate, str]] = []
        self.exhausted = False

    def next(self) -> tuple[Candidate, str] | None:
        """The next candidate to submit and its split hint, or None for now."""
        for i, (_cand, hint) in enumerate(self.deferred):
            if self.quota.full(hint):
                self.stats["skipped (split full)"] += 1
                self.deferred.pop(i)
                return self.next()
            if self.quota.room(hint):
                return self.deferred.pop(i)
        while not self.exhausted:
            try:
                cand = next(self.it, None)
            except _transient_errors() as e:
                raise WeightAtlasError(
                    f"listing {self.kind} failed ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200]}); what was collected is kept, re-run to resume"
                ) from None
            if cand is None:
                self.exhausted = True
                break
            if cand.id in self.done:
                self.stats["skipped (done)"] += 1
                continue
            self.done.add(cand.id)
            hint = split_of(run_key(cand.id, zoo_labels(cand.card)), self.cfg.split_fractions)
            if self.quota.full(hint):
                self.stats["skipped (split full)"] += 1
                continue
            if not self.quota.room(hint):
                self.deferred.append((cand, hint))
                continue
            return cand, hint
        return None


def collect(
    atlas: Atlas | str | Path,
    source: str = "hub",
    tags: tuple[str, ...] | list[str] = (),
    pipeline_tag: str | None = None,
    library: str | None = None,
    sort: str = "downloads",
    limit: int | None = None,
    max_params: int | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    workers: int | None = None,
    preset: str = "default",
    endpoint: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Collect candidate models from ``source`` into the atlas manifest (resumable).

    Args:
        atlas: atlas directory (created if needed).
        source: ``"hub"``, an HF cache directory or a plain directory of model folders.
        tags: required tags (Hub ``filter``; for local sources, card tags/library/pipeline).
        pipeline_tag: required pipeline tag.
        library: required library (``transformers``, ``timm``, ...).
        sort: Hub listing order (``downloads``, ``likes``, ``last_modified``, ...).
        limit: at most this many candidates from the listing.
        max_params: override of the preset's float-value limit per model.
        n_train: stop once this many train models are accepted (with ``n_val``).
        n_val: stop once this many validation models are accepted.
        workers: concurrent candidates (override of the preset).
        preset: a ``COLLECT_PRESETS`` name.
        endpoint: Hub URL (default: ``HF_ENDPOINT`` or huggingface.co).
        progress: show a tqdm bar.

    Returns:
        All manifest rows of the atlas after this run (last row per id).
    """
    overrides: dict[str, Any] = {}
    if max_params is not None:
        overrides["max_params"] = max_params
    if workers is not None:
        overrides["workers"] = workers
    cfg = build_config(CollectConfig, COLLECT_PRESETS, preset, overrides=overrides)
    split_of("", cfg.split_fractions)  # validate early
    for name, v in (
        ("limit", limit),
        ("n_train", n_train),
        ("n_val", n_val),
        ("max_params", cfg.max_params),
    ):
        if v is not None and v < 0:
            raise WeightAtlasError(f"{name} must be >= 0, got {v}")
    if min(cfg.workers, cfg.check_workers) < 1:
        raise WeightAtlasError(
            f"workers and check_workers must be >= 1, got {cfg.workers}, {cfg.check_workers}"
        )
    check_slots = threading.BoundedSemaphore(cfg.check_workers)
    atlas = atlas if isinstance(atlas, Atlas) else Atlas.create(atlas)
    query = Query(tuple(tags), pipeline_tag, library, sort, limit)
    src = make_source(str(source), query, cfg, endpoint)
    _record_source(atlas, src, cfg)

    done: set[str] = set()
    quota = _Quota({s: n for s, n in (("train", n_train), ("val", n_val)) if n is not None})
    for row in read_jsonl(atlas.manifest_path):
        done.add(row["id"])
        if row.get("status") == "accepted":
            quota.have[row.get("split")] += 1
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # one bar for the whole collection, not one per file
    stats: Counter = Counter()
    bar = tqdm(desc=f"collect {src.kind}", unit="model", disable=not progress)
    feed = _Feed(src, done, quota, cfg, stats)
    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="collect") as ex:
        pending: dict[Future, str] = {}  # future -> split hint
        while True:
            while len(pending) < 2 * cfg.workers and not quota.met():
                item = feed.next()
                if item is None:
                    break
                cand, hint = item
                quota.inflight[hint] += 1
                fut = ex.submit(process_candidate, cand, src, atlas, cfg, check_slots)
                pending[fut] = hint
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            rows = []
            for fut in finished:
                quota.inflight[pending.pop(fut)] -= 1
                try:
                    rows.append(fut.result())
                except _Transient as e:
                    stats["network errors (retry later)"] += 1
                    tqdm.write(f"collect: {e}; will retry on the next run")
            append_jsonl(atlas.manifest_path, rows)
            for row in rows:
                stats[row["status"]] += 1
                if row["status"] == "accepted":
                    quota.have[row["split"]] += 1
            bar.update(len(rows))
            bar.set_postfix(accepted=stats["accepted"], rejected=stats["rejected"])
    bar.close()
    _record_source(atlas, src, cfg, stats)
    return atlas.manifest()


def _record_source(
    atlas: Atlas, src: Source, cfg: CollectConfig, stats: Counter | None = None
) -> None:
    entry = src.describe()
    sources = [
        s
        for s in atlas.info().get("sources", [])
        if (s.get("kind"), s.get("spec")) != (entry["kind"], entry["spec"])
    ]
    entry["collect_config"] = to_dict(cfg)
    if stats is not None:
        entry["last_run"] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **dict(stats)}
    atlas.update_info(sources=[*sources, entry])


def reasons_table(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """``(reason, count)`` for rejected rows, most frequent first."""
    return Counter(r["reason"] for r in rows if r.get("status") == "rejected").most_common()


def summary(rows: list[dict[str, Any]]) -> str:
    """A short plain-text summary: accepted per split, then rejection reasons."""
    acc = Counter(r["split"] for r in rows if r.get("status") == "accepted")
    lines = [
        f"{len(rows)} candidates: {sum(acc.values())} accepted "
        f"(train {acc['train']}, val {acc['val']}, test {acc['test']}), "
        f"{len(rows) - sum(acc.values())} rejected"
    ]
    lines += [f"  {n:6d}  {reason}" for reason, n in reasons_table(rows)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- CLI


def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("atlas", help="atlas directory (created if needed)")
    p.add_argument(
        "--source",
        default="hub",
        help="'hub', an HF cache dir (models--org--name/...) or a dir of model folders",
    )
    p.add_argument("--tags", nargs="*", default=[], help="required tags, e.g. image-classification")
    p.add_argument("--pipeline-tag", default=None, help="required pipeline tag")
    p.add_argument("--library", default=None, help="required library (transformers, timm, ...)")
    p.add_argument(
        "--sort",
        default="downloads",
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
    p.add_argument(
        "--preset", default="default", choices=sorted(COLLECT_PRESETS), help="CollectConfig preset"
    )
    p.add_argument(
        "--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    rows = collect(
        args.atlas,
        source=args.source,
        tags=tuple(args.tags),
        pipeline_tag=args.pipeline_tag,
        library=args.library,
        sort=args.sort,
        limit=args.limit,
        max_params=args.max_params,
        n_train=args.n_train,
        n_val=args.n_val,
        workers=args.workers,
        preset=args.preset,
        endpoint=args.endpoint,
        progress=not args.no_progress,
    )
    print(summary(rows))
    return 0


# -------------------------------------------------------------------------------- bench


def scan_cache(root: str | Path, cfg: CollectConfig | None = None) -> list[dict[str, Any]]:
    """Header-only scan of an HF cache: per repo, card + config + safetensors headers, no tensor data.

    Returns:
        ``{"id", "status", "reason", "params", "n_tensors"}`` per repo.
    """
    cfg = cfg or CollectConfig()
    out = []
    for model_id, rev, snap in _cache_repos(Path(root)):
        facts = ModelFacts(model_id, rev, "hf-cache")
        try:
            inspect_model_dir(snap, cfg, facts)
            out.append(
                {
                    "id": model_id,
                    "status": "ok",
                    "reason": None,
                    "params": facts.params,
                    "n_tensors": len(facts.tensors),
                }
            )
        except RejectedModel as e:
            out.append(
                {
                    "id": model_id,
                    "status": "rejected",
                    "reason": e.reason,
                    "params": facts.params,
                    "n_tensors": 0,
                }
            )
    return out


def _walk_read(root: Path) -> int:
    """Baseline: os.walk + read the same bytes as the scan (config, card, 8 + n header bytes)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if name.endswith(".safetensors"):
                with open(p, "rb") as f:
                    n = int.from_bytes(f.read(8), "little")
                    total += 8 + len(f.read(n))
            elif name in ("config.json", "README.md"):
                with open(p, "rb") as f:
                    total += len(f.read())
    return total


def _bench_seed_repos(tmp: Path) -> list[Path]:
    """Snapshot folders to replicate: the ci zoo's, else two tiny transformers models made here."""
    zoo = Path(os.environ.get("WEIGHTATLAS_ZOO", "/work/zoo-ci"))
    if zoo.is_dir():
        snaps = [snap for _id, _rev, snap in _cache_repos(zoo)]
        if snaps:
            return snaps
    import transformers

    seeds = []
    for i, cfg in enumerate(
        (
            transformers.BertConfig(
                vocab_size=64,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
            ),
            transformers.ViTConfig(
                image_size=8,
                patch_size=4,
                num_channels=1,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                num_labels=10,
            ),
        )
    ):
        model = (transformers.BertModel if i == 0 else transformers.ViTForImageClassification)(cfg)
        d = tmp / "seed" / str(i)
        model.save_pretrained(d)
        (d / "README.md").write_text("---\nlicense: mit\ntags: [bench]\n---\n")
        seeds.append(d)
    return seeds


def make_bench_cache(root: Path, n: int, seeds: list[Path]) -> None:
    """``n`` HF-cache repos ``models--bench--mI`` hardlinking the seed snapshots' files."""
    for i in range(n):
        seed = seeds[i % len(seeds)]
        rev = hashlib.sha1(f"bench-{i}".encode()).hexdigest()
        repo = root / f"models--bench--m{i:05d}"
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(rev)
        for f in seed.iterdir():
            if f.is_file():
                os.link(f.resolve(), snap / f.name)


def bench_collect(args: argparse.Namespace) -> dict[str, Any]:
    """Header-only scan of N cached repos vs. os.walk + reading the same bytes (models/s)."""
    n = args.n or 1000
    repeat = max(1, args.repeat or 3)
    tmp = Path(tempfile.mkdtemp(prefix="wa-bench-collect-"))
    try:
        seeds = _bench_seed_repos(tmp)
        cache = tmp / "cache"
        cache.mkdir()
        make_bench_cache(cache, n, seeds)

        def best(fn: Callable[[], Any]) -> tuple[float, Any]:
            times, out = [], None
            for _ in range(repeat):
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            return min(times), out

        t_base, nbytes = best(lambda: _walk_read(cache))
        t_scan, rows = best(lambda: scan_cache(cache))
        ok = sum(r["status"] == "ok" for r in rows)
        return {
            "n_repos": n,
            "seed_repos": len(seeds),
            "repeat": repeat,
            "scan_seconds": t_scan,
            "scan_models_per_s": n / t_scan,
            "baseline_seconds": t_base,
            "baseline_models_per_s": n / t_base,
            "scan_over_baseline_time": t_scan / t_base,
            "bytes_read_per_repo": nbytes / n,
            "scan_ok": ok,
            "scan_rejected": dict(Counter(r["reason"] for r in rows if r["status"] != "ok")),
            "target_seconds_for_1000": 10.0,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
