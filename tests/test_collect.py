"""Collection (core.collection): safetensors header checks, bad-input reasons, zoo -> stand-in Hub -> manifest,
and a collection killed mid-run that resumes to the same manifest as a clean run.

Real parts only: a small zoo trained by core.zoos.zoo, transformers models written with
save_pretrained, the stdlib stand-in Hub (tests/hubserver.py) and the real huggingface_hub
client in a subprocess with HF_ENDPOINT set before it is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import lying_offsets as _lying_offsets
from safetensors.torch import load_file, save_file

from core.atlas import Atlas, read_jsonl
from core.bench import bench_collect
from core.collection.collect import collect
from core.collection.facts import split_of

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ZOO_TAG = "weightatlas-zoo"
MAX_PARAMS = 50_000


# ------------------------------------------------------------------------------ fixtures


def put_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write one repo in HF cache layout (``models--org--name/snapshots/REV`` + ``refs/main``)."""
    rev = hashlib.sha1(
        b"".join(n.encode() + hashlib.sha1(d).digest() for n, d in sorted(files.items()))
    ).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    return snap


def card(tags: list[str], **extra: object) -> bytes:
    import yaml

    meta = {"license": "mit", "tags": tags, **extra}
    return f"---\n{yaml.safe_dump(meta)}---\n# model\n".encode()


def saved(model, tmp: Path) -> dict[str, bytes]:
    """config.json + model.safetensors of a transformers model via save_pretrained."""
    model.save_pretrained(tmp)
    files = {n: (tmp / n).read_bytes() for n in ("config.json", "model.safetensors")}
    shutil.rmtree(tmp)
    return files


