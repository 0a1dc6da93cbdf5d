"""The embeddings table of an atlas, read back; embedding of single model folders; neighbours."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.atlas import Atlas, EmbeddingTables
from core.backbone.views import UnitGroup, unit_groups
from core.collection.checks import check_model, inspect_model_dir
from core.collection.config import CollectConfig
from core.collection.sources import Candidate, Query, make_source
from core.collection.specs import parse_model_spec, resolve_arch
from core.config import build_config
from core.embeddings.encode import (
    EMBED_PRESETS,
    EmbedConfig,
    canonical_form,
    embeddings_dir,
    encode_summary,
    open_backbone,
)
from core.embeddings.reader import Embeddings, load_embeddings, nearest  # noqa: F401  (re-exported)
from core.errors import WeightAtlasError
from core.models.io import read_config
from core.models.registry import family_of
from core.safety import printable
from core.tokens.plan import tokenize_model_dir
from core.tokens.store import read_index


def check_model_dir(path: str | Path) -> None:
    """The collector's sanity checks (headers, size, dtypes, strict load, finite, tokenizable).

    Raises:
        RejectedModel: with the collector's reason.
    """

    cfg = CollectConfig()
    check_model(inspect_model_dir(path, cfg), cfg)


def _model_path(spec: str, atlas: str | Path) -> Path:
    """A local model directory, a repo in the local HF cache, or a Hub id fetched by the collector.

    Hub downloads go through the collector's source (safetensors and config files only) into
    ``ATLAS/hub/``; nothing pickled is ever fetched.
    """
    parsed = parse_model_spec(spec, want="weights")
    if parsed.kind != "hf":
        raise WeightAtlasError(
            f"{spec} is an architecture ({parsed}), not a model with weights: give a model "
            "folder, a repo id, or hf:<folder or repo id>"
        )
    spec = parsed.ref
    p = Path(spec).expanduser()
    if p.is_dir():
        return p

    try:
        source = resolve_arch(f"hf:{spec}").source
        if source is not None:
            return Path(source)
    except WeightAtlasError:
        pass

    a = Atlas.open(atlas)
    hub = make_source("hub", Query(), CollectConfig())
    try:
        return Path(hub.fetch(Candidate(id=spec, revision=None), a))
    except WeightAtlasError:
        raise
    except Exception as e:  # network, missing repo: one line for the CLI
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WeightAtlasError(
            f"cannot fetch {spec!r} from the Hub ({type(e).__name__}: {first})"
        ) from None


# loading tables, retrieval, single models


def token_scheme(a: Atlas) -> tuple[str, int]:
    """The atlas' token scheme and token size (from the token store index)."""
    if not a.tokens.exists():
        raise WeightAtlasError(f"{a.root} has no token store; run `weightatlas tokenize` first")
    idx = read_index(a.tokens_dir)
    if not isinstance(idx.get("scheme"), str) or not isinstance(idx.get("token_size"), int):
        raise WeightAtlasError(
            f"{a.root}'s token store holds no tokenized model (no accepted model was collected?); "
            "check `weightatlas collect`'s summary, then run `weightatlas tokenize` again"
        )
    return idx["scheme"], int(idx["token_size"])


def embedded_config(
    atlas: str | Path | Atlas, backbone_dir: str | Path | None = None
) -> EmbedConfig | None:
    """The encoding the atlas' embeddings were written with, as an ``EmbedConfig``: the
    recorded ``window``, ``halo``, ``pooling`` and ``canonical`` (``"mean"`` and False where the
    embeddings predate those fields); device and batch sizes stay this machine's defaults. None
    when the atlas has no embeddings for this backbone yet."""
    a = atlas if isinstance(atlas, Atlas) else Atlas.open(atlas)
    tables = EmbeddingTables(embeddings_dir(a, backbone_dir))
    if not tables.info_path.exists():
        return None
    rec = tables.info().get("config") or {}
    return EmbedConfig(
        window=rec.get("window"),
        halo=rec.get("halo"),
        pooling=str(rec.get("pooling", "mean")),
        canonical=bool(rec.get("canonical", False)),
    )


def embedded_pooling(
    atlas: str | Path | Atlas, backbone_dir: str | Path | None = None
) -> str | None:
    """The pooling the atlas' embeddings were written with (``EmbedConfig.pooling`` in
    ``embeddings/info.json``; ``"mean"`` for embeddings written before the field existed), or
    None when the atlas has no embeddings for this backbone yet."""
    rec = embedded_config(atlas, backbone_dir)
    return None if rec is None else rec.pooling


def embedded_canonical(
    atlas: str | Path | Atlas, backbone_dir: str | Path | None = None
) -> bool | None:
    """Whether the atlas' embeddings encoded models in canonical form (``EmbedConfig.canonical``;
    False for embeddings written before the field existed), or None when not embedded yet."""
    rec = embedded_config(atlas, backbone_dir)
    return None if rec is None else rec.canonical


