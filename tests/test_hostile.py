"""Hostile Hubs and hostile repos (issue 12): nothing written outside the atlas, nothing hangs.

A scripted HTTP server on 127.0.0.1 plays a malicious Hub (or a mirror behind ``HF_ENDPOINT``):
commit shas, ETags, file names and ids that are paths, bodies that drip or never end, listings
that never stop or are not JSON, lying Content-Lengths and redirect loops. Local repos carry
billion-laughs cards, FIFOs, device and outside symlinks, deeply nested and oversized configs,
and configs that would allocate terabytes. After each case: no file exists outside the atlas
in the test's folder, the run ended within its stated bound (a thread join with a timeout; a
hang fails the test instead of blocking it), and the manifest or the one-line error says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from core.atlas import Atlas
from core.collection.collect import collect
from core.errors import RejectedModel, WeightAtlasError

SHA = "a" * 40
TAG = "hostile-test"
FAST = {"http_timeout_s": 2.0, "candidate_timeout_s": 3.0, "max_redirects": 3}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def good_files(tmp_path_factory) -> dict[str, bytes]:
    """A real, tiny model (the zoo's MLP) as Hub files: config, safetensors, card."""
    from core.collection.specs import resolve_arch
    from core.models.families import build_from_config
    from core.models.io import save_model_dir

    arch = resolve_arch("mlp")
    d = tmp_path_factory.mktemp("good") / "m"
    save_model_dir(build_from_config(arch.config, 0), d, arch.library, config=arch.config)
    files = {n: (d / n).read_bytes() for n in ("config.json", "model.safetensors")}
    files["README.md"] = f"---\nlicense: mit\ntags: [{TAG}]\n---\n# m\n".encode()
    return files


class Route:
    """What the hostile server answers on one path."""

    def __init__(self, fn: Callable[[BaseHTTPRequestHandler], None]):
        self.fn = fn


class HostileHub:
    """A scripted Hub on 127.0.0.1: ``routes[path] = Route(fn)``; every request is recorded."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.stop_event = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                outer.requests.append(self.path)
                route = outer.routes.get(path)
                try:
                    if route is None:
                        send(self, 404, b'{"error":"nope"}', {"X-Error-Code": "EntryNotFound"})
                    else:
                        route.fn(self)
                except (TimeoutError, BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hangs up on a hostile answer is expected here

        self.httpd = Server(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> HostileHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- building blocks

    def listing(self, entries: list[dict[str, Any]]) -> None:
        self.routes["/api/models"] = Route(lambda h: send_json(h, entries))

    def serve_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        sha: str = SHA,
        headers: Callable[[str, bytes], dict[str, str]] | None = None,
    ) -> None:
        for name, data in files.items():
            extra = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
            if headers is not None:
                extra = {**extra, **headers(name, data)}
            self.routes[f"/{repo_id}/resolve/{sha}/{name}"] = Route(
                lambda h, d=data, e=extra: send(h, 200, d, e)
            )


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
    h.send_response(status)
    hdrs = {"Content-Length": str(len(body)), **(headers or {})}
    for k, v in hdrs.items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def send_json(h: BaseHTTPRequestHandler, obj: Any, headers: dict | None = None) -> None:
    send(h, 200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


def entry(repo_id: str, files: list[str], sha: str | None = SHA, **extra: Any) -> dict[str, Any]:
    e = {
        "id": repo_id,
        "tags": [TAG],
        "siblings": [{"rfilename": f} for f in files],
        "cardData": {"license": "mit", "tags": [TAG]},
        **extra,
    }
    if sha is not None:
        e["sha"] = sha
    return e


def bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """Run ``fn`` in a daemon thread; fail (not hang) if it has not returned within ``seconds``."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised in the test thread)
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (bound exceeded)"
    out["seconds"] = time.monotonic() - t0
    if "error" in out:
        raise out["error"]
    return out["value"]


def files_outside(jail: Path, atlas: Path) -> list[str]:
    """Files under ``jail`` that are not under ``atlas`` (the test's own inputs excluded)."""
    out = []
    for dirpath, _dirs, names in os.walk(jail):
        d = Path(dirpath)
        if d == atlas or atlas in d.parents or "inputs" in d.relative_to(jail).parts[:1]:
            continue
        out += [str(d / n) for n in names]
    return out


@pytest.fixture
def jail(tmp_path: Path) -> tuple[Path, Path]:
    """``(jail, atlas)``: the atlas four levels deep, so ``../`` climbs stay inside the jail."""
    atlas = tmp_path / "j1" / "j2" / "j3" / "atlas"
    (tmp_path / "outside").mkdir()
    return tmp_path, atlas


def collect_hub(url: str, atlas: Path, bound: float = 30.0, **kw: Any) -> list[dict]:
    settings = {**FAST, **kw.pop("settings", {})}
    return bounded(
        lambda: collect(
            atlas,
            overrides={"source": "hub", "tags": [TAG], "endpoint": url, **settings, **kw},
            progress=False,
        ),
        bound,
    )


def last_run(atlas: Path) -> dict[str, Any]:
    return Atlas.open(atlas).info()["sources"][-1]["last_run"]


# ------------------------------------------------- 1. server-supplied values used as paths


def test_commit_shas_that_are_paths_are_refused(good_files, jail):
    root, atlas = jail
    evil_abs = str(root / "outside" / "evil")
    with HostileHub() as h:
        h.listing(
            [
                entry("h/rel", list(good_files), sha="../../../../../evil"),
                entry("h/abs", list(good_files), sha=evil_abs),
                entry("h/info", list(good_files), sha=None, siblings=None),
                entry("h/relnofiles", [], sha="../../../../evil", siblings=None),
            ]
        )
        h.routes["/api/models/h/info/revision/main"] = Route(
            lambda r: send_json(r, {"id": "h/info", "sha": "../../x/" + "b" * 40})
        )
        for rid, sha in (("h/rel", "../../../../../evil"), ("h/abs", evil_abs)):
            h.serve_repo(rid, good_files, sha=sha)
        rows = collect_hub(h.url, atlas)
    assert rows == []  # a protocol lie: nothing recorded, retried on the next run
    why = last_run(atlas)["retry_later"]
    assert len(why) == 4 and all("40 hex digits" in w for w in why), why
    assert files_outside(root, atlas) == []
    assert not any("/resolve/" in p for p in h.requests)
    # a bad sha is never even used in a URL
    assert [p for p in h.requests if "/revision/" in p] == ["/api/models/h/info/revision/main"]


def test_etags_that_are_paths_are_never_used_and_bytes_are_checked(good_files, jail):
    root, atlas = jail
    (root / "inputs").mkdir()
    decoy = root / "inputs" / "decoy.safetensors"  # an existing local file an ETag names
    decoy.write_bytes(b"not the model")
    other = bytearray(good_files["model.safetensors"])
    other[-1] ^= 0xFF  # same size, different bytes

    def lying(name: str, data: bytes) -> dict[str, str]:
        return {"ETag": f'"../../../../{name}.pth"', "X-Linked-Etag": str(root / "outside" / "x")}

    with HostileHub() as h:
        h.listing([entry("h/pathetag", list(good_files)), entry("h/otheretag", list(good_files))])
        h.serve_repo("h/pathetag", good_files, headers=lying)
        h.serve_repo(
            "h/otheretag",
            {**good_files, "model.safetensors": bytes(other)},
            # the ETag of the good file (as if an existing local blob), over different bytes
            headers=lambda n, d: {"ETag": f'"{hashlib.sha256(good_files[n]).hexdigest()}"'},
        )
        rows = collect_hub(h.url, atlas)
    by_id = {r["id"]: r for r in rows}
    # the path-ETag is not a digest: ignored, the file is fetched and checked like any other
    assert by_id["h/pathetag"]["status"] == "accepted"
    snap = atlas / by_id["h/pathetag"]["path"]
    assert snap == atlas / "hub" / "models--h--pathetag" / "snapshots" / SHA
    assert sorted(p.name for p in snap.iterdir()) == sorted(good_files)
    assert (snap / "model.safetensors").read_bytes() == good_files["model.safetensors"]
    # bytes that do not match their sha256 ETag are never accepted (retried next run)
    assert "h/otheretag" not in by_id
    assert any("do not match the sha256" in w for w in last_run(atlas)["retry_later"])
    assert not (
        atlas / "hub" / "models--h--otheretag" / "snapshots" / SHA / "model.safetensors"
    ).exists()
    assert files_outside(root, atlas) == []
    assert decoy.read_bytes() == b"not the model"


def test_file_names_and_ids_that_are_paths_are_never_fetched(good_files, jail):
    root, atlas = jail
    evil_names = [
        "../../../../evil.safetensors",
        str(root / "outside" / "abs.safetensors"),
        "..\\..\\evil.safetensors",
        "sub/model.safetensors",
        "C:evil.safetensors",
        "x\x00.safetensors",
    ]
    with HostileHub() as h:
        h.listing(
            [
                entry("h/names", [*good_files, *evil_names]),
                entry("../../evil", list(good_files)),
                entry("a/b/c", list(good_files)),
                entry("x--y/z", list(good_files)),
                entry("/abs", list(good_files)),
            ]
        )
        h.serve_repo("h/names", good_files)
        rows = collect_hub(h.url, atlas)
    assert [(r["id"], r["status"]) for r in rows] == [("h/names", "accepted")]
    fetched = [p for p in h.requests if "/resolve/" in p]
    assert sorted(p.rsplit("/", 1)[1] for p in fetched) == sorted(good_files)
    assert files_outside(root, atlas) == []
    assert sorted(os.listdir(atlas / "hub")) == ["models--h--names"]


# ------------------------------------------------------------------- 2. unbounded work


def _drip(data: bytes, every_s: float) -> Callable[[BaseHTTPRequestHandler], None]:
    def fn(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("X-Repo-Commit", SHA)
        h.end_headers()
        for i in range(len(data)):
            h.wfile.write(data[i : i + 1])
            h.wfile.flush()
            time.sleep(every_s)

    return fn


def _endless(prefix: bytes, limit_s: float = 20.0) -> Callable[[BaseHTTPRequestHandler], None]:
    def fn(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("X-Repo-Commit", SHA)
        h.end_headers()
        h.wfile.write(b"%x\r\n%s\r\n" % (len(prefix), prefix))
        block = b"\0" * 65536
        t_end = time.monotonic() + limit_s  # the server's own bound: the test never hangs
        while time.monotonic() < t_end:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))

    return fn


def test_slow_and_endless_bodies_are_bounded(good_files, jail):
    root, atlas = jail
    st = good_files["model.safetensors"]
    with HostileHub() as h:
        h.listing([entry(f"h/{n}", list(good_files)) for n in ("drip", "endless", "endcfg")])
        for rid in ("h/drip", "h/endless", "h/endcfg"):
            h.serve_repo(rid, good_files)
        h.routes[f"/h/drip/resolve/{SHA}/model.safetensors"] = Route(_drip(st, 0.5))
        h.routes[f"/h/endless/resolve/{SHA}/model.safetensors"] = Route(_endless(st))
        h.routes[f"/h/endcfg/resolve/{SHA}/config.json"] = Route(_endless(b"{"))
        t0 = time.monotonic()
        rows = collect_hub(h.url, atlas, bound=30, settings={"max_config_bytes": 65536})
        seconds = time.monotonic() - t0
    by_id = {r["id"]: r for r in rows}
    assert "h/drip" not in by_id  # the deadline: retried next run, not a rejection
    assert any("deadline" in w for w in last_run(atlas)["retry_later"])
    assert (by_id["h/endless"]["status"], by_id["h/endless"]["reason"]) == (
        "rejected",
        "inconsistent offsets",
    )
    assert "more bytes than its header announces" in by_id["h/endless"]["detail"]
    assert (
        by_id["h/endcfg"]["reason"],
        "more than 65,536 bytes" in by_id["h/endcfg"]["detail"],
    ) == (
        "unreadable file",
        True,
    )
    assert seconds < 30 and files_outside(root, atlas) == []
    assert sum(f.stat().st_size for f in atlas.rglob("*") if f.is_file()) < 10 * 2**20


def test_header_over_max_params_stops_before_the_data(good_files, jail):
    root, atlas = jail
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 4 * 10**10]}}
    ).encode()
    with HostileHub() as h:
        h.listing([entry("h/huge", list(good_files))])
        h.serve_repo("h/huge", good_files)
        # the header, then a body that would take 4e10 bytes: only the header is ever read
        h.routes[f"/h/huge/resolve/{SHA}/model.safetensors"] = Route(
            _endless(len(header).to_bytes(8, "little") + header)
        )
        rows = collect_hub(h.url, atlas, max_params=1_000_000)
    assert [(r["status"], r["reason"]) for r in rows] == [("rejected", "too large")]
    assert "not downloaded" in rows[0]["detail"] and files_outside(root, atlas) == []


