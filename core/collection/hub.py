"""The ``hub`` source: the Hugging Face Hub (or ``HF_ENDPOINT``), paged listing and bounded
downloads into ``ATLAS/hub/models--ORG--NAME/snapshots/SHA/``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from tqdm import tqdm

from core.atlas import Atlas, atomic_write_bytes
from core.collection.candidates import Candidate, Query, Source, register_source
from core.collection.checks import remote_code_tag
from core.collection.config import PICKLE_SUFFIXES
from core.collection.http import (
    Deadline,
    DownloadBudget,
    Transient,
    download,
    get_json,
    header_of,
    http_client,
)
from core.errors import RejectedModel, WeightAtlasError
from core.safety import (
    check_commit,
    check_filename,
    check_repo_id,
    printable,
    resolve_inside,
)

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


def _listing_params(q: Query) -> list[tuple[str, Any]]:
    """The first ``/api/models`` page's query parameters (later pages follow the Link header)."""
    params: list[tuple[str, Any]] = [("filter", t) for t in q.tags]
    if q.library:
        params.append(("filter", q.library))
    if q.pipeline_tag:
        params.append(("pipeline_tag", q.pipeline_tag))
    if q.sort:
        params.append(("sort", _HUB_SORT.get(q.sort, q.sort)))
    params.append(("limit", min(q.limit, 1000) if q.limit else 1000))
    params += [("expand", e) for e in HUB_EXPAND]
    return params


def _hub_endpoint(endpoint: str | None) -> str:
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    return endpoint.rstrip("/")


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
        params = _listing_params(q)
        max_pages = cfg.max_listing_pages
        if q.limit is not None:
            max_pages = min(max_pages, q.limit + cfg.listing_page_margin)
        url: str | None = f"{base}/api/models"
        seen_urls: set[str] = set()
        seen_ids: set[str] = set()
        n = pages = stale = 0
        with http_client(cfg) as client:
            while url is not None:
                if pages >= max_pages:
                    raise WeightAtlasError(
                        f"listing hub stopped after {pages} pages (limit {max_pages}: --limit "
                        f"plus {cfg.listing_page_margin}, or max_listing_pages); what was "
                        "collected is kept"
                    )
                deadline = Deadline(cfg.candidate_timeout_s, cfg.http_timeout_s, "listing")
                try:
                    page, resp = get_json(
                        client,
                        url,
                        params if pages == 0 else None,
                        cfg.max_listing_page_bytes,
                        deadline,
                        f"listing page {pages + 1}",
                    )
                except (Transient, RejectedModel) as e:
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
                        tqdm.write(printable(f"collect: skipped a listing entry: {e}"))
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
        remote_code_tag(cand.tags or [])
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
        deadline = Deadline(cfg.candidate_timeout_s, cfg.http_timeout_s, model_id)
        if cand.revision is not None:  # validated before it is used anywhere, even in a URL
            try:
                check_commit(cand.revision)
            except WeightAtlasError as e:
                raise Transient(f"{model_id}: {e}") from None
        with http_client(cfg) as client:
            if cand.revision is None or cand.remote_files is None:
                info, _ = get_json(
                    client,
                    f"{base}/api/models/{model_id}/revision/{cand.revision or 'main'}",
                    None,
                    cfg.max_listing_page_bytes,
                    deadline,
                    f"{model_id}: model info",
                )
                if not isinstance(info, dict):
                    raise Transient(f"{model_id}: model info is not a JSON object")
                entry = _candidate_from_entry({**info, "id": model_id})
                cand.revision = cand.revision or entry.revision
                if cand.remote_files is None:
                    cand.remote_files = entry.remote_files or []
            try:
                sha = check_commit(cand.revision)
            except WeightAtlasError as e:
                raise Transient(f"{model_id}: {e}") from None
            self.precheck(cand)
            names = sorted({n for n in cand.remote_files or [] if _wanted(n, cfg.allow_patterns)})
            repo_dir = atlas.hub_dir / f"models--{model_id.replace('/', '--')}"
            snap = repo_dir / "snapshots" / sha
            resolve_inside(atlas.hub_dir, snap)  # before anything is created
            snap.mkdir(parents=True, exist_ok=True)
            budget = DownloadBudget(cfg)
            # small files first: the config and card can reject before the weights are fetched
            for name in sorted(names, key=lambda n: (n.endswith(".safetensors"), n)):
                dest = snap / name
                if os.path.islink(dest) or (os.path.lexists(dest) and not dest.is_file()):
                    dest.unlink()  # never trust what is there unless it is our own file
                if dest.is_file():
                    if name.endswith(".safetensors"):
                        budget.header(header_of(dest, cfg), name)
                    continue
                url = f"{base}/{model_id}/resolve/{sha}/{_quote(name)}"
                try:
                    download(client, url, dest, sha, budget, deadline, f"{model_id}: {name}")
                except RejectedModel as e:
                    if name != "README.md" or e.reason != "unreadable file":
                        raise
                    tqdm.write(
                        printable(f"collect: {e.detail}; the listing's card data is used instead")
                    )
            _write_ref(repo_dir, sha)
        return snap


def _quote(name: str) -> str:

    return quote(name, safe="")


def _write_ref(repo_dir: Path, sha: str) -> None:

    ref = repo_dir / "refs" / "main"
    if not (ref.is_file() and not ref.is_symlink() and ref.read_text().strip() == sha):
        if ref.is_symlink():
            ref.unlink()
        atomic_write_bytes(ref, sha.encode())
