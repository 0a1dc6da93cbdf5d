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

Sources are a small registry (``@register_source``): ``hub`` lists ``/api/models`` and
downloads ``config.json``, ``*.safetensors`` and ``README.md`` itself, with bounded HTTP that
never lets a server-supplied value name a path, into ``ATLAS/hub/`` (HF cache layout,
resumable; docs/safety.md); ``hf-cache`` and ``dir`` read local folders in place. Every candidate goes through the same checks, cheapest first, each with a reason:

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
losing nothing: files already in ``ATLAS/hub/`` are not fetched again (a file appears there
only once verified). Network failures and protocol lies (timeouts, the per-candidate deadline,
redirect loops, short bodies, bad shas, ETag mismatches) are not recorded as rejections: those
candidates are retried on the next run. The split is a hash of the *run
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
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.atlas import Atlas, append_jsonl, read_jsonl
from core.config import add_overrides_arg, build_config, parse_overrides, to_dict
from core.errors import DiskFullError, RejectedModel, WeightAtlasError
from core.safety import (
    HostileInput,
    check_build_size,
    check_commit,
    check_filename,
    check_repo_id,
    is_disk_full,
    is_regular_inside,
    load_json_bytes,
    load_yaml_text,
    parse_etag,
    read_regular,
    resolve_inside,
)

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
        http_timeout_s: connect/read timeout of one HTTP request to the Hub.
        candidate_timeout_s: overall deadline for fetching one candidate (all its files);
            past it the candidate is left for the next run, nothing is recorded.
        max_redirects: redirects followed per request (a loop is a network error, retried).
        max_listing_pages: most listing pages read in one run.
        listing_page_margin: with ``--limit N``, at most ``N + margin`` listing pages.
        max_listing_page_bytes: largest listing page (JSON) accepted.
        max_config_bytes: largest ``config.json`` read or downloaded.
        max_card_bytes: largest ``README.md`` read or downloaded.
        max_index_bytes: largest ``*.safetensors.index.json`` read or downloaded.
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
    http_timeout_s: float = 30.0
    candidate_timeout_s: float = 900.0
    max_redirects: int = 5
    max_listing_pages: int = 1000
    listing_page_margin: int = 10
    max_listing_page_bytes: int = 64 * 2**20
    max_config_bytes: int = 4 * 2**20
    max_card_bytes: int = 2 * 2**20
    max_index_bytes: int = 16 * 2**20


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
    except RecursionError:
        raise RejectedModel("bad safetensors header", f"{path.name}: nested too deeply") from None
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