def test_protocol_lies_are_retried_not_recorded(good_files, jail):
    root, atlas = jail
    st = good_files["model.safetensors"]

    def short(h: BaseHTTPRequestHandler) -> None:  # announces more than it sends
        h.send_response(200)
        h.send_header("Content-Length", str(len(st)))
        h.send_header("X-Repo-Commit", SHA)
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(st[: len(st) // 2])
        h.close_connection = True

    def loop(h: BaseHTTPRequestHandler) -> None:
        send(h, 302, b"", {"Location": h.path})

    def bomb(h: BaseHTTPRequestHandler) -> None:  # 1 GB of zeros in ~1 MB of gzip
        import gzip

        body = gzip.compress(b"\0" * (64 * 2**20), 9) * 16
        send(h, 200, body, {"Content-Encoding": "gzip", "X-Repo-Commit": SHA})

    with HostileHub() as h:
        h.listing([entry(f"h/{n}", list(good_files)) for n in ("short", "loop", "bomb")])
        for n in ("short", "loop", "bomb"):
            h.serve_repo(f"h/{n}", good_files)
        h.routes[f"/h/short/resolve/{SHA}/model.safetensors"] = Route(short)
        h.routes[f"/h/loop/resolve/{SHA}/model.safetensors"] = Route(loop)
        h.routes[f"/h/bomb/resolve/{SHA}/config.json"] = Route(bomb)
        assert collect_hub(h.url, atlas) == []
        why = " | ".join(last_run(atlas)["retry_later"])
        assert "TooManyRedirects" in why and ("RemoteProtocolError" in why or "bytes" in why), why
        assert "Content-Encoding 'gzip'" in why
        # the server behaves again: the next run collects all three
        for n in ("short", "loop", "bomb"):
            h.serve_repo(f"h/{n}", good_files)
        rows = collect_hub(h.url, atlas)
    assert sorted((r["id"], r["status"]) for r in rows) == [
        ("h/bomb", "accepted"),
        ("h/loop", "accepted"),
        ("h/short", "accepted"),
    ]
    assert files_outside(root, atlas) == []


def test_listings_that_never_end_or_are_not_json_are_one_line_errors(jail, capsys):
    from core.cli import main

    root, atlas = jail
    with HostileHub() as h:

        def pages(ids: Callable[[int], list[str]]) -> Route:
            def fn(r: BaseHTTPRequestHandler) -> None:  # every page links a next page
                n = int(r.path.partition("cursor=")[2] or 0)
                nxt = f'<{h.url}/api/models?cursor={n + 1}>; rel="next"'
                send_json(r, [{"id": i} for i in ids(n)], {"Link": nxt})

            return Route(fn)

        def n_pages() -> int:
            n = sum(p.startswith("/api/models?") for p in h.requests)
            h.requests.clear()
            return n

        # pages of entries that are no models (bad ids) or models already listed
        h.routes["/api/models"] = pages(lambda n: [f"../bad{n}"])
        with pytest.raises(WeightAtlasError, match="3 pages in a row without a new model"):
            collect_hub(h.url, atlas)
        assert n_pages() == 3
        h.routes["/api/models"] = pages(lambda n: ["h/same"])
        with pytest.raises(WeightAtlasError, match="3 pages in a row without a new model"):
            collect_hub(h.url, atlas)
        assert n_pages() == 4
        # a new model on every third page: --limit 10 stops at 10 + a margin of 10 pages
        h.routes["/api/models"] = pages(lambda n: [f"h/m{n}" if n % 3 == 0 else "h/m0"])
        with pytest.raises(WeightAtlasError, match="stopped after 20 pages"):
            collect_hub(h.url, atlas, limit=10)
        assert n_pages() == 20
        # a new model on every page, no --limit: max_listing_pages
        h.routes["/api/models"] = pages(lambda n: [f"h/new{n}"])
        with pytest.raises(WeightAtlasError, match="stopped after 5 pages"):
            collect_hub(h.url, atlas, settings={"max_listing_pages": 5})
        assert n_pages() == 5
        # a next page on another host
        h.routes["/api/models"] = Route(
            lambda r: send_json(
                r, [{"id": "h/x"}], {"Link": '<http://127.0.0.2:9/api/models?c=1>; rel="next"'}
            )
        )
        with pytest.raises(WeightAtlasError, match="another host"):
            collect_hub(h.url, atlas)

        h.routes["/api/models"] = Route(
            lambda r: send_json(r, [], {"Link": f'<{h.url}/api/models?cursor=1>; rel="next"'})
        )
        with pytest.raises(WeightAtlasError, match="empty but links a next page"):
            collect_hub(h.url, atlas)

        h.routes["/api/models"] = Route(lambda r: send(r, 200, b"<html>garbage</html>"))
        capsys.readouterr()
        rc = bounded(
            lambda: main(
                ["collect", str(atlas), "--source", "hub", "--endpoint", h.url, "--no-progress"]
            ),
            30,
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "listing hub failed" in err[0] and "not valid JSON" in err[0]
    assert files_outside(root, atlas) == []


# --------------------------------------------------------------- 3. cards and configs


def _local_repos(base: Path, good: dict[str, bytes]) -> dict[str, str]:
    """One model folder per hostile card/config; returns id -> expected reason."""
    laughs = "---\nlicense: mit\ntags: [x]\nweightatlas:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    prev = "a"
    for i in range(12):
        laughs += f"  b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        prev = f"b{i}"
    laughs += "---\n"
    deep = "[" * 30_000 + "]" * 30_000  # under the 64 KiB config limit of the test
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "laughs": ({"README.md": laughs.encode()}, "bad card"),
        "fifo-card": ({"README.md": "fifo"}, "bad card"),
        "zero-card": ({"README.md": Path("/dev/zero")}, "bad card"),
        "outside-card": ({"README.md": Path("/etc/hostname")}, "bad card"),
        "deep-config": (
            {"config.json": b'{"model_type": "bert", "x": ' + deep.encode() + b"}"},
            "bad config",
        ),
        "fifo-config": ({"config.json": "fifo"}, "bad config"),
        "zero-config": ({"config.json": Path("/dev/zero")}, "bad config"),
        "big-config": (
            {"config.json": good["config.json"][:-1] + b" " * 70_000 + b"}"},
            "bad config",
        ),
        "fifo-weights": ({"model.safetensors": "fifo"}, "unreadable file"),
        "deep-header": (
            {
                "model.safetensors": len(deep).to_bytes(8, "little") + deep.encode(),
            },
            "bad safetensors header",
        ),
    }
    for name, (files, _reason) in cases.items():
        d = base / name
        d.mkdir(parents=True)
        for fname, data in {**good, **files}.items():
            if data == "fifo":
                os.mkfifo(d / fname)
            elif isinstance(data, Path):
                (d / fname).symlink_to(data)
            else:
                (d / fname).write_bytes(data)
    return {name: reason for name, (_f, reason) in cases.items()}


def test_hostile_cards_and_configs_are_rejected_with_a_reason(good_files, jail):
    root, atlas = jail
    src = root / "inputs" / "models"
    expected = _local_repos(src, good_files)
    rows = bounded(
        lambda: collect(
            atlas,
            overrides={"source": str(src), "workers": 2, "max_config_bytes": 65536},
            progress=False,
        ),
        60,
    )
    got = {r["id"]: r["reason"] for r in rows}
    assert got == expected, {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    details = {r["id"]: r["detail"] for r in rows}
    assert "aliases" in details["laughs"] and "not a regular file" in details["fifo-card"]
    assert "outside" in details["outside-card"] and "nested" in details["deep-config"]
    assert files_outside(root, atlas) == []


def test_a_hostile_card_from_the_hub_is_a_rejection(good_files, jail):
    root, atlas = jail
    laughs = b"---\na: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n---\n"
    big = good_files["README.md"] + b"x" * 5000
    with HostileHub() as h:
        h.listing([entry("h/laughs", list(good_files)), entry("h/bigcard", list(good_files))])
        h.serve_repo("h/laughs", {**good_files, "README.md": laughs})
        h.serve_repo("h/bigcard", {**good_files, "README.md": big})
        rows = collect_hub(h.url, atlas, settings={"max_card_bytes": 4096})
    by_id = {r["id"]: r for r in rows}
    assert by_id["h/laughs"]["reason"] == "bad card" and "aliases" in by_id["h/laughs"]["detail"]
    # a card over the limit is not downloaded; the listing's card data stands in for it
    assert (by_id["h/bigcard"]["status"], by_id["h/bigcard"]["license"]) == ("accepted", "mit")
    assert TAG in by_id["h/bigcard"]["tags"] and files_outside(root, atlas) == []


# ------------------------------------------------------------ 4. size before allocation


@pytest.fixture(scope="module")
def bert_files(tmp_path_factory) -> dict[str, bytes]:
    import transformers

    d = tmp_path_factory.mktemp("bert") / "m"
    cfg = transformers.BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    transformers.BertModel(cfg).save_pretrained(d)
    return {n: (d / n).read_bytes() for n in ("config.json", "model.safetensors")}


def test_configs_that_would_allocate_too_much_are_refused_before_building(bert_files, tmp_path):
    from core.models.io import load_model_dir
    from core.models.registry import empty_model

    cfg = json.loads(bert_files["config.json"])
    cases = {
        "h8000": (
            {**cfg, "hidden_size": 8000, "num_attention_heads": 8},
            "weights do not match config",
        ),
        "h1e7": ({**cfg, "hidden_size": 10**7, "num_attention_heads": 1}, "too large"),
        "timm-65536": (
            {"architecture": "vit_base_patch16_224", "model_args": {"img_size": 65536}},
            "too large",
        ),
    }
    src = tmp_path / "inputs"
    for name, (config, _r) in cases.items():
        (src / name).mkdir(parents=True)
        (src / name / "config.json").write_text(json.dumps(config))
        (src / name / "model.safetensors").write_bytes(bert_files["model.safetensors"])
    rows = bounded(
        lambda: collect(
            tmp_path / "atlas", overrides={"source": str(src), "max_params": 10**9}, progress=False
        ),
        120,
    )
    got = {r["id"]: (r["reason"], r["detail"]) for r in rows}
    assert {k: v[0] for k, v in got.items()} == {k: r for k, (_c, r) in cases.items()}
    assert all("implies" in d for _r, d in got.values()), got  # the meta-device check said so
    # the same guard protects every other build: Embed a model, Generate (empty_model) and the
    # loader of later stages (load_model_dir)
    with pytest.raises(RejectedModel, match="too large"):
        bounded(lambda: empty_model(cases["h1e7"][0]), 60)
    with pytest.raises(RejectedModel, match="too large"):
        bounded(lambda: empty_model(cases["timm-65536"][0]), 60)
    with pytest.raises(RejectedModel, match="weights do not match config"):
        bounded(lambda: load_model_dir(src / "h8000"), 60)
    from core.collection.specs import resolve_arch

    with pytest.raises(RejectedModel, match="weights do not match config"):
        bounded(lambda: resolve_arch(f"hf:{src / 'h8000'}"), 60)
    assert torch.get_default_device().type == "cpu"


_LAYERS_SCRIPT = r"""
import json, resource, sys, time
from pathlib import Path
from core.cli import main
from core.models.registry import implied_size

tmp, demo = Path(sys.argv[1]), sys.argv[2]
out = {}
t = time.perf_counter()
assert main(["collect", str(tmp / "a-normal"), "--source", str(tmp / "normal"), "--no-progress"]) == 0
out["normal_s"] = time.perf_counter() - t
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for layers in (10**12, 100_000):
    src = tmp / f"L{layers}"
    runs = {
        "collect": ["collect", str(tmp / f"a{layers}"), "--source", str(src), "--no-progress"],
        "embed": ["embed", demo, "--model", str(src / "m")],
        "sample": ["sample", demo, "--arch", f"hf:{src / 'm'}"],
    }
    for stage, args in runs.items():
        t = time.perf_counter()
        rc = main(args)
        out[f"{stage}-{layers}"] = {"rc": rc, "seconds": time.perf_counter() - t}
rows = [json.loads(x) for x in (tmp / "a100000" / "manifest.jsonl").read_text().splitlines()]
rows += [json.loads(x) for x in (tmp / f"a{10**12}" / "manifest.jsonl").read_text().splitlines()]
out["reasons"] = sorted({r["reason"] for r in rows})
out["extra_rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps(out))
"""


def test_layer_counts_are_sized_from_the_config_not_built(bert_files, tmp_path):
    """A config of a few hundred bytes asking for 10^12 (or 100,000) layers beside tiny valid
    weights is refused in collect, ``embed --model`` and ``sample --arch hf:DIR`` within 5 s each
    and with at most 100 MB more peak memory than collecting the same tiny model as it is (one
    fresh process; before issue 27 each built every layer object on the meta device: 180 s and
    5.8 GB at 100,000 layers, killed past 5.8 GB at 10^12)."""
    import shutil
    import subprocess
    import sys

    cfg = json.loads(bert_files["config.json"])
    for name, layers in (("normal", 1), ("L1000000000000", 10**12), ("L100000", 100_000)):
        d = tmp_path / name / "m"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": layers}))
        (d / "model.safetensors").write_bytes(bert_files["model.safetensors"])
    demo = tmp_path / "demo"
    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "assets" / "demo", demo, ignore=shutil.ignore_patterns("generated"))
    r = subprocess.run(
        [sys.executable, "-c", _LAYERS_SCRIPT, str(tmp_path), str(demo)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for layers in (10**12, 100_000):
        assert out[f"collect-{layers}"]["rc"] == 0, out  # collect records the rejection
        for stage in ("embed", "sample"):
            assert out[f"{stage}-{layers}"]["rc"] == 2, out  # one-line error
        for stage in ("collect", "embed", "sample"):
            assert out[f"{stage}-{layers}"]["seconds"] < 5, out
    assert out["reasons"] == ["too large", "weights do not match config"], out
    assert out["extra_rss_mb"] <= 100, out
    for line in r.stderr.splitlines():
        if line.startswith("weightatlas "):
            assert "implies" in line, line
    implied = [ln for ln in r.stderr.splitlines() if "implies 600,000,000,000,520 values" in ln]
    assert implied, r.stderr[-2000:]  # the 10^12-layer size is the exact extrapolation


def test_unrecognised_layer_counts_stop_at_the_module_limit(bert_files, monkeypatch):
    """A count the size check does not recognise is still bounded: the meta build stops after
    ``MAX_SIZING_MODULES`` modules (here a BERT stack, with the extrapolation switched off)."""
    from core.models import registry

    monkeypatch.setattr(registry, "SIZE_BUILD_LAYERS", 10**9)
    monkeypatch.setattr(registry, "MAX_BUILD_LAYERS", 10**9)
    monkeypatch.setattr(registry, "MAX_SIZING_MODULES", 2_000)
    cfg = {**json.loads(bert_files["config.json"]), "num_hidden_layers": 5_000}
    t = time.perf_counter()
    with pytest.raises(RejectedModel, match="more than 2,000 modules"):
        registry.implied_size(cfg)
    assert time.perf_counter() - t < 30
    monkeypatch.undo()
    # and the extrapolation is exact for a stack of blocks: 70 layers built and extrapolated
    cfg70 = {**cfg, "num_hidden_layers": 70}
    sized = registry.implied_size(cfg70)
    registry._IMPLIED_SIZES.clear()
    monkeypatch.setattr(registry, "SIZE_BUILD_LAYERS", 10**9)
    assert registry.implied_size(cfg70) == sized


# ----------------------------------------------------------------------------- 5. disk full


@pytest.fixture
def small_disk(tmp_path):
    """``make(size) -> mount point``: a size-limited tmpfs (root only; skipped elsewhere)."""
    import shutil
    import subprocess

    mounts: list[Path] = []
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a size-limited tmpfs needs root")

    def make(size: str) -> Path:
        mnt = tmp_path / f"disk{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)])
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounts.append(mnt)
        return mnt

    yield make
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)])


def _cli(args: list[str], timeout: float = 300) -> Any:
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _grow(mnt: Path, size: str) -> None:
    import subprocess

    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> Path:
    from core.collection.specs import resolve_arch
    from core.models.families import build_from_config
    from core.models.io import save_model_dir

    base = tmp_path_factory.mktemp("dfmodels")
    for i in range(8):
        arch = resolve_arch("mlp", width=(16, 32)[i % 2])
        save_model_dir(
            build_from_config(arch.config, i), base / f"m{i}", arch.library, config=arch.config
        )
    return base


def _full_message(r: Any, stage: str) -> None:
    """Exit 2 and the one-line message (after a progress bar's carriage return), no traceback."""
    import re

    assert r.returncode == 2, r.stderr[-2000:]
    pattern = rf"weightatlas {stage}: disk full while writing \S+; nothing lost, re-run to resume$"
    assert re.search(pattern, r.stderr, re.M), r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_disk_full_collect_and_tokenize_say_so_and_resume(small_models, small_disk, capsys):
    from types import SimpleNamespace

    from core.cli import main

    mnt = small_disk("8k")
    atlas = mnt / "atlas"
    args = ["collect", str(atlas), "--source", str(small_models), "--no-progress"]
    capsys.readouterr()
    rc = main(args)  # in-process: collect cannot SIGBUS
    _full_message(SimpleNamespace(returncode=rc, stderr=capsys.readouterr().err), "collect")
    _grow(mnt, "64k")
    assert main(args) == 0
    assert len(Atlas.open(atlas).accepted()) == 8
    # tokenize in a subprocess (a SIGBUS would kill the test runner): the shard is reserved with
    # posix_fallocate, so a full disk is ENOSPC, not SIGBUS
    vfs = os.statvfs(mnt)
    _grow(mnt, f"{(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize // 1024 + 8}k")
    r = _cli(["tokenize", str(atlas)])
    _full_message(r, "tokenize")
    assert not list((atlas / "tokens").rglob("*.tmp*"))  # no partial shard left behind
    _grow(mnt, "4m")
    r = _cli(["tokenize", str(atlas)])
    assert r.returncode == 0, r.stderr[-2000:]
    from core.tokens.store import read_index

    index = read_index(atlas / "tokens")
    assert (len(index["models"]), index["failed"]) == (8, {})


@pytest.mark.slow  # a short training run and an embedding (~40 s on 2 shared cores)
def test_disk_full_train_and_embed_say_so_and_resume(small_models, small_disk, tmp_path):
    import shutil

    src = tmp_path / "atlas"
    assert (
        _cli(["collect", str(src), "--source", str(small_models), "--no-progress"]).returncode == 0
    )
    assert _cli(["tokenize", str(src)]).returncode == 0
    used = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    mnt = small_disk(f"{used // 1024 + 256}k")
    atlas = mnt / "atlas"
    shutil.copytree(src, atlas)
    r = _cli(["train", str(atlas), "--preset", "ci", "--set", "steps=20"])
    _full_message(r, "train")
    _grow(mnt, "64m")
    r = _cli(["train", str(atlas), "--preset", "ci", "--set", "steps=20"])
    assert r.returncode == 0 and (atlas / "backbone" / "model.safetensors").is_file(), r.stderr[
        -2000:
    ]
    vfs = os.statvfs(mnt)
    _grow(mnt, f"{(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize // 1024 + 8}k")
    r = _cli(["embed", str(atlas)])
    _full_message(r, "embed")
    _grow(mnt, "64m")
    r = _cli(["embed", str(atlas)])
    assert r.returncode == 0, r.stderr[-2000:]


def test_later_stages_read_configs_and_cards_with_the_same_limits(good_files, tmp_path):
    """``load_model_dir`` (tokenize, embed, Embed a model) and ``resolve_arch('hf:...')``
    (Generate) go through the same bounded readers as collect."""
    from core.collection.specs import resolve_arch
    from core.models.io import load_model_dir

    src = tmp_path / "inputs"
    expected = _local_repos(src, good_files)
    for name in ("deep-config", "fifo-config", "zero-config"):
        with pytest.raises(RejectedModel) as e:
            bounded(lambda n=name: load_model_dir(src / n), 30)
        assert e.value.reason == expected[name]
    # a billion-laughs card does not stop Generate from sizing the architecture: no task
    arch = bounded(lambda: resolve_arch(f"hf:{src / 'laughs'}"), 30)
    assert arch.task is None and arch.library == "weightatlas"


# ------------------------------------------------------------- 6. the atlas as untrusted input


def test_a_symlinked_generated_dir_is_refused(tmp_path):
    from core.atlas import AtlasError

    outside = tmp_path / "outside"
    outside.mkdir()
    atlas = Atlas.create(tmp_path / "atlas")
    (atlas.root / "generated").mkdir()
    assert atlas.generated_dir == atlas.root / "generated"  # a plain folder is fine
    (atlas.root / "generated").rmdir()
    (atlas.root / "generated").symlink_to(outside)
    with pytest.raises(AtlasError, match="is a symlink"):
        _ = atlas.generated_dir


@pytest.mark.slow  # samples from the embedded demo atlas (~10 s)
def test_sample_refuses_to_write_through_a_symlinked_generated_dir(tmp_path):
    import shutil

    demo = Path(__file__).resolve().parents[1] / "assets" / "demo"
    atlas, outside = tmp_path / "atlas", tmp_path / "outside"
    shutil.copytree(demo, atlas, ignore=shutil.ignore_patterns("generated"))
    outside.mkdir()
    (atlas / "generated").symlink_to(outside)
    r = _cli(["sample", str(atlas), "--arch", "cnn"])
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("weightatlas sample: error:") and "is a symlink" in last
    assert list(outside.iterdir()) == []


EVIL_MD = "![x](http://127.0.0.1:9/pixel.png)"


def _unescaped_links(text: str) -> list[str]:
    """Markdown image/link openers ``](`` not escaped by a backslash."""
    import re

    return re.findall(r"(?<!\\)\]\(", text)


def test_app_shows_untrusted_strings_as_text(tmp_path):
    """Markdown in a model id, license, base_model, tags and family renders as text: nothing on
    the Atlas page would make the browser fetch the id author's URL."""
    pytest.importorskip("streamlit")
    import sys

    from streamlit.testing.v1 import AppTest

    from explorer.bench import synthetic_atlas

    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    root = synthetic_atlas(tmp_path / "atlas", n=40, seed=1)
    victim = "synthetic/cnn-wine-r0-e0"
    evil_id = f"evil/{EVIL_MD}"
    for f in (root / "manifest.jsonl", root / "embeddings" / "models.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        for r in rows:
            if r["id"] == victim:
                r["id"] = evil_id
                if f.name == "manifest.jsonl":
                    r.update(license=EVIL_MD, base_model=EVIL_MD, tags=[EVIL_MD, "cnn"])
                    r["pipeline_tag"] = f"[click](javascript:alert(1)) {EVIL_MD}"
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    maps = root / "embeddings" / "maps.json"
    maps.write_text(maps.read_text().replace(victim, evil_id))

    at = AppTest.from_file(str(repo / "explorer" / "app.py"), default_timeout=60)
    at.session_state["atlas_path"] = str(root)
    at.run()
    assert not at.exception
    at.text_input(key="map_search").input("evil/").run()
    assert not at.exception
    assert at.selectbox(key="detail_id").value == evil_id
    rendered = [
        e.value
        for kind in ("markdown", "caption", "title", "header", "subheader", "success", "info")
        for e in getattr(at, kind)
    ]
    rendered += [e.value for e in at.warning] + [e.value for e in at.error]
    assert any("evil" in str(v) for v in rendered)  # the panel is there
    bad = [v for v in rendered if _unescaped_links(str(v))]
    assert bad == [], bad


def test_app_on_an_empty_atlas_path_says_so(tmp_path):
    pytest.importorskip("streamlit")
    import sys

    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    for value in ("", "   "):
        at = AppTest.from_file(str(repo / "explorer" / "app.py"), default_timeout=60)
        at.session_state["atlas_path"] = value
        at.run()
        assert not at.exception
        errors = " ".join(str(e.value) for e in at.error)
        assert "no atlas directory given" in errors and "None" not in errors, errors


def test_tokenize_under_a_file_size_limit_is_one_line(small_models, tmp_path):
    """Runs without root (no tmpfs): under RLIMIT_FSIZE the shard cannot grow (EFBIG), and the
    stage says so in one line. (The SIGBUS regression itself needs a full filesystem: the
    tmpfs test above.)"""
    import resource
    import signal
    import subprocess
    import sys

    atlas = tmp_path / "atlas"
    collect(atlas, overrides={"source": str(small_models)}, progress=False)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    r = subprocess.run(
        [sys.executable, "-m", "core.cli", "tokenize", str(atlas)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=limit,
    )
    _full_message(r, "tokenize")
    assert not list((atlas / "tokens").rglob("*.tmp*"))


def test_cdn_redirect_keeps_the_hubs_own_etag(good_files, jail):
    """As on huggingface.co: the resolve answer is a redirect carrying ``X-Linked-Etag`` and
    ``X-Repo-Commit``; the CDN serves the bytes with an opaque ETag of its own."""
    root, atlas = jail
    st = good_files["model.safetensors"]
    bad = bytearray(st)
    bad[-1] ^= 0xFF

    def resolve(linked: str) -> Route:
        return Route(
            lambda h: send(
                h,
                302,
                b"",
                {
                    "Location": f"/cdn/{linked[:8]}",
                    "X-Repo-Commit": SHA,
                    "X-Linked-Etag": f'"{linked}"',
                    "ETag": '"not-a-digest"',
                },
            )
        )

    with HostileHub() as h:
        h.listing([entry("h/cdn", list(good_files)), entry("h/cdnbad", list(good_files))])
        h.serve_repo("h/cdn", good_files)
        h.serve_repo("h/cdnbad", good_files)
        good_sha = hashlib.sha256(st).hexdigest()
        h.routes[f"/h/cdn/resolve/{SHA}/model.safetensors"] = resolve(good_sha)
        h.routes[f"/h/cdnbad/resolve/{SHA}/model.safetensors"] = resolve(good_sha[::-1])
        h.routes[f"/cdn/{good_sha[:8]}"] = Route(lambda r: send(r, 200, st, {"ETag": '"cdn-1"'}))
        h.routes[f"/cdn/{good_sha[::-1][:8]}"] = Route(
            lambda r: send(r, 200, bytes(bad), {"ETag": '"cdn-2"'})
        )
        rows = collect_hub(h.url, atlas)
    assert [(r["id"], r["status"]) for r in rows] == [("h/cdn", "accepted")]
    assert any("do not match the sha256" in w for w in last_run(atlas)["retry_later"])
    assert files_outside(root, atlas) == []


def test_terminal_output_carries_no_control_characters(good_files, tmp_path, capsys):
    """Issue 27: user and model strings (an architecture spec, model folder names) reach the
    terminal escaped, in progress bars, summaries, notes and error lines alike."""
    import shutil

    from core.cli import main

    demo = Path(__file__).resolve().parents[1] / "assets" / "demo"
    atlas = tmp_path / "atlas"
    shutil.copytree(demo, atlas, ignore=shutil.ignore_patterns("generated"))
    capsys.readouterr()
    assert main(["sample", str(atlas), "--arch", "zoo:\x1b[31mred\x07"]) == 2
    out = capsys.readouterr()
    assert "\\x1b[31mred" in out.err and "\x1b" not in out.err + out.out, out.err
    assert "\x07" not in out.err + out.out
    src = tmp_path / "models"
    for name in ("ok", "m\x1b[2J\u202eevil", "bad\x1b]0;title\x07"):
        d = src / name
        d.mkdir(parents=True)
        for fname, data in good_files.items():
            (d / fname).write_bytes(data if name != "bad\x1b]0;title\x07" else b"{")
    assert main(["collect", str(tmp_path / "a2"), "--source", str(src)]) == 0  # with its bar
    out = capsys.readouterr()
    text = out.err + out.out
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text, text
    rows = {r["id"] for r in Atlas.open(tmp_path / "a2").manifest()}
    assert "m\x1b[2J\u202eevil" in rows  # the id itself is kept as the source named it