def model_dir_groups(path: str | Path, layers: list[Any]) -> list[UnitGroup]:
    """The unit groups of a model folder's tokenized tensors (its family from ``config.json``)."""
    config = read_config(path)
    shapes = {e.name: tuple(e.shape) for e in layers}
    return unit_groups(family_of(config), shapes, config)


def embed_model_dir(
    path: str | Path,
    atlas: str | Path,
    *,
    cfg: EmbedConfig | None = None,
    check: bool = True,
    progress: Any = False,
) -> np.ndarray:
    """Embed one Hub-format model directory with the atlas' backbone; returns ``z (L,)``.

    The directory goes through the collector's sanity checks first (safetensors only, size
    limits, known architecture), so an untrusted download is treated exactly like a collected
    one. ``progress``: as :func:`embed_model_dir_full`'s.
    """
    return embed_model_dir_full(path, atlas, cfg=cfg, check=check, progress=progress)["z"].numpy()


def embed_model_dir_full(
    path: str | Path,
    atlas: str | Path,
    *,
    cfg: EmbedConfig | None = None,
    check: bool = True,
    backbone: Any = None,
    backbone_dir: str | Path | None = None,
    progress: Any = False,
) -> dict[str, Any]:
    """Like :func:`embed_model_dir`, also returning the per-layer embeddings and spreads.

    The encoder pass is streamed (:func:`encode_summary`, in ``cfg.dtype``: bf16 where the CPU
    runs it fast), so a bert-base-sized model costs its tokens and one batch of activations,
    not its token embeddings.

    ``progress``: True for a tqdm bar on stderr, or a tqdm-like object of the caller's (the
    app's page bar): ``set_description(text)`` while the weights are read and tokenized, then
    ``reset(total=windows)`` and ``update(n)`` per batch of windows.
    ``backbone``: the atlas' backbone if already loaded (``core.generation`` embeds each kept
    model); ``backbone_dir``: whose embeddings the vector is compared with. The model embedding
    is pooled as the atlas' embeddings were (:func:`embedded_config`), whatever ``cfg.pooling``
    says, so that it is comparable with them, and encoded in canonical form when they were;
    ``cfg.pooling`` and ``cfg.canonical`` apply to an atlas not embedded yet.
    """

    a = Atlas.open(atlas)
    path = Path(path)
    if not path.is_dir():
        raise WeightAtlasError(f"{path} is not a model directory")
    if check:
        check_model_dir(path)
    cfg = cfg or build_config(EmbedConfig, EMBED_PRESETS, "ci")
    scheme, size = token_scheme(a)
    name = printable(path.name)[:40]
    with contextlib.ExitStack() as stack:
        bar = progress
        if progress is True or progress is False:
            bar = stack.enter_context(tqdm(unit="window", disable=not progress))
        bar.set_description(f"read and tokenize {name}")
        tok = tokenize_model_dir(path, scheme, size, digest=False)
        if backbone is None:
            backbone = open_backbone(a, backbone_dir, cfg.device)
        rec = embedded_config(a, backbone_dir) or cfg  # the atlas' encoding, once embedded
        pooling = rec.pooling
        if rec.canonical:
            tok = canonical_form(tok, model_dir_groups(path, tok.layers), inplace=True)
        positions = torch.as_tensor(tok.positions, dtype=torch.long)
        bar.set_description(f"embed {name}")
        return encode_summary(
            backbone, tok.tokens, positions, cfg, pooling, progress=bar, valid=tok.valid
        )


def neighbours(
    atlas: str | Path,
    model: str | Path | np.ndarray | torch.Tensor,
    k: int = 5,
    embeddings: Embeddings | None = None,
) -> list[tuple[str, float]]:
    """The ``k`` collected models nearest to ``model`` in the atlas' neighbour metric
    (``Embeddings.metric``: ``EmbedConfig.neighbour_metric``, cosine by default and for
    embeddings written before the field existed).

    Args:
        atlas: an embedded atlas.
        model: a collected model id, an embedding vector ``(L,)``, or a model directory (it is
            checked and embedded first).
        k: how many neighbours.
        embeddings: the atlas' embeddings if already loaded (the app keeps them in memory).

    Returns:
        ``[(id, distance), ...]`` nearest first; a collected model is not its own
        neighbour.
    """
    emb = embeddings if embeddings is not None else load_embeddings(atlas)
    skip: str | None = None
    if isinstance(model, np.ndarray | torch.Tensor):
        v = np.asarray(model, dtype=np.float64).reshape(-1)
    elif isinstance(model, str) and model in emb.rows:
        v, skip = emb.vector(model).astype(np.float64), model
    elif Path(model).is_dir():
        v = embed_model_dir(model, atlas).astype(np.float64)
    else:
        raise WeightAtlasError(f"{model!r} is neither a collected model id nor a model directory")
    return nearest(emb, v, k, skip)


# ---------------------------------------------------------------------------------------------
