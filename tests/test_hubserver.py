"""The stand-in Hub (tests/hubserver.py) against the real huggingface_hub client.

Listing with filters, sort and Link-header paging; model info at a revision; the tree; file
downloads with ETag / X-Repo-Commit; Range requests (206, 416), file-level resume; and
the X-Error-Code 404s that the client turns into its own exception classes.
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer  # noqa: E402


def _repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> str:
    rev = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(rev)
    return rev


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("standin")
    st = root / "w.safetensors"
    save_file({"w": torch.arange(3000, dtype=torch.float32).reshape(30, 100)}, str(st))
    for i in range(5):
        tags = ["image-classification", "even" if i % 2 == 0 else "odd"]
        card = f"---\nlicense: mit\nlibrary_name: timm\npipeline_tag: image-classification\ntags: {json.dumps(tags)}\n---\n"
        config = {"architecture": "resnet18", "num_classes": 10}
        if i == 4:
            config["auto_map"] = {"AutoModel": "x.Y"}
        _repo(
            root,
            f"org{i % 2}/m{i}",
            {
                "config.json": json.dumps(config).encode(),
                "model.safetensors": st.read_bytes(),
                "README.md": card.encode(),
            },
        )
    return root


@pytest.fixture
def server(cache):
    with HubServer(
        cache, page_size=2, downloads={f"org{i % 2}/m{i}": 10 * i for i in range(5)}
    ) as s:
        yield s


def test_listing_filters_sorts_and_pages(server):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url)
    ids = [m.id for m in api.list_models(sort="downloads")]
    assert ids == ["org0/m4", "org1/m3", "org0/m2", "org1/m1", "org0/m0"]
    assert sum(p == "/api/models" for _m, p in server.requests) == 3  # 2 + 2 + 1, Link-paged
    assert [m.id for m in api.list_models(filter=["even", "timm"], sort="downloads")] == [
        "org0/m4",
        "org0/m2",
        "org0/m0",
    ]
    assert [m.id for m in api.list_models(author="org1", search="m3")] == ["org1/m3"]
    assert [m.id for m in api.list_models(sort="downloads", limit=3)] == [
        "org0/m4",
        "org1/m3",
        "org0/m2",
    ]
    (m4,) = [
        m
        for m in api.list_models(
            filter="custom_code", expand=["sha", "tags", "cardData", "siblings", "safetensors"]
        )
    ]
    assert m4.id == "org0/m4" and "license:mit" in m4.tags and m4.card_data.license == "mit"
    assert sorted(s.rfilename for s in m4.siblings) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert m4.safetensors.total == 3000 and m4.downloads is None  # not expanded


def test_info_tree_download_and_errors(server, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=server.url)
    info = api.model_info("org1/m1", revision="main")
    assert (
        info.sha == hashlib.sha1(b"org1/m1").hexdigest()
        and info.pipeline_tag == "image-classification"
    )
    tree = {f.path: f for f in api.list_repo_tree("org1/m1", revision=info.sha)}
    blob = server.repos["org1/m1"].files["model.safetensors"].read_bytes()
    assert tree["model.safetensors"].lfs.sha256 == hashlib.sha256(blob).hexdigest()
    assert tree["model.safetensors"].size == len(blob)

    snap = snapshot_download(
        "org1/m1",
        cache_dir=tmp_path,
        endpoint=server.url,
        allow_patterns=["*.json", "*.safetensors"],
    )
    assert Path(snap).name == info.sha and (Path(snap) / "model.safetensors").read_bytes() == blob
    assert not (Path(snap) / "README.md").exists()

    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org1/m1", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org1/m1", "pytorch_model.bin", cache_dir=tmp_path, endpoint=server.url)


def test_range_requests_and_file_level_resume(server, tmp_path):
    from huggingface_hub import hf_hub_download, snapshot_download

    rev = server.repos["org0/m2"].sha
    url = f"{server.url}/org0/m2/resolve/{rev}/model.safetensors"
    blob = server.repos["org0/m2"].files["model.safetensors"].read_bytes()
    req = urllib.request.Request(url, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 206 and r.read() == blob[100:200]
        assert (
            r.headers["Content-Range"] == f"bytes 100-199/{len(blob)}"
            and r.headers["X-Repo-Commit"] == rev
        )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(
            urllib.request.Request(url, headers={"Range": f"bytes={len(blob)}-"})
        )
    assert e.value.code == 416

    # a re-run after a kill: files already in the cache are not fetched again (huggingface_hub
    # 2.4 restarts unfinished files from a process-unique temp file, it does not reuse partials)
    hf_hub_download("org0/m2", "config.json", revision=rev, cache_dir=tmp_path, endpoint=server.url)
    before = len(server.requests)
    snapshot_download("org0/m2", revision=rev, cache_dir=tmp_path, endpoint=server.url)
    again = [p for _m, p in server.requests[before:] if "/resolve/" in p]
    assert sorted({Path(p).name for p in again}) == ["README.md", "model.safetensors"]


def test_only_loopback_and_stops_by_itself(cache):
    with pytest.raises(ValueError):
        HubServer(cache, host="0.0.0.0")
    s = HubServer(cache, lifetime_s=0.2).start()
    s._thread.join(timeout=10)
    assert not s._thread.is_alive()