def snapshot_root(path: Path) -> Path:
    """The folder a model's files may link within: the repo of an HF cache snapshot
    (``models--x/snapshots/REV`` links into ``models--x/blobs``), else the folder itself."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "snapshots" else path


def read_card(
    path: Path, root: Path | None = None, max_bytes: int = CollectConfig.max_card_bytes
) -> dict[str, Any]:
    """YAML front matter of ``README.md``; {} if absent or plain malformed YAML.

    Same block as ``huggingface_hub.metadata_load`` (its ``REGEX_YAML_BLOCK``). The card is read
    as a regular file inside ``root`` (default: ``snapshot_root(path)``) with a byte limit, and
    parsed with libyaml's safe loader without aliases (``core.safety.load_yaml_text``).

    Raises:
        RejectedModel: ``bad card``: not a regular file, over the limit, YAML aliases (a
            billion laughs), or nested too deeply.
    """
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    readme = Path(path) / "README.md"
    if not os.path.lexists(readme):
        return {}
    try:
        raw = read_regular(readme, max_bytes, snapshot_root(path) if root is None else root)
    except RejectedModel as e:
        raise RejectedModel("bad card", e.detail) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return {}
    match = REGEX_YAML_BLOCK.search(text)
    if not match:
        return {}
    try:
        meta = load_yaml_text(match.group(2), "README.md front matter")
    except HostileInput as e:
        raise RejectedModel("bad card", str(e)) from None
    except ValueError:  # malformed YAML in an untrusted card: no metadata, not a rejection
        return {}
    return meta if isinstance(meta, dict) else {}


def read_model_config(
    path: Path, root: Path | None = None, max_bytes: int = CollectConfig.max_config_bytes
) -> dict[str, Any]:
    """``config.json`` as a regular file (byte limit) parsed with a JSON depth limit.

    Raises:
        RejectedModel: ``no config`` or ``bad config`` (not a regular file, over the limit, not
            JSON, nested too deeply, not an object).
    """
    cfg_path = Path(path) / "config.json"
    if not os.path.lexists(cfg_path):
        raise RejectedModel("no config", f"{path} has no config.json")
    try:
        raw = read_regular(cfg_path, max_bytes, snapshot_root(path) if root is None else root)
        config = load_json_bytes(raw, "config.json")
    except RejectedModel as e:
        raise RejectedModel("bad config", e.detail) from None
    except ValueError as e:
        raise RejectedModel("bad config", str(e)) from None
    if not isinstance(config, dict):
        raise RejectedModel("bad config", "config.json is not a JSON object")
    return config


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
    from core.architectures import family_of, library_of, model_type_of, weight_files

    path = Path(path)
    root = snapshot_root(path)
    facts = facts or ModelFacts(id=path.name, revision=None, source="dir")
    facts.path = path
    card = read_card(path, root, cfg.max_card_bytes)
    if card or not facts.card:  # no README (or no front matter): the listing's card data stays
        facts.card = card
    _remote_code_tag([*(facts.hub_tags or []), *card_tags(facts.card)])
    facts.config = read_model_config(path, root, cfg.max_config_bytes)
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
    # every file that is opened later: a regular file inside the snapshot (no FIFO that blocks,
    # no device that never ends, no symlink to a file elsewhere on this machine)
    for n in sorted(names):
        if n.endswith((".safetensors", ".safetensors.index.json")) and not is_regular_inside(
            path / n, root
        ):
            raise RejectedModel(
                "unreadable file", f"{n} is not a regular file inside the model folder"
            )
        if n.endswith(".safetensors.index.json"):
            try:
                load_json_bytes(read_regular(path / n, cfg.max_index_bytes, root), n)
            except ValueError as e:
                raise RejectedModel("bad weights", str(e)) from None
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

    assert facts.config is not None and facts.path is not None
    # size before allocation: the model the config implies, built on the meta device, against
    # the values the files store and the limit (a hidden_size of 10^7 never reaches a real build)
    with _BUILD_LOCK:
        check_build_size(
            facts.config,
            stored_values=sum(t.numel for t in facts.tensors.values()),
            max_values=2 * cfg.max_params + 1_000_000,
        )
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
    # the tokenize stage's own plan (H16): a key layout the library renames on load (legacy
    # BERT gamma/beta, pre-v5 ViT names) is tokenized from the loaded module, canonical names
    from core.tokenize import plan_model_dir  # noqa: PLC0415

    with _BUILD_LOCK:
        try:
            plan = plan_model_dir(facts.path, "dense", cfg.token_size)
        except RejectedModel as e:
            if e.reason != "nothing to tokenize":
                raise
            raise RejectedModel(
                "untokenizable", "no trainable float tensor to cut into tokens"
            ) from None
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
    error: RejectedModel | None = None  # found while listing (a hostile card): recorded as is


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
    try:
        card = read_card(path)
    except RejectedModel as e:  # a hostile card: recorded with its reason, never parsed
        return Candidate(model_id, revision, path=path, error=e)
    library = None
    if query.library and not isinstance(card.get("library_name"), str):
        from core.architectures import library_of

        try:  # a card without library_name: the config says which library it is
            library = library_of(read_model_config(path))
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
            try:  # a plain snapshot name, never a path (bounded read, regular file only)
                rev = check_filename(read_regular(ref, 4096).decode("ascii").strip())
            except (RejectedModel, WeightAtlasError, UnicodeDecodeError):
                rev = None
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
_HUB_SORT = {"last_modified": "lastModified", "created_at": "createdAt"}
_DOWNLOAD_CHUNK = 1 << 20


class _Deadline:
    """An overall time budget; ``timeout()`` is what one blocking call may still take."""

    def __init__(self, seconds: float, per_call: float, what: str):
        self.end = time.monotonic() + seconds
        self.seconds, self.per_call, self.what = seconds, per_call, what

    def timeout(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise _Transient(f"{self.what}: no answer within the {self.seconds:g} s deadline")
        return max(0.05, min(self.per_call, left))


def _hub_endpoint(endpoint: str | None) -> str:
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    return endpoint.rstrip("/")


def _http_client(cfg: CollectConfig) -> Any:
    """An HTTP client with the per-request timeout and redirect limit of ``cfg``."""
    import httpx2

    # identity: no compressed body whose decoded size is unknown until it is decoded
    headers = {"user-agent": "weightatlas-collect", "accept-encoding": "identity"}
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # noqa: BLE001 (no token is fine)
        token = None
    if token:  # httpx drops it on a redirect to another origin
        headers["authorization"] = f"Bearer {token}"
    return httpx2.Client(
        timeout=httpx2.Timeout(cfg.http_timeout_s),
        follow_redirects=True,
        max_redirects=cfg.max_redirects,
        headers=headers,
    )


def _unavailable(resp: Any) -> bool:
    """A repo the Hub says does not exist, is gated or private: a permanent rejection."""
    code = resp.headers.get("x-error-code", "")
    return resp.status_code == 401 or code in (
        "RepoNotFound",
        "RevisionNotFound",
        "GatedRepo",
    )


def _check_encoding(resp: Any, what: str) -> None:
    enc = resp.headers.get("content-encoding", "identity").strip().lower()
    if enc not in ("", "identity"):
        raise _Transient(f"{what}: Content-Encoding {enc[:40]!r} although identity was asked")


def _read_body(resp: Any, max_bytes: int, deadline: _Deadline, what: str) -> bytes:
    """The whole body of a streamed response, at most ``max_bytes``, within the deadline."""
    _check_encoding(resp, what)
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RejectedModel("unreadable file", f"{what}: {int(declared):,} bytes over the limit")
    chunks, n = [], 0
    for chunk in resp.iter_bytes():
        n += len(chunk)
        if n > max_bytes:
            raise RejectedModel("unreadable file", f"{what}: more than {max_bytes:,} bytes")
        chunks.append(chunk)
        deadline.timeout()
    return b"".join(chunks)


def _get_json(
    client: Any, url: str, params: Any, max_bytes: int, deadline: _Deadline, what: str
) -> tuple[Any, Any]:
    """GET a JSON document with a byte limit and a depth limit; ``(obj, response)``.

    Raises:
        RejectedModel: ``unavailable`` (gated, private, not found).
        _Transient: other HTTP errors, network errors, the deadline, a body that is not JSON.
    """
    import httpx2

    try:
        with client.stream("GET", url, params=params, timeout=deadline.timeout()) as resp:
            if resp.status_code != 200:
                if _unavailable(resp):
                    raise RejectedModel("unavailable", f"{what}: HTTP {resp.status_code}")
                raise _Transient(f"{what}: HTTP {resp.status_code}")
            try:
                body = _read_body(resp, max_bytes, deadline, what)
            except RejectedModel as e:
                raise _Transient(e.detail) from None
    except httpx2.HTTPError as e:
        raise _Transient(f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    try:
        return load_json_bytes(body, what), resp
    except ValueError as e:
        raise _Transient(f"{str(e)[:200]}") from None


def _candidate_from_entry(entry: Any) -> Candidate:
    """A listing entry as a Candidate; only well-formed values are kept (checked again later).

    Raises:
        WeightAtlasError: the entry is not an object or its id is not a valid repo id.
    """
    if not isinstance(entry, dict):
        raise WeightAtlasError("a listing entry is not a JSON object")
    model_id = check_repo_id(entry.get("id", entry.get("modelId")))
    tags = entry.get("tags")
    siblings = entry.get("siblings")
    files = None
    if isinstance(siblings, list):
        files = [
            s["rfilename"]
            for s in siblings
            if isinstance(s, dict) and isinstance(s.get("rfilename"), str)
        ]
    st = entry.get("safetensors")
    total = st.get("total") if isinstance(st, dict) else None
    card = entry.get("cardData")
    sha = entry.get("sha")
    return Candidate(
        id=model_id,
        revision=sha if isinstance(sha, str) else None,
        tags=[t for t in tags if isinstance(t, str)] if isinstance(tags, list) else [],
        pipeline_tag=entry.get("pipeline_tag")
        if isinstance(entry.get("pipeline_tag"), str)
        else None,
        card=card if isinstance(card, dict) else {},
        remote_files=files,
        remote_params=total if type(total) is int and total >= 0 else None,
    )


def _next_link(resp: Any, base: str) -> str | None:
    """The ``Link: <...>; rel="next"`` URL, if it stays on the endpoint's scheme and host.

    Raises:
        WeightAtlasError: a next page elsewhere (a listing may not send the client to
            another host).
    """
    from urllib.parse import urlsplit

    link = resp.links.get("next") if hasattr(resp, "links") else None
    url = link.get("url") if isinstance(link, dict) else None
    if url is None:
        return None
    a, b = urlsplit(str(url)), urlsplit(base)
    if (a.scheme, a.netloc) != (b.scheme, b.netloc):
        raise WeightAtlasError(
            f"listing hub failed (the next page is on another host: {str(url)[:100]!r}); what "
            "was collected is kept"
        )
    return str(url)


def _wanted(name: str, patterns: tuple[str, ...]) -> bool:
    import fnmatch

    try:
        check_filename(name)
    except WeightAtlasError:
        return False  # subfolders, '..', backslashes, ...: never downloaded
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@register_source("hub")
class HubSource(Source):
    """The Hugging Face Hub (or ``HF_ENDPOINT`` / ``endpoint``): paged listing, bounded downloads.

    Both are done here with plain bounded HTTP rather than ``huggingface_hub``'s download path,
    so that no server-supplied value ever names a local path: the listing's ids are checked
    repo ids, commit shas must be 40 hex digits, only plain top-level file names matching
    ``allow_patterns`` are fetched, into ``hub/models--ORG--NAME/snapshots/SHA/NAME`` through a
    temporary file that is renamed only after its bytes match the size its safetensors header
    announces and the sha256 (or git blob sha1) its ETag names. Every request has a timeout,
    a redirect limit and a byte limit, and a candidate has an overall deadline.
    """

    def candidates(self) -> Iterator[Candidate]:
        cfg, q = self.cfg, self.query
        base = _hub_endpoint(self.endpoint)
        params: list[tuple[str, Any]] = [("filter", t) for t in q.tags]
        if q.library:
            params.append(("filter", q.library))
        if q.pipeline_tag:
            params.append(("pipeline_tag", q.pipeline_tag))
        if q.sort:
            params.append(("sort", _HUB_SORT.get(q.sort, q.sort)))
        params.append(("limit", min(q.limit, 1000) if q.limit else 1000))
        params += [("expand", e) for e in HUB_EXPAND]
        max_pages = cfg.max_listing_pages
        if q.limit is not None:
            max_pages = min(max_pages, q.limit + cfg.listing_page_margin)
        url: str | None = f"{base}/api/models"
        seen_urls: set[str] = set()
        seen_ids: set[str] = set()
        n = pages = stale = 0
        with _http_client(cfg) as client:
            while url is not None:
                if pages >= max_pages:
                    raise WeightAtlasError(
                        f"listing hub stopped after {pages} pages (limit {max_pages}: --limit "
                        f"plus {cfg.listing_page_margin}, or max_listing_pages); what was "
                        "collected is kept"
                    )
                deadline = _Deadline(cfg.candidate_timeout_s, cfg.http_timeout_s, "listing")
                try:
                    page, resp = _get_json(
                        client,
                        url,
                        params if pages == 0 else None,
                        cfg.max_listing_page_bytes,
                        deadline,
                        f"listing page {pages + 1}",
                    )
                except (_Transient, RejectedModel) as e:
                    raise WeightAtlasError(
                        f"listing hub failed ({e}); what was collected is kept, re-run to resume"
                    ) from None
                pages += 1
                if not isinstance(page, list):
                    raise WeightAtlasError(
                        f"listing hub failed (page {pages} is not a JSON list of models); what "
                        "was collected is kept, re-run to resume"
                    )
                nxt = _next_link(resp, base)
                if not page and nxt is not None:
                    raise WeightAtlasError(
                        f"listing hub failed (page {pages} is empty but links a next page); "
                        "what was collected is kept"
                    )
                seen_urls.add(url)
                if nxt in seen_urls:
                    raise WeightAtlasError(
                        f"listing hub failed (page {pages} links back to an earlier page); what "
                        "was collected is kept"
                    )
                fresh = 0
                for entry in page:
                    if q.limit is not None and n >= q.limit:
                        return
                    try:
                        cand = _candidate_from_entry(entry)
                    except WeightAtlasError as e:
                        tqdm.write(f"collect: skipped a listing entry: {e}")
                        continue
                    if cand.id in seen_ids:
                        continue
                    seen_ids.add(cand.id)
                    fresh += 1
                    n += 1
                    yield cand
                stale = 0 if fresh else stale + 1
                if stale >= 3 and nxt is not None:
                    raise WeightAtlasError(
                        f"listing hub failed ({stale} pages in a row without a new model, the "
                        f"last one page {pages}); what was collected is kept"
                    )
                url = nxt

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
                        f"only pickled weights ({', '.join(pickles)[:300]}), not downloaded",
                    )
                raise RejectedModel("no weights", "the repo has no safetensors file")
        if cand.remote_params is not None and cand.remote_params > self.cfg.max_params:
            raise RejectedModel(
                "too large",
                f"{cand.remote_params:,} parameters > max_params {self.cfg.max_params:,}",
            )

    def fetch(self, cand: Candidate, atlas: Atlas) -> Path:
        cfg = self.cfg
        model_id = check_repo_id(cand.id)
        base = _hub_endpoint(self.endpoint)
        deadline = _Deadline(cfg.candidate_timeout_s, cfg.http_timeout_s, model_id)
        if cand.revision is not None:  # validated before it is used anywhere, even in a URL
            try:
                check_commit(cand.revision)
            except WeightAtlasError as e:
                raise _Transient(f"{model_id}: {e}") from None
        with _http_client(cfg) as client:
            if cand.revision is None or cand.remote_files is None:
                info, _ = _get_json(
                    client,
                    f"{base}/api/models/{model_id}/revision/{cand.revision or 'main'}",
                    None,
                    cfg.max_listing_page_bytes,
                    deadline,
                    f"{model_id}: model info",
                )
                if not isinstance(info, dict):
                    raise _Transient(f"{model_id}: model info is not a JSON object")
                entry = _candidate_from_entry({**info, "id": model_id})
                cand.revision = cand.revision or entry.revision
                if cand.remote_files is None:
                    cand.remote_files = entry.remote_files or []
            try:
                sha = check_commit(cand.revision)
            except WeightAtlasError as e:
                raise _Transient(f"{model_id}: {e}") from None
            self.precheck(cand)
            names = sorted({n for n in cand.remote_files or [] if _wanted(n, cfg.allow_patterns)})
            repo_dir = atlas.hub_dir / f"models--{model_id.replace('/', '--')}"
            snap = repo_dir / "snapshots" / sha
            resolve_inside(atlas.hub_dir, snap)  # before anything is created
            snap.mkdir(parents=True, exist_ok=True)
            budget = _Budget(cfg)
            # small files first: the config and card can reject before the weights are fetched
            for name in sorted(names, key=lambda n: (n.endswith(".safetensors"), n)):
                dest = snap / name
                if os.path.islink(dest) or (os.path.lexists(dest) and not dest.is_file()):
                    dest.unlink()  # never trust what is there unless it is our own file
                if dest.is_file():
                    if name.endswith(".safetensors"):
                        budget.header(_header_of(dest, cfg), name)
                    continue
                url = f"{base}/{model_id}/resolve/{sha}/{_quote(name)}"
                try:
                    _download(client, url, dest, sha, budget, deadline, f"{model_id}: {name}")
                except RejectedModel as e:
                    if name != "README.md" or e.reason != "unreadable file":
                        raise
                    tqdm.write(f"collect: {e.detail}; the listing's card data is used instead")
            _write_ref(repo_dir, sha)
        return snap


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _write_ref(repo_dir: Path, sha: str) -> None:
    from core.atlas import atomic_write_bytes

    ref = repo_dir / "refs" / "main"
    if not (ref.is_file() and not ref.is_symlink() and ref.read_text().strip() == sha):
        if ref.is_symlink():
            ref.unlink()
        atomic_write_bytes(ref, sha.encode())


def _header_of(path: Path, cfg: CollectConfig) -> dict[str, TensorInfo]:
    try:
        return read_safetensors_header(path, cfg.max_header_bytes)
    except RejectedModel:
        return {}


class _Budget:
    """Float values announced by the safetensors headers downloaded so far (``max_params``)."""

    def __init__(self, cfg: CollectConfig):
        self.cfg = cfg
        self.floats = 0

    def header(self, tensors: dict[str, TensorInfo], name: str) -> None:
        self.floats += sum(t.numel for t in tensors.values() if t.dtype in ST_FLOAT)
        if self.floats > self.cfg.max_params:
            raise RejectedModel(
                "too large",
                f"{self.floats:,} float values announced by the headers (up to {name}) > "
                f"max_params {self.cfg.max_params:,}; not downloaded",
            )

    def small_limit(self, name: str) -> int:
        c = self.cfg
        if name == "README.md":
            return c.max_card_bytes
        if name.endswith(".index.json"):
            return c.max_index_bytes
        return c.max_config_bytes


def _parse_header_bytes(name: str, raw: bytes, cfg: CollectConfig) -> tuple[dict, int]:
    """Tensors of a safetensors header given as bytes, and the data size it announces."""
    with tempfile.TemporaryDirectory(prefix="wa-header-") as tmp:
        # the local parser checks everything but the file size: give it a file whose data
        # section is exactly as long as the header says (sparse, nothing written)
        try:
            header = load_json_bytes(raw, f"{name} header")
        except ValueError as e:
            raise RejectedModel("bad safetensors header", f"{name}: {e}") from None
        if not isinstance(header, dict):
            raise RejectedModel("bad safetensors header", f"{name}: header is not an object")
        ends = [
            e["data_offsets"][1]
            for k, e in header.items()
            if k != "__metadata__"
            and isinstance(e, dict)
            and isinstance(e.get("data_offsets"), list)
            and len(e["data_offsets"]) == 2
            and type(e["data_offsets"][1]) is int
        ]
        data_len = max(ends, default=0)
        if data_len < 0 or data_len > 8 * cfg.max_params + (1 << 30):
            raise RejectedModel(
                "too large", f"{name}: the header announces {data_len:,} data bytes; not downloaded"
            )
        f = Path(tmp) / "h.safetensors"
        with open(f, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            fh.truncate(8 + len(raw) + data_len)
        return read_safetensors_header(f, cfg.max_header_bytes), data_len


def _download(
    client: Any,
    url: str,
    dest: Path,
    sha: str,
    budget: _Budget,
    deadline: _Deadline,
    what: str,
) -> None:
    """Stream ``url`` into ``dest`` through a temporary file, bounded and verified.

    The size limit of a safetensors file comes from its own header (read first, checked
    against ``max_params`` before the data is fetched); other files have a fixed limit. The
    bytes must match the ETag when it names a sha256 (or a git blob sha1). Only then is the
    temporary file renamed onto ``dest``.

    Raises:
        RejectedModel: the file is bad (too large, bad header, more bytes than announced).
        _Transient: network errors, HTTP errors, the deadline, a short body, an ETag mismatch,
            a server answering for another commit.
    """
    import httpx2

    name = dest.name
    is_st = name.endswith(".safetensors")
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with client.stream("GET", url, timeout=deadline.timeout()) as resp:
                    if resp.status_code != 200:
                        if _unavailable(resp):
                            raise RejectedModel("unavailable", f"{what}: HTTP {resp.status_code}")
                        raise _Transient(f"{what}: HTTP {resp.status_code}")
                    _check_encoding(resp, what)
                    # the Hub's own answer is the first one (a CDN may serve the bytes after a
                    # redirect): its X-Repo-Commit and X-Linked-Etag, else the final ETag
                    first = (resp.history or [resp])[0].headers
                    commit = first.get("x-repo-commit")
                    if commit is not None and commit.strip().lower() != sha:
                        raise _Transient(f"{what}: the server answered for another commit")
                    etag = (
                        parse_etag(first.get("x-linked-etag"))
                        or parse_etag(first.get("etag"))
                        or parse_etag(resp.headers.get("etag"))
                    )
                    declared = resp.headers.get("content-length")
                    declared_n = int(declared) if declared and declared.isdigit() else None
                    # the limit: fixed for small files; for safetensors the size the header
                    # announces, known once its 8 + n header bytes are in
                    limit = None if is_st else budget.small_limit(name)
                    if limit is not None and declared_n is not None and declared_n > limit:
                        raise RejectedModel(
                            "unreadable file", f"{what}: {declared_n:,} bytes over the limit"
                        )
                    h256, n, head = hashlib.sha256(), 0, bytearray()
                    for chunk in resp.iter_bytes():  # as received: a drip meets the deadline
                        n += len(chunk)
                        if limit is None:
                            head += chunk
                            limit = _announced_size(name, head, budget, declared_n)
                        if limit is not None and n > limit:
                            if is_st:
                                raise RejectedModel(
                                    "inconsistent offsets",
                                    f"{name}: more bytes than its header announces ({limit:,})",
                                )
                            raise RejectedModel(
                                "unreadable file", f"{what}: more than {limit:,} bytes"
                            )
                        h256.update(chunk)
                        out.write(chunk)
                        deadline.timeout()
            except httpx2.HTTPError as e:
                raise _Transient(
                    f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                ) from None
            if declared_n is not None and n != declared_n:
                raise _Transient(f"{what}: got {n:,} of the {declared_n:,} bytes announced")
            if limit is None:
                raise RejectedModel("truncated safetensors", f"{name}: the header is cut short")
            if is_st and n < limit:
                raise RejectedModel(
                    "truncated safetensors", f"{name}: {n:,} bytes, the header announces {limit:,}"
                )
            out.flush()
            os.fsync(out.fileno())
        if etag is not None and len(etag) == 64 and h256.hexdigest() != etag:
            raise _Transient(f"{what}: the bytes do not match the sha256 the ETag names")
        if etag is not None and len(etag) == 40 and n <= 64 * 2**20:
            blob = hashlib.sha1(b"blob %d\0" % n)
            with open(tmp, "rb") as f:
                for chunk in iter(lambda: f.read(_DOWNLOAD_CHUNK), b""):
                    blob.update(chunk)
            if blob.hexdigest() != etag:
                raise _Transient(f"{what}: the bytes do not match the git blob sha1 the ETag names")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _announced_size(
    name: str, head: bytearray, budget: _Budget, declared_n: int | None
) -> int | None:
    """The file size a safetensors header announces once ``head`` holds it, else None.

    Raises:
        RejectedModel: a header over ``max_header_bytes``, a malformed header, more float
            values than ``max_params`` (before any data is fetched), or a Content-Length that
            disagrees with the header.
    """
    cfg = budget.cfg
    if len(head) < 8:
        return None
    hlen = int.from_bytes(head[:8], "little")
    if hlen > cfg.max_header_bytes:
        raise RejectedModel(
            "bad safetensors header", f"{name}: header length {hlen} over {cfg.max_header_bytes}"
        )
    if len(head) < 8 + hlen:
        return None
    tensors, data_len = _parse_header_bytes(name, bytes(head[8 : 8 + hlen]), cfg)
    budget.header(tensors, name)
    size = 8 + hlen + data_len
    if declared_n is not None and declared_n != size:
        raise RejectedModel(
            "truncated safetensors" if declared_n < size else "inconsistent offsets",
            f"{name}: the server sends {declared_n:,} bytes, the header announces {size:,}",
        )
    return size


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
        httpx2.HTTPError,  # transport errors, timeouts, redirect loops, short bodies
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
        if cand.error is not None:
            facts.path = cand.path
            raise cand.error
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
        if is_disk_full(e):
            raise DiskFullError(
                f"disk full while writing {atlas.root} (collecting {cand.id}); nothing lost, "
                "re-run to resume"
            ) from e
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
    settings: dict[str, Any] | None = None,
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
        settings: other ``CollectConfig`` fields (timeouts, byte limits, ...).

    Returns:
        All manifest rows of the atlas after this run (last row per id).
    """
    overrides: dict[str, Any] = dict(settings or {})
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
    retry: list[str] = []
    ex = ThreadPoolExecutor(cfg.workers, thread_name_prefix="collect")
    try:
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
                    retry.append(str(e)[:300])
                    tqdm.write(f"collect: {e}; will retry on the next run")
            append_jsonl(atlas.manifest_path, rows)
            for row in rows:
                stats[row["status"]] += 1
                if row["status"] == "accepted":
                    quota.have[row["split"]] += 1
            bar.update(len(rows))
            bar.set_postfix(accepted=stats["accepted"], rejected=stats["rejected"])
    except BaseException:
        # a failed listing, a full disk, Ctrl-C: what is in the manifest stays, the rest is
        # retried on the next run; queued candidates are not started
        ex.shutdown(wait=True, cancel_futures=True)
        bar.close()
        raise
    ex.shutdown(wait=True)
    bar.close()
    _record_source(atlas, src, cfg, stats, retry)
    return atlas.manifest()


def _record_source(
    atlas: Atlas,
    src: Source,
    cfg: CollectConfig,
    stats: Counter | None = None,
    retry: list[str] | None = None,
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
        if retry:  # why candidates were left for the next run (network, deadline, protocol)
            entry["last_run"]["retry_later"] = retry[:100]
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
    from core.cli import add_json_flag

    add_json_flag(p)
    add_overrides_arg(p, "CollectConfig (e.g. candidate_timeout_s=600)")


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
        settings=parse_overrides(args.overrides),
    )
    from core.cli import emit

    status = Counter(r.get("status") for r in rows)
    data = {
        "atlas": str(args.atlas),
        "candidates": len(rows),
        "accepted": status.get("accepted", 0),
        "rejected": status.get("rejected", 0),
        "splits": dict(Counter(r["split"] for r in rows if r.get("status") == "accepted")),
        "reasons": dict(reasons_table(rows)),
    }
    text = summary(rows) + f"\nmanifest: {Path(args.atlas) / 'manifest.jsonl'}"
    if data["accepted"]:
        text += f"\nnext: weightatlas tokenize {args.atlas}"
    emit(args, data, text)
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
