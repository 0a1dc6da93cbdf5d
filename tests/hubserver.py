"""A local stand-in for the Hugging Face Hub, serving an HF-cache-layout directory (tests / dev only).

No maintained package serves the Hub's model search, so this standard-library
``ThreadingHTTPServer`` implements the endpoints ``huggingface_hub`` 2.x calls for listing and
downloading models, enough for ``HfApi.list_models``, ``model_info`` / ``repo_info``,
``list_repo_tree`` and ``snapshot_download`` to run their real code paths:

- ``GET /api/models``: ``filter`` (repeated, all must be tags), ``search``, ``author``,
  ``pipeline_tag``, ``sort`` + ``direction``, ``limit`` (page size), ``expand`` / ``full`` /
  ``cardData`` / ``config``, and cursor paging through a ``Link: <...>; rel="next"`` header;
- ``GET /api/models/{id}`` and ``/api/models/{id}/revision/{rev}``;
- ``GET /api/models/{id}/tree/{rev}[/{path}]``;
- ``HEAD`` / ``GET /{id}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag`` (sha256 for
  LFS-sized files, the git blob sha1 otherwise), ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS
  files, ``Content-Length``, ``Accept-Ranges`` and ``Range`` (206); 404s carry
  ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``. Repos named
  in ``fail_resolve`` answer 403 on downloads (a proxy denial: not retried by the client).

Repo tags are derived the way the Hub does from the card (tags, ``library_name``,
``pipeline_tag``, ``license:``, ``dataset:``, ``base_model:``) plus ``safetensors`` and
``custom_code`` (a config with ``auto_map``). Only loopback addresses are served, and the server
shuts itself down after ``lifetime_s``. Every request is recorded in ``server.requests``.

    with HubServer("ZOO_DIR", page_size=50) as hub:
        env = {"HF_ENDPOINT": hub.url, ...}      # set before huggingface_hub is imported

    .venv/bin/python tests/hubserver.py ZOO_DIR --port 8765 --lifetime 600
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5")
DEFAULT_FIELDS = (
    "id",
    "_id",
    "modelId",
    "likes",
    "downloads",
    "tags",
    "pipeline_tag",
    "library_name",
    "private",
    "createdAt",
)
HEX40 = re.compile(r"[0-9a-f]{40}")


@dataclass
class Repo:
    """One served model repo: a snapshot directory and what the Hub would say about it."""

    id: str
    sha: str
    root: Path
    files: dict[str, Path]
    card: dict[str, Any]
    config: dict[str, Any]
    downloads: int
    likes: int
    created: float
    hashes: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def tags(self) -> list[str]:
        c = self.card
        tags = [str(t) for t in _as_list(c.get("tags"))]
        for key, prefix in (("library_name", ""), ("pipeline_tag", ""), ("license", "license:")):
            if isinstance(c.get(key), str):
                tags.append(prefix + c[key])
        tags += [f"dataset:{d}" for d in _as_list(c.get("datasets"))]
        tags += [f"base_model:{b}" for b in _as_list(c.get("base_model"))]
        if any(f.endswith(".safetensors") for f in self.files):
            tags.append("safetensors")
        if "auto_map" in self.config:
            tags.append("custom_code")
        tags.append("region:us")
        return list(dict.fromkeys(tags))

    def etag_and_oid(self, name: str) -> tuple[str, str]:
        """``(etag, git oid)``: sha256 for LFS files (etag and lfs oid), git blob sha1 otherwise."""
        if name not in self.hashes:
            data = self.files[name].read_bytes()
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            lfs = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else None
            self.hashes[name] = (lfs or blob, blob)
        return self.hashes[name]

    def safetensors_info(self) -> dict[str, Any] | None:
        params: dict[str, int] = {}
        for name, path in self.files.items():
            if not name.endswith(".safetensors"):
                continue
            try:
                with open(path, "rb") as f:
                    n = int.from_bytes(f.read(8), "little")
                    header = json.loads(f.read(n))
                for k, e in header.items():
                    if k != "__metadata__":
                        count = 1
                        for d in e["shape"]:
                            count *= d
                        params[e["dtype"]] = params.get(e["dtype"], 0) + count
            except (OSError, ValueError, KeyError, TypeError):
                return None  # a broken file: the Hub shows no parameter count
        return {"parameters": params, "total": sum(params.values())} if params else None

    def info(self, fields: tuple[str, ...] | None) -> dict[str, Any]:
        iso = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.created))
        full = {
            "id": self.id,
            "_id": hashlib.md5(self.id.encode()).hexdigest()[:24],
            "modelId": self.id,
            "author": self.id.split("/")[0] if "/" in self.id else None,
            "sha": self.sha,
            "lastModified": iso,
            "createdAt": iso,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": self.downloads,
            "likes": self.likes,
            "library_name": self.card.get("library_name"),
            "pipeline_tag": self.card.get("pipeline_tag"),
            "tags": self.tags,
            "cardData": self.card or None,
            "config": {
                k: self.config[k]
                for k in ("architectures", "model_type", "auto_map")
                if k in self.config
            },
            "siblings": [{"rfilename": n} for n in sorted(self.files)],
            "safetensors": self.safetensors_info(),
            "spaces": [],
            "usedStorage": sum(p.stat().st_size for p in self.files.values()),
        }
        if fields is None:
            return full
        return {k: full[k] for k in ("id", "_id", *fields) if k in full}


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, list | tuple) else [v]


def _front_matter(readme: Path) -> dict[str, Any]:
    if not readme.is_file():
        return {}
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.read_text(errors="replace"), re.S)
    if not m:
        return {}
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def scan_repos(root: Path, downloads: dict[str, int] | None = None) -> dict[str, Repo]:
    """Index every ``models--org--name`` repo of an HF-cache-layout directory."""
    repos: dict[str, Repo] = {}
    for d in sorted(Path(root).glob("models--*")):
        snaps = d / "snapshots"
        ref = d / "refs" / "main"
        rev = ref.read_text().strip() if ref.is_file() else None
        if not rev or not (snaps / rev).is_dir():
            dirs = (
                sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime) if snaps.is_dir() else []
            )
            if not dirs:
                continue
            rev = dirs[-1].name
        snap = snaps / rev
        model_id = "/".join(d.name[len("models--") :].split("--", 1))
        sha = (
            rev if HEX40.fullmatch(rev) else hashlib.sha1(f"{model_id}@{rev}".encode()).hexdigest()
        )
        files = {p.relative_to(snap).as_posix(): p for p in sorted(snap.rglob("*")) if p.is_file()}
        config: dict[str, Any] = {}
        if "config.json" in files:
            try:
                loaded = json.loads(files["config.json"].read_text())
                config = loaded if isinstance(loaded, dict) else {}
            except (ValueError, UnicodeDecodeError):
                config = {}
        digest = int(hashlib.sha256(model_id.encode()).hexdigest()[:8], 16)
        repos[model_id] = Repo(
            id=model_id,
            sha=sha,
            root=snap,
            files=files,
            card=_front_matter(snap / "README.md"),
            config=config,
            downloads=(downloads or {}).get(model_id, digest % 100_000),
            likes=digest % 997,
            created=snap.stat().st_mtime,
        )
    return repos


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    # ------------------------------------------------------------------ plumbing

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        hdrs = {
            "Content-Length": str(len(body)),
            "Date": formatdate(usegmt=True),
            **(headers or {}),
        }
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(
            200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def _error(
        self,
        status: int,
        code: str,
        message: str,
        head: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps({"error": message}).encode()
        hdrs = {
            "Content-Type": "application/json",
            "X-Error-Code": code,
            "X-Error-Message": message,
            **(extra or {}),
        }
        self._send(status, body, hdrs, head=head)

    def _repo_and_rest(self, parts: list[str]) -> tuple[Repo | None, list[str]]:
        """Split path segments into a known repo id (``org/name`` or ``name``) and the rest."""
        repos = self.server.repos
        for n in (2, 1):
            if len(parts) >= n and "/".join(parts[:n]) in repos:
                return repos["/".join(parts[:n])], parts[n:]
        return None, parts

    def _revision(self, repo: Repo, rev: str) -> bool:
        return rev in (repo.sha, "main", repo.root.name)

    # ------------------------------------------------------------------ routes

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        self.server.record(self.command, url.path, self.headers.get("Range"))
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        query = parse_qs(url.query, keep_blank_values=True)
        try:
            if parts[:2] == ["api", "models"] and len(parts) == 2:
                return self._list_models(query)
            if parts[:2] == ["api", "models"]:
                repo, rest = self._repo_and_rest(parts[2:])
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found")
                if not rest:
                    return self._json(repo.info(None))
                if rest[0] == "revision" and len(rest) == 2:
                    if not self._revision(repo, rest[1]):
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
                    return self._json(repo.info(None))
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo, rest[1], "/".join(rest[2:]))
                return self._error(404, "EntryNotFound", "Unknown endpoint")
            if "resolve" in parts:
                i = parts.index("resolve")
                repo, rest = self._repo_and_rest(parts[:i])
                if repo is None or rest:
                    return self._error(404, "RepoNotFound", "Repository not found", head=head)
                if len(parts) < i + 3:
                    return self._error(404, "EntryNotFound", "No file given", head=head)
                return self._resolve(repo, parts[i + 1], "/".join(parts[i + 2 :]), head)
            return self._error(404, "RepoNotFound", "Not found", head=head)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _list_models(self, q: dict[str, list[str]]) -> None:
        repos = list(self.server.repos.values())
        for tag in q.get("filter", []):
            repos = [r for r in repos if tag in r.tags]
        if q.get("search"):
            s = q["search"][0].lower()
            repos = [r for r in repos if s in r.id.lower()]
        if q.get("author"):
            repos = [r for r in repos if r.id.split("/")[0] == q["author"][0]]
        if q.get("pipeline_tag"):
            repos = [r for r in repos if r.card.get("pipeline_tag") == q["pipeline_tag"][0]]
        sort = q.get("sort", [None])[0]
        keys = {
            "downloads": lambda r: r.downloads,
            "likes": lambda r: r.likes,
            "lastModified": lambda r: r.created,
            "createdAt": lambda r: r.created,
            "id": lambda r: r.id,
        }
        if sort is not None:
            if sort not in keys:
                return self._error(400, "BadRequest", f"unsupported sort {sort!r}")
            descending = q.get("direction", ["-1"])[0] != "1"
            repos.sort(key=lambda r: (keys[sort](r), r.id), reverse=descending)
        if "expand" in q:
            fields: tuple[str, ...] | None = tuple(q["expand"])
        elif q.get("full", ["false"])[0].lower() in ("true", "1"):
            fields = None
        else:
            extra = [
                k
                for k, flag in (("cardData", "cardData"), ("config", "config"))
                if q.get(flag, ["false"])[0].lower() in ("true", "1")
            ]
            fields = (*DEFAULT_FIELDS, *extra)
        try:
            start = int(q.get("cursor", ["0"])[0])
            limit = int(q["limit"][0]) if "limit" in q else self.server.page_size
        except ValueError:
            return self._error(400, "BadRequest", "bad cursor or limit")
        size = max(1, min(limit, self.server.page_size))
        page = repos[start : start + size]
        headers = {}
        if start + size < len(repos):
            nxt = {k: v for k, v in q.items() if k != "cursor"}
            nxt["cursor"] = [str(start + size)]
            headers["Link"] = (
                f'<{self.server.url}/api/models?{urlencode(nxt, doseq=True)}>; rel="next"'
            )
        self._json([r.info(fields) for r in page], headers)

    def _tree(self, repo: Repo, rev: str, prefix: str) -> None:
        if not self._revision(repo, rev):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        out = []
        for name, path in sorted(repo.files.items()):
            if prefix and not name.startswith(prefix.rstrip("/") + "/"):
                continue
            etag, oid = repo.etag_and_oid(name)
            size = path.stat().st_size
            entry: dict[str, Any] = {"type": "file", "oid": oid, "size": size, "path": name}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": etag, "size": size, "pointerSize": 134}
            out.append(entry)
        self._json(out)

    def _resolve(self, repo: Repo, rev: str, name: str, head: bool) -> None:
        commit = {"X-Repo-Commit": repo.sha}
        if repo.id in self.server.fail_resolve:
            return self._error(403, "Forbidden", "simulated outage (proxy denial)", head=head)
        if not self._revision(repo, rev):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
        if name not in repo.files:
            return self._error(
                404, "EntryNotFound", f"{name} does not exist", head=head, extra=commit
            )
        path = repo.files[name]
        size = path.stat().st_size
        etag, _oid = repo.etag_and_oid(name)
        headers = {
            **commit,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{quote(Path(name).name)}"',
        }
        if name.endswith(LFS_SUFFIXES):
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)}
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._send(
                    416, b"", {**headers, "Content-Range": f"bytes */{size}"}, head=head
                )
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                return self._send(
                    416, b"", {**headers, "Content-Range": f"bytes */{size}"}, head=head
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        for k, v in {
            **headers,
            "Content-Length": str(end - start + 1),
            "Date": formatdate(usegmt=True),
        }.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
                if self.server.throttle_s:
                    time.sleep(self.server.throttle_s)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, addr: tuple[str, int], repos: dict[str, Repo], page_size: int, throttle_s: float
    ):
        super().__init__(addr, _Handler)
        self.repos = repos
        self.page_size = page_size
        self.throttle_s = throttle_s
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[tuple[str, str]] = []
        self.fail_resolve: set[str] = set()
        self._lock = threading.Lock()
        host, port = self.server_address[:2]
        self.url = f"http://{host}:{port}"

    def record(self, method: str, path: str, range_: str | None) -> None:
        with self._lock:
            self.requests.append((method, path))
            if range_:
                self.ranges.append((path, range_))


class HubServer:
    """The stand-in Hub on ``127.0.0.1``: ``with HubServer(root) as hub: hub.url``.

    Args:
        root: a directory in HF cache layout (``models--org--name/snapshots/REV/...``).
        port: 0 for a free port.
        page_size: largest page of ``/api/models`` (small values exercise paging).
        downloads: download counts per id (default: a hash of the id).
        lifetime_s: the server stops by itself after this long.
        throttle_s: sleep after each 1 MiB chunk sent (to make downloads killable mid-way).
    """

    def __init__(
        self,
        root: str | Path,
        port: int = 0,
        page_size: int = 1000,
        downloads: dict[str, int] | None = None,
        lifetime_s: float = 900.0,
        throttle_s: float = 0.0,
        host: str = "127.0.0.1",
    ):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the stand-in Hub only serves loopback addresses")
        self.root = Path(root)
        self.httpd = _Server((host, port), scan_repos(self.root, downloads), page_size, throttle_s)
        self.url = self.httpd.url
        self.lifetime_s = lifetime_s
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True
        self._stopped = False

    @property
    def repos(self) -> dict[str, Repo]:
        return self.httpd.repos

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request so far."""
        return list(self.httpd.requests)

    @property
    def fail_resolve(self) -> set[str]:
        """Repo ids whose file downloads answer 403 (a simulated outage); mutable."""
        return self.httpd.fail_resolve

    @property
    def ranges(self) -> list[tuple[str, str]]:
        """``(path, Range header)`` of every ranged request so far."""
        return list(self.httpd.ranges)

    def start(self) -> HubServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", help="directory in HF cache layout")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument(
        "--lifetime", type=float, default=600.0, help="seconds before the server stops by itself"
    )
    args = p.parse_args()
    hub = HubServer(args.root, args.port, args.page_size, lifetime_s=args.lifetime).start()
    print(
        f"serving {len(hub.repos)} repos of {args.root} at {hub.url} for {args.lifetime:.0f} s",
        flush=True,
    )
    try:
        hub._thread.join()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
