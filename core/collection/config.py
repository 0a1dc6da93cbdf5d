"""The collect stage's configuration (``CollectConfig``) and presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.atlas import TokenTable
from core.config import register_presets
from core.models.formats import MAX_CARD_BYTES, MAX_CONFIG_BYTES

# ---------------------------------------------------------------------------------- config


@dataclass
class CollectConfig:
    """What to collect, and how candidates are fetched and checked.

    Attributes:
        source: ``hub``, an HF cache directory or a plain directory of model folders.
        tags: required tags (Hub ``filter``; for local sources, card tags/library/pipeline).
        pipeline_tag: required pipeline tag.
        library: required library (``transformers``, ``timm``, ...).
        sort: Hub listing order (``downloads``, ``likes``, ``last_modified``, ...).
        limit: at most this many candidates from the listing.
        n_train: stop once this many train models are accepted (with ``n_val``).
        n_val: stop once this many validation models are accepted.
        endpoint: Hub URL (default: ``HF_ENDPOINT`` or huggingface.co).
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

    source: str = "hub"
    tags: tuple[str, ...] = ()
    pipeline_tag: str | None = None
    library: str | None = None
    sort: str = "downloads"
    limit: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    endpoint: str | None = None
    max_params: int = 350_000_000
    split_fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    workers: int = 8
    check_workers: int = 2
    token_size: int = TokenTable.DEFAULT_TOKEN_SIZE
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
    max_config_bytes: int = MAX_CONFIG_BYTES
    max_card_bytes: int = MAX_CARD_BYTES
    max_index_bytes: int = 16 * 2**20


COLLECT_PRESETS: dict[str, dict[str, Any]] = {
    "ci": {"workers": 2, "check_workers": 1, "max_params": 5_000_000},
    "demo": {},
    # 001's Hub collection, the same for its HF-small and HF-large backbones
    "paper-small": {"max_params": 1_000_000_000, "split_fractions": (0.9, 0.1, 0.0)},
    "paper-large": {"max_params": 1_000_000_000, "split_fractions": (0.9, 0.1, 0.0)},
}
register_presets("collect", CollectConfig, COLLECT_PRESETS)

SPLITS = ("train", "val", "test")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
