"""The bounded HTTP client of the hub source: timeouts, redirect and byte limits, a
per-candidate deadline, and downloads verified against their safetensors header and ETag.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from core.collection.config import CollectConfig
from core.dtypes import FLOAT_CODES
from core.errors import RejectedModel
from core.models.formats import TensorInfo, read_safetensors_header
from core.safety import (
    load_json_bytes,
    parse_etag,
)


class Transient(Exception):
    """A network failure: not the model's fault, so nothing is recorded and a re-run retries."""


DOWNLOAD_CHUNK = 1 << 20


class Deadline:
    """An overall time budget; ``timeout()`` is what one blocking call may still take."""

    def __init__(self, seconds: float, per_call: float, what: str):
        self.end = time.monotonic() + seconds
        self.seconds, self.per_call, self.what = seconds, per_call, what

    def timeout(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise Transient(f"{self.what}: no answer within the {self.seconds:g} s deadline")
        return max(0.05, min(self.per_call, left))


def http_client(cfg: CollectConfig) -> Any:
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


def unavailable(resp: Any) -> bool:
    """A repo the Hub says does not exist, is gated or private: a permanent rejection."""
    code = resp.headers.get("x-error-code", "")
    return resp.status_code == 401 or code in (
        "RepoNotFound",
        "RevisionNotFound",
        "GatedRepo",
    )


def check_encoding(resp: Any, what: str) -> None:
    """Refuse a compressed body (identity was asked: byte limits count what is sent)."""
    enc = resp.headers.get("content-encoding", "identity").strip().lower()
    if enc not in ("", "identity"):
        raise Transient(f"{what}: Content-Encoding {enc[:40]!r} although identity was asked")


def read_body(resp: Any, max_bytes: int, deadline: Deadline, what: str) -> bytes:
    """The whole body of a streamed response, at most ``max_bytes``, within the deadline."""
    check_encoding(resp, what)
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


def get_json(
    client: Any, url: str, params: Any, max_bytes: int, deadline: Deadline, what: str
) -> tuple[Any, Any]:
    """GET a JSON document with a byte limit and a depth limit; ``(obj, response)``.

    Raises:
        RejectedModel: ``unavailable`` (gated, private, not found).
        Transient: other HTTP errors, network errors, the deadline, a body that is not JSON.
    """
    import httpx2

    try:
        with client.stream("GET", url, params=params, timeout=deadline.timeout()) as resp:
            if resp.status_code != 200:
                if unavailable(resp):
                    raise RejectedModel("unavailable", f"{what}: HTTP {resp.status_code}")
                raise Transient(f"{what}: HTTP {resp.status_code}")
            try:
                body = read_body(resp, max_bytes, deadline, what)
            except RejectedModel as e:
                raise Transient(e.detail) from None
    except httpx2.HTTPError as e:
        raise Transient(f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None
    try:
        return load_json_bytes(body, what), resp
    except ValueError as e:
        raise Transient(f"{str(e)[:200]}") from None


def header_of(path: Path, cfg: CollectConfig) -> dict[str, TensorInfo]:
    """The tensors of an already downloaded safetensors file's header (``{}`` if unreadable)."""
    try:
        return read_safetensors_header(path, cfg.max_header_bytes)
    except RejectedModel:
        return {}


class DownloadBudget:
    """Float values announced by the safetensors headers downloaded so far (``max_params``)."""

    def __init__(self, cfg: CollectConfig):
        self.cfg = cfg
        self.floats = 0

    def header(self, tensors: dict[str, TensorInfo], name: str) -> None:
        """Count a header's float values; refuse once they exceed ``max_params``."""
        self.floats += sum(t.numel for t in tensors.values() if t.dtype in FLOAT_CODES)
        if self.floats > self.cfg.max_params:
            raise RejectedModel(
                "too large",
                f"{self.floats:,} float values announced by the headers (up to {name}) > "
                f"max_params {self.cfg.max_params:,}; not downloaded",
            )

    def small_limit(self, name: str) -> int:
        """The byte limit of a file that is not safetensors (card, shard index, config)."""
        c = self.cfg
        if name == "README.md":
            return c.max_card_bytes
        if name.endswith(".index.json"):
            return c.max_index_bytes
        return c.max_config_bytes


def parse_header_bytes(name: str, raw: bytes, cfg: CollectConfig) -> tuple[dict, int]:
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


def download(
    client: Any,
    url: str,
    dest: Path,
    sha: str,
    budget: DownloadBudget,
    deadline: Deadline,
    what: str,
) -> None:
    """Stream ``url`` into ``dest`` through a temporary file, bounded and verified.

    The size limit of a safetensors file comes from its own header (read first, checked
    against ``max_params`` before the data is fetched); other files have a fixed limit. The
    bytes must match the ETag when it names a sha256 (or a git blob sha1). Only then is the
    temporary file renamed onto ``dest``.

    Raises:
        RejectedModel: the file is bad (too large, bad header, more bytes than announced).
        Transient: network errors, HTTP errors, the deadline, a short body, an ETag mismatch,
            a server answering for another commit.
    """
    import httpx2

    name = dest.name
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with client.stream("GET", url, timeout=deadline.timeout()) as resp:
                    etag, declared_n = _answer_checks(resp, sha, what)
                    n, limit, h256 = _stream_body(
                        resp, out, name, budget, deadline, declared_n, what
                    )
            except httpx2.HTTPError as e:
                raise Transient(
                    f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                ) from None
            _check_length(name, n, limit, declared_n, what)
            out.flush()
            os.fsync(out.fileno())
        _check_etag(tmp, etag, h256.hexdigest(), n, what)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _answer_checks(resp: Any, sha: str, what: str) -> tuple[str | None, int | None]:
    """Refuse a non-200 answer, a compressed body or an answer for another commit; return the
    ETag the bytes must match (None: none usable) and the announced Content-Length."""
    if resp.status_code != 200:
        if unavailable(resp):
            raise RejectedModel("unavailable", f"{what}: HTTP {resp.status_code}")
        raise Transient(f"{what}: HTTP {resp.status_code}")
    check_encoding(resp, what)
    # the Hub's own answer is the first one (a CDN may serve the bytes after a
    # redirect): its X-Repo-Commit and X-Linked-Etag, else the final ETag
    first = (resp.history or [resp])[0].headers
    commit = first.get("x-repo-commit")
    if commit is not None and commit.strip().lower() != sha:
        raise Transient(f"{what}: the server answered for another commit")
    etag = (
        parse_etag(first.get("x-linked-etag"))
        or parse_etag(first.get("etag"))
        or parse_etag(resp.headers.get("etag"))
    )
    declared = resp.headers.get("content-length")
    return etag, int(declared) if declared and declared.isdigit() else None


def _stream_body(
    resp: Any,
    out: Any,
    name: str,
    budget: DownloadBudget,
    deadline: Deadline,
    declared_n: int | None,
    what: str,
) -> tuple[int, int | None, Any]:
    """Write the body to ``out`` as received (a drip meets the deadline), within the limit:
    fixed for small files; for safetensors the size the header announces, known once its
    8 + n header bytes are in. Returns ``(bytes written, the limit, their sha256)``."""
    is_st = name.endswith(".safetensors")
    limit = None if is_st else budget.small_limit(name)
    if limit is not None and declared_n is not None and declared_n > limit:
        raise RejectedModel("unreadable file", f"{what}: {declared_n:,} bytes over the limit")
    h256, n, head = hashlib.sha256(), 0, bytearray()
    for chunk in resp.iter_bytes():
        n += len(chunk)
        if limit is None:
            head += chunk
            limit = announced_size(name, head, budget, declared_n)
        if limit is not None and n > limit:
            if is_st:
                raise RejectedModel(
                    "inconsistent offsets",
                    f"{name}: more bytes than its header announces ({limit:,})",
                )
            raise RejectedModel("unreadable file", f"{what}: more than {limit:,} bytes")
        h256.update(chunk)
        out.write(chunk)
        deadline.timeout()
    return n, limit, h256


def _check_length(name: str, n: int, limit: int | None, declared_n: int | None, what: str) -> None:
    """The body is as long as the server announced, and a safetensors file as long as its
    header announces."""
    if declared_n is not None and n != declared_n:
        raise Transient(f"{what}: got {n:,} of the {declared_n:,} bytes announced")
    if limit is None:
        raise RejectedModel("truncated safetensors", f"{name}: the header is cut short")
    if name.endswith(".safetensors") and n < limit:
        raise RejectedModel(
            "truncated safetensors", f"{name}: {n:,} bytes, the header announces {limit:,}"
        )


def _check_etag(tmp: Path, etag: str | None, sha256: str, n: int, what: str) -> None:
    """The bytes match the sha256 the ETag names, or its git blob sha1 (files up to 64 MiB)."""
    if etag is not None and len(etag) == 64 and sha256 != etag:
        raise Transient(f"{what}: the bytes do not match the sha256 the ETag names")
    if etag is not None and len(etag) == 40 and n <= 64 * 2**20:
        blob = hashlib.sha1(b"blob %d\0" % n)
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(DOWNLOAD_CHUNK), b""):
                blob.update(chunk)
        if blob.hexdigest() != etag:
            raise Transient(f"{what}: the bytes do not match the git blob sha1 the ETag names")


def announced_size(
    name: str, head: bytearray, budget: DownloadBudget, declared_n: int | None
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
    tensors, data_len = parse_header_bytes(name, bytes(head[8 : 8 + hlen]), cfg)
    budget.header(tensors, name)
    size = 8 + hlen + data_len
    if declared_n is not None and declared_n != size:
        raise RejectedModel(
            "truncated safetensors" if declared_n < size else "inconsistent offsets",
            f"{name}: the server sends {declared_n:,} bytes, the header announces {size:,}",
        )
    return size
