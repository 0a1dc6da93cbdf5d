"""Deep checks of a downloaded model folder before it enters an atlas (loads it strictly, meta first)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from core.collection.config import PICKLE_SUFFIXES, CollectConfig
from core.collection.facts import ModelFacts, card_tags
from core.dtypes import FLOAT_CODES
from core.errors import RejectedModel
from core.models.formats import (
    TensorInfo,
    read_card,
    read_model_config,
    read_safetensors_header,
    snapshot_root,
)
from core.models.io import load_model_dir, weight_files
from core.models.registry import check_build_size, family_of, library_of, model_type_of
from core.safety import is_regular_inside, load_json_bytes, read_regular
from core.tokens.plan import plan_model_dir

# ------------------------------------------------------------------------------- checks


def remote_code_tag(tags: list[str]) -> None:
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

    path = Path(path)
    root = snapshot_root(path)
    facts = facts or ModelFacts(id=path.name, revision=None, source="dir")
    facts.path = path
    card = read_card(path, root, cfg.max_card_bytes)
    if card or not facts.card:  # no README (or no front matter): the listing's card data stays
        facts.card = card
    remote_code_tag([*(facts.hub_tags or []), *card_tags(facts.card)])
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
    facts.params = sum(t.numel for t in tensors.values() if t.dtype in FLOAT_CODES)
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


def check_model(facts: ModelFacts, cfg: CollectConfig) -> int:
    """Deep checks after ``inspect_model_dir``: load (``core.models.io.load_model_dir``),
    finite weights, and the tokenize stage's plan.

    Returns:
        The number of dense tokens of size ``cfg.token_size``.

    Raises:
        RejectedModel: with the first failing check's reason.
    """
    import torch

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