class Evil:
    """Unpickling this creates the canary file."""

    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (open, (self.canary, "w"))


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory) -> dict:
    """A small real zoo plus transformers models and one repo per kind of bad input."""
    import transformers

    from core.models.io import save_model_dir
    from core.zoos.zoo import zoo

    base = tmp_path_factory.mktemp("mixed")
    cache = base / "cache"
    zoo(
        "ci",
        cache,
        overrides={
            "families": ("resnet", "timm-resnet", "mlp"),
            "tasks": ("digits10:1", "wine:1"),
            "epochs": 1,
            "checkpoints": (1,),
        },
        progress=False,
    )
    zoo_ids = [json.loads(line)["id"] for line in (cache / "zoo.jsonl").read_text().splitlines()]
    canary = base / "canary-pickle-was-loaded"
    remote_canary = base / "canary-remote-code-ran"
    tmp = base / "tmp"

    tiny = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    bert = saved(
        transformers.BertForSequenceClassification(transformers.BertConfig(vocab_size=64, **tiny)),
        tmp,
    )
    vit_model = transformers.ViTForImageClassification(
        transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, num_labels=10, **tiny)
    )
    vit_legacy = saved(vit_model, tmp)  # save_pretrained: transformers' legacy key layout
    save_model_dir(vit_model, tmp, "transformers")  # the module's own names, as the zoo writes
    vit = {n: (tmp / n).read_bytes() for n in ("config.json", "model.safetensors")}
    shutil.rmtree(tmp)
    bert_model = transformers.BertForSequenceClassification(
        transformers.BertConfig(vocab_size=64, **tiny)
    )
    bert_model.save_pretrained(tmp, max_shard_size="8KB")  # sharded: model-0000X-of-0000N + index
    sharded = {f.name: f.read_bytes() for f in tmp.iterdir()}
    assert (
        sum(n.endswith(".safetensors") for n in sharded) > 1
        and "model.safetensors.index.json" in sharded
    )
    shutil.rmtree(tmp)
    big = saved(transformers.BertModel(transformers.BertConfig(vocab_size=4000, **tiny)), tmp)
    resnet = saved(
        transformers.ResNetForImageClassification(
            transformers.ResNetConfig(
                num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10
            )
        ),
        tmp,
    )

    good_st = vit["model.safetensors"]
    sd = load_file(str(put_repo(base / "scratch", "x/vit", vit) / "model.safetensors"))
    name = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 2)
    sd[name][0, 0] = float("nan")
    save_file(sd, str(tmp.with_suffix(".st")))
    nan_st = tmp.with_suffix(".st").read_bytes()
    cfg = json.loads(vit["config.json"])
    wrong = dict(
        resnet,
        **{
            "config.json": json.dumps(
                {**json.loads(resnet["config.json"]), "hidden_sizes": [8, 24]}
            ).encode()
        },
    )

    t = card([ZOO_TAG, "image-classification"])
    bad = {
        "bad/truncated": (
            {**vit, "model.safetensors": good_st[:-100], "README.md": t},
            "truncated safetensors",
        ),
        "bad/lying-offsets": (
            {**vit, "model.safetensors": _lying_offsets(good_st), "README.md": t},
            "inconsistent offsets",
        ),
        "bad/nan": ({**vit, "model.safetensors": nan_st, "README.md": t}, "non-finite weights"),
        "bad/pickle-only": (
            {
                "config.json": vit["config.json"],
                "pytorch_model.bin": pickle.dumps(Evil(canary)),
                "README.md": t,
            },
            "no safetensors",
        ),
        "bad/auto-map": (
            {
                **vit,
                "config.json": json.dumps(
                    {**cfg, "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}
                ).encode(),
                "modeling_evil.py": f"open({str(remote_canary)!r}, 'w')\n".encode(),
                "README.md": t,
            },
            "remote code",
        ),
        "bad/no-config": ({"model.safetensors": good_st, "README.md": t}, "no config"),
        "bad/unknown-type": (
            {
                **vit,
                "config.json": json.dumps({**cfg, "model_type": "no-such-model"}).encode(),
                "README.md": t,
            },
            "unknown model_type",
        ),
        "bad/too-large": ({**big, "README.md": t}, "too large"),
        "bad/wrong-shapes": ({**wrong, "README.md": t}, "weights do not match config"),
    }
    good = {
        "hf/bert-tiny": {
            **bert,
            "README.md": card(
                [ZOO_TAG, "text-classification"], base_model="google-bert/bert-base-uncased"
            ),
        },
        "hf/vit-tiny": {**vit, "README.md": t},
        # pre-v5 key names: transformers renames them on load, and the tokenizer reads the
        # loaded module under its canonical names (H16, issue 16)
        "hf/vit-legacy-layout": {**vit_legacy, "README.md": t},
        "hf/bert-sharded": {**sharded, "README.md": card([ZOO_TAG, "fill-mask"])},
    }
    for repo_id, (files, _reason) in bad.items():
        put_repo(cache, repo_id, files)
    for repo_id, files in good.items():
        put_repo(cache, repo_id, files)
    put_repo(cache, "other/untagged", {**vit, "README.md": card(["unrelated"])})
    return {
        "cache": cache,
        "zoo_ids": zoo_ids,
        "accepted": sorted([*zoo_ids, *good]),
        "rejected": {k: reason for k, (_f, reason) in bad.items()},
        "canaries": (canary, remote_canary),
    }


def hub_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(
        HF_ENDPOINT=url,
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "core.cli", "collect", *args, "--no-progress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def outcome(atlas: Path) -> dict[str, tuple]:
    return {r["id"]: (r["status"], r["reason"], r["split"]) for r in Atlas.open(atlas).manifest()}


# ----------------------------------------------------------------------- header parser
# the safetensors header checks: tests/test_formats.py; run keys and splits: tests/test_facts.py


# ---------------------------------------------------------------------- local collection


def test_collect_from_cache_records_every_bad_input_with_its_reason(mixed_cache, tmp_path):
    atlas = tmp_path / "atlas"
    cfg = {"source": str(mixed_cache["cache"]), "tags": [ZOO_TAG], "max_params": MAX_PARAMS}
    rows = collect(atlas, overrides={**cfg, "workers": 2}, progress=False)
    by_id = {r["id"]: r for r in rows}
    assert (
        sorted(i for i, r in by_id.items() if r["status"] == "accepted") == mixed_cache["accepted"]
    )
    assert {i: r["reason"] for i, r in by_id.items() if r["status"] == "rejected"} == mixed_cache[
        "rejected"
    ]
    assert "other/untagged" not in by_id
    for canary in mixed_cache["canaries"]:
        assert not canary.exists(), f"{canary.name}: untrusted code ran"
    assert "1 NaN" in by_id["bad/nan"]["detail"] or "NaN" in by_id["bad/nan"]["detail"]

    z = by_id[mixed_cache["zoo_ids"][0]]
    assert z["labels"]["task"] in ("digits10", "wine") and z["labels"]["epoch"] == 1
    assert z["split"] == split_of(
        f"{z['labels']['family']}-{z['labels']['task']}-r{z['labels']['run']}"
    )
    assert z["metrics"]["accuracy"] == z["labels"]["test_accuracy"] and z["license"] == "mit"
    assert z["source"] == "hf-cache" and Path(z["path"]).is_dir() and z["params"] > 0
    bert = by_id["hf/bert-tiny"]
    assert (bert["library"], bert["model_type"], bert["architecture"]) == (
        "transformers",
        "bert",
        "BertForSequenceClassification",
    )
    assert (bert["base_model"], bert["base_model_relation"]) == (
        "google-bert/bert-base-uncased",
        "finetune",
    )
    assert {r["library"] for r in rows if r["status"] == "accepted"} >= {
        "transformers",
        "timm",
        "weightatlas",
    }
    info = Atlas.open(atlas).info()
    assert info["sources"][0]["kind"] == "hf-cache" and info["sources"][0]["query"]["tags"] == [
        ZOO_TAG
    ]

    n_lines = len(list(read_jsonl(atlas / "manifest.jsonl")))
    collect(atlas, overrides={**cfg, "workers": 2}, progress=False)
    assert len(list(read_jsonl(atlas / "manifest.jsonl"))) == n_lines  # a re-run skips what is done


def test_hf_cache_source_reads_the_cache_huggingface_hub_names(mixed_cache, tmp_path, monkeypatch):
    """``--source hf-cache`` is this user's cache wherever ``huggingface_hub`` puts it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(mixed_cache["cache"]))
    rows = collect(
        tmp_path / "a",
        overrides={"source": "hf-cache", "n_train": 1, "n_val": 0, "workers": 1},
        progress=False,
    )
    assert rows and all(r["source"] == "hf-cache" for r in rows)
    assert sum(r["status"] == "accepted" for r in rows) >= 1


def test_quota_stops_early_and_plain_dirs_work(mixed_cache, tmp_path):
    plain = tmp_path / "plain"
    for snap in sorted(mixed_cache["cache"].glob("models--weightatlas-zoo--*/snapshots/*")):
        shutil.copytree(snap, plain / snap.parent.parent.name.split("--")[-1])
    rows = collect(
        tmp_path / "a",
        overrides={"source": str(plain), "n_train": 1, "n_val": 0, "workers": 3},
        progress=False,
    )
    assert all(r["source"] == "dir" for r in rows)
    assert sum(r["status"] == "accepted" and r["split"] == "train" for r in rows) == 1
    assert len(rows) < len(mixed_cache["zoo_ids"])


# ---------------------------------------------------------------- stand-in Hub, end to end


@pytest.fixture(scope="module")
def clean_hub_run(mixed_cache, tmp_path_factory):
    """One uninterrupted `collect --source hub` through the real client against the stand-in."""
    atlas = tmp_path_factory.mktemp("hub") / "atlas"
    with HubServer(mixed_cache["cache"], page_size=4) as server:
        r = run_cli(
            [
                str(atlas),
                "--source",
                "hub",
                "--tags",
                ZOO_TAG,
                "--max-params",
                str(MAX_PARAMS),
                "--workers",
                "2",
            ],
            hub_env(server.url),
        )
        requests = server.requests
    assert r.returncode == 0, r.stderr[-3000:]
    return atlas, requests, r.stdout


def test_hub_end_to_end_manifest(mixed_cache, clean_hub_run):
    atlas, requests, stdout = clean_hub_run
    got = outcome(atlas)
    assert sorted(i for i, o in got.items() if o[0] == "accepted") == mixed_cache["accepted"]
    rejected = {i: o[1] for i, o in got.items() if o[0] == "rejected"}
    assert rejected == mixed_cache["rejected"]
    assert "other/untagged" not in got
    listing = [p for m, p in requests if p == "/api/models"]
    assert len(listing) >= 3  # paged: 4 per page
    # prechecked from the listing: never downloaded at all
    assert not any("/bad/pickle-only/resolve" in p or p.endswith(".bin") for _m, p in requests)
    assert not any("modeling_evil.py" in p for _m, p in requests)
    assert not any(p.startswith(("/bad/too-large/", "/bad/auto-map/")) for _m, p in requests)
    for canary in mixed_cache["canaries"]:
        assert not canary.exists()
    rows = {r["id"]: r for r in Atlas.open(atlas).manifest()}
    vit = rows["hf/vit-tiny"]
    assert vit["source"] == "hub" and vit["path"].startswith("hub/models--hf--vit-tiny/snapshots/")
    assert (atlas / vit["path"] / "model.safetensors").is_file()
    assert "safetensors" in vit["tags"] and vit["revision"] == Path(vit["path"]).name
    assert f"{len(mixed_cache['accepted'])} accepted" in stdout


@pytest.mark.slow  # two CLI subprocesses (~35 s on 2 shared cores)
def test_killed_hub_collection_resumes_to_the_clean_result(mixed_cache, clean_hub_run, tmp_path):
    atlas = tmp_path / "atlas"
    args = [
        str(atlas),
        "--source",
        "hub",
        "--tags",
        ZOO_TAG,
        "--max-params",
        str(MAX_PARAMS),
        "--workers",
        "1",
    ]
    with HubServer(mixed_cache["cache"], page_size=4) as server:
        env = hub_env(server.url)
        proc = subprocess.Popen(
            [PY, "-m", "core.cli", "collect", *args, "--no-progress"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        manifest = atlas / "manifest.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and len(manifest.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "collection finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        partial = outcome(atlas)
        assert 3 <= len(partial) < len(mixed_cache["accepted"]) + len(mixed_cache["rejected"])
        r = run_cli(args, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert outcome(atlas) == outcome(clean_hub_run[0])
    ids = [row["id"] for row in read_jsonl(atlas / "manifest.jsonl")]
    assert len(ids) == len(set(ids))  # nothing redone, nothing lost


def test_hub_outage_is_retried_not_recorded_and_bad_source_is_one_line(mixed_cache, tmp_path):
    from core.cli import main

    atlas = tmp_path / "atlas"
    mlp = sorted(i for i in mixed_cache["zoo_ids"] if "/mlp-" in i)
    assert len(mlp) >= 2
    with HubServer(mixed_cache["cache"]) as server:
        server.fail_resolve.add(mlp[0])
        kw = dict(source="hub", tags=["mlp"], workers=2, endpoint=server.url)
        rows = collect(atlas, overrides=kw, progress=False)
        assert {r["id"] for r in rows} == set(mlp[1:])  # the failed download leaves no row
        server.fail_resolve.clear()
        rows = collect(atlas, overrides=kw, progress=False)
    assert sorted(r["id"] for r in rows if r["status"] == "accepted") == mlp
    assert len(list(read_jsonl(atlas / "manifest.jsonl"))) == len(mlp)

    rc = main(["collect", str(tmp_path / "c"), "--source", str(tmp_path / "nope"), "--no-progress"])
    assert rc == 2


@pytest.mark.slow  # huggingface_hub backs off ~20 s before giving up on a dead endpoint
def test_unreachable_hub_is_a_one_line_error(mixed_cache, tmp_path, capsys):
    from core.cli import main

    with HubServer(mixed_cache["cache"]) as dead:
        url = dead.url
    rc = main(
        ["collect", str(tmp_path / "b"), "--source", "hub", "--endpoint", url, "--no-progress"]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "listing hub failed" in err[0] and "re-run" in err[0]


def test_bench_collect_scans_headers_faster_than_it_needs_to(tmp_path, monkeypatch):
    import argparse

    monkeypatch.setenv("WEIGHTATLAS_ZOO", str(tmp_path / "no-zoo"))  # seeds: two tiny models
    out = bench_collect(argparse.Namespace(n=40, repeat=1, preset=None, device="cpu"))
    assert out["n_repos"] == 40 and out["scan_ok"] == 40 and out["seed_repos"] == 2
    assert out["scan_models_per_s"] > 0 and out["baseline_models_per_s"] > 0
    assert out["bytes_read_per_repo"] > 100


def test_rerunning_collect_after_a_kill_adds_no_duplicate_rows(atlas_factory, tmp_path, capsys):
    """Issue 27: collect of an HF cache re-run on a complete atlas appends nothing, and re-run
    after a kill (its on-disk state: the first rows, then a torn line) appends only the rest."""
    from conftest import TINY

    from core.cli import main

    zoo = atlas_factory(TINY).parent / "zoo"
    atlas = tmp_path / "atlas"
    args = ["collect", str(atlas), "--source", str(zoo), "--no-progress"]
    assert main(args) == 0
    manifest = atlas / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    assert len(lines) == len({json.loads(x)["id"] for x in lines}) > 4
    assert main(args) == 0
    assert manifest.read_text().splitlines(keepends=True) == lines  # nothing appended
    manifest.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])  # killed mid-line
    assert main(args) == 0
    again = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert len(again) == len(lines) and {r["id"] for r in again} == {
        json.loads(x)["id"] for x in lines
    }
    assert again[:4] == [json.loads(x) for x in lines[:4]]  # the rows before the kill kept
    assert manifest.read_text().splitlines(keepends=True) == lines  # and the same file again
    capsys.readouterr()


def test_two_collects_of_one_source_write_byte_identical_manifests(atlas_factory, tmp_path):
    """The stored order is the rows' id order, not the order the workers finished in: two
    collects of one source (four workers) give the same bytes, and a manifest whose rows were
    appended out of order is stored in id order by the next collect, rows kept."""
    from conftest import TINY

    zoo = atlas_factory(TINY).parent / "zoo"
    kw = {"source": str(zoo), "workers": 4}
    collect(tmp_path / "a", overrides=kw, progress=False)
    collect(tmp_path / "b", overrides=kw, progress=False)
    a = (tmp_path / "a" / "manifest.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "manifest.jsonl").read_bytes()
    ids = [row["id"] for row in read_jsonl(tmp_path / "a" / "manifest.jsonl")]
    assert len(ids) > 4 and ids == sorted(ids)

    manifest = tmp_path / "b" / "manifest.jsonl"
    manifest.write_text("".join(reversed(manifest.read_text().splitlines(keepends=True))))
    assert manifest.read_bytes() != a
    collect(tmp_path / "b", overrides=kw, progress=False)
    assert manifest.read_bytes() == a
