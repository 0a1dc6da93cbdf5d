"""Sources of models: the Hub (own bounded HTTP client), a local HF cache, a plain folder.

Each source lists candidates and fetches one at a time into the atlas; ``make_source`` is the
factory over the registered kinds."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from huggingface_hub import constants as hf_constants
from tqdm import tqdm

from core.atlas import Atlas, atomic_write_bytes
from core.collection.checks import remote_code_tag
from core.collection.config import PICKLE_SUFFIXES, CollectConfig
from core.collection.facts import card_tags
from core.config import to_dict
from core.dtypes import FLOAT_CODES
from core.errors import RejectedModel, WeightAtlasError
from core.models.formats import TensorInfo, read_card, read_model_config, read_safetensors_header
from core.models.registry import library_of
from core.safety import (
    check_commit,
    check_filename,
    check_repo_id,
    load_json_bytes,
    parse_etag,
    printable,
    read_regular,
    resolve_inside,
)


class _Transient(Exception):
    """A network failure: not the model's fault, so nothing is recorded and a re-run retries."""


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
        for repo in cache_repos(Path(self.spec)):
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


def cache_repos(root: Path) -> Iterator[tuple[str, str, Path]]:
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
        self.floats += sum(t.numel for t in tensors.values() if t.dtype in FLOAT_CODES)
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
    """``hub``; ``hf-cache``, this user's Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME``'s
    ``hub/``, as ``huggingface_hub`` resolves it); an HF cache folder (``models--*``, or a folder
    with ``hub/models--*``); or a plain dir of model folders."""
    if spec in SOURCES and spec not in ("hf-cache", "dir"):
        return SOURCES[spec](spec, query, cfg, endpoint)
    if spec == "hf-cache":
        spec = str(hf_constants.HF_HUB_CACHE)  # read now: tests and users may set it late
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise WeightAtlasError(f"--source {spec}: not 'hub' and not a directory")
    for candidate_root in (root, root / "hub"):
        if candidate_root.is_dir() and any(
            p.name.startswith("models--") for p in candidate_root.iterdir()
        ):
            return SOURCES["hf-cache"](str(candidate_root), query, cfg, endpoint)
    return SOURCES["dir"](str(root), query, cfg, endpoint)
