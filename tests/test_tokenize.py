"""core.tokens.tokenize: the resumable tokenize stage (shards, ranks, streaming) and its CLI.

The exact round trips, padding, positions and exclusions of core/tokens/plan.py: test_plan.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_exact
from safetensors.torch import save_file

from core.atlas import Atlas, TokenTable, append_jsonl, read_json
from core.cli.data import add_tokenize_cli, run_tokenize_cli
from core.errors import WeightAtlasError
from core.tokens.plan import (
    tokenize_model_dir,
)
from core.tokens.store import TokenStore, read_index
from core.tokens.tokenize import tokenize

# ---------------------------------------------------------------- the stage


def make_atlas(root: Path, family_dirs, families=("cnn", "mlp", "timm-resnet", "resnet")) -> Atlas:
    """An atlas whose manifest lists copies of freshly built family models (inside hub/)."""
    atlas = Atlas.create(root)
    rows = []
    for i, fam in enumerate(families):
        for run in range(2):
            mid = f"zoo/{fam}-r{run}"
            dst = atlas.hub_dir / f"models--zoo--{fam}-r{run}" / "snapshots" / "abc"
            shutil.copytree(family_dirs[fam][1], dst)
            rows.append(
                {
                    "id": mid,
                    "status": "accepted",
                    "reason": None,
                    "family": fam,
                    "split": "train" if (i + run) % 3 else "val",
                    "path": str(dst.relative_to(root)),
                }
            )
    rows.append({"id": "zoo/rejected", "status": "rejected", "reason": "x", "path": "nowhere"})
    append_jsonl(atlas.manifest_path, rows)
    return atlas


def cli_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``weightatlas tokenize`` flags with the stage's own ``add_tokenize_cli``."""
    p = argparse.ArgumentParser()
    add_tokenize_cli(p)
    return p.parse_args(argv)


def add_broken(atlas: Atlas, name: str, how: str) -> None:
    d = atlas.root / "broken" / name
    d.mkdir(parents=True)
    if how == "truncated":
        (d / "config.json").write_text(
            json.dumps({"library_name": "weightatlas", "architecture": "mlp"})
        )
        (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    else:
        (d / "config.json").write_text(
            json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "x.Y"}})
        )
        save_file({"w": torch.ones(3)}, d / "model.safetensors")
    append_jsonl(
        atlas.manifest_path,
        [
            {
                "id": f"bad/{name}",
                "status": "accepted",
                "family": "bad",
                "split": "train",
                "path": str(d),
            }
        ],
    )


def test_stage_end_to_end_and_resume(tmp_path, family_dirs):
    atlas = make_atlas(tmp_path / "a", family_dirs)
    add_broken(atlas, "trunc", "truncated")
    add_broken(atlas, "remote", "remote")
    stats = tokenize(
        atlas.root, "dense", 32, rank=0, world_size=1, shard_bytes=20_000, progress=False
    )
    assert stats["models"] == 8 and stats["failed"] == 2
    assert TokenTable(atlas.tokens_dir).scheme_and_size() == ("dense", 32)  # the one source
    assert "token_size" not in atlas.info() and "token_scheme" not in atlas.info()
    index = read_json(atlas.tokens_dir / "index.json")
    assert set(index["failed"]) == {"bad/trunc", "bad/remote"}
    assert len({m["shard"] for m in index["models"].values()}) > 1
    store = TokenStore(atlas.tokens_dir)
    total_values = 0
    for mid in store.ids:
        fam = mid.split("/")[1].rsplit("-r", 1)[0]
        model = family_dirs[fam][0]
        tk = store.get(mid)
        assert_exact(tk, model.state_dict())
        direct = tokenize_model_dir(family_dirs[fam][1], "dense", 32)
        assert torch.equal(tk.tokens, direct.tokens) and torch.equal(tk.positions, direct.positions)
        assert store.entry(mid)["family"] == fam
        total_values += int(tk.valid.sum())
    assert stats["values"] == total_values
    assert stats["per_family"]["cnn"]["models"] == 2
    assert abs(stats["padding_fraction"] - (1 - total_values / (stats["tokens"] * 32))) < 1e-12

    # resume: nothing is redone; a newly accepted model is added; mixing schemes is refused
    shards = {p.name: p.stat().st_mtime_ns for p in atlas.tokens_dir.glob("shard-*")}
    before = read_json(atlas.tokens_dir / "index.json")
    assert tokenize(atlas.root, progress=False) == stats
    assert read_json(atlas.tokens_dir / "index.json") == before
    assert {p.name: p.stat().st_mtime_ns for p in atlas.tokens_dir.glob("shard-*")} == shards
    with pytest.raises(WeightAtlasError, match="scheme=dense token_size=32"):
        tokenize(atlas.root, "sparse", 32, progress=False)
    with pytest.raises(WeightAtlasError, match="token_size=32"):
        tokenize(atlas.root, "dense", 64, progress=False)
    with pytest.raises(WeightAtlasError, match="remove"):
        run_tokenize_cli(cli_args([str(atlas.root), "--scheme", "sparse"]))
    new = atlas.hub_dir / "new"
    shutil.copytree(family_dirs["mlp"][1], new)
    append_jsonl(
        atlas.manifest_path,
        [
            {
                "id": "zoo/new",
                "status": "accepted",
                "family": "mlp",
                "split": "test",
                "path": "hub/new",
            }
        ],
    )
    assert run_tokenize_cli(cli_args([str(atlas.root)])) == 0
    assert read_json(atlas.tokens_dir / "stats.json")["models"] == 9
    # a failed model stays failed on resume, and is redone with --retry-failed once fixed
    fixed = atlas.root / "broken" / "trunc"
    for f in ("config.json", "model.safetensors"):
        shutil.copy(family_dirs["mlp"][1] / f, fixed / f)
    assert tokenize(atlas.root, progress=False)["failed"] == 2
    assert run_tokenize_cli(cli_args([str(atlas.root), "--retry-failed"])) == 0
    index = read_index(atlas.tokens_dir)
    assert set(index["failed"]) == {"bad/remote"} and "bad/trunc" in index["models"]
    assert "remote" in index["failed"]["bad/remote"] or "auto_map" in index["failed"]["bad/remote"]
    assert {
        p.name: p.stat().st_mtime_ns for p in atlas.tokens_dir.glob("shard-*")
    }.items() >= shards.items()


def test_rank_sharding_matches_single_process(tmp_path, family_dirs):
    one = make_atlas(tmp_path / "one", family_dirs, ("cnn", "mlp", "timm-resnet"))
    two = make_atlas(tmp_path / "two", family_dirs, ("cnn", "mlp", "timm-resnet"))
    tokenize(one.root, "sparse", 16, rank=0, world_size=1, shard_bytes=1, progress=False)
    tokenize(two.root, "sparse", 16, rank=1, world_size=2, shard_bytes=1, progress=False)
    partial = read_index(two.tokens_dir)
    assert 0 < len(partial["models"]) < 6
    tokenize(two.root, "sparse", 16, rank=0, world_size=2, shard_bytes=1, progress=False)
    assert read_json(one.tokens_dir / "index.json") == read_json(two.tokens_dir / "index.json")
    assert sorted(p.name for p in (two.tokens_dir / "parts").iterdir()) == [
        "rank-00000.jsonl",
        "rank-00001.jsonl",
    ]
    for shard in one.tokens_dir.glob("shard-*"):
        assert shard.read_bytes() == (two.tokens_dir / shard.name).read_bytes()


def test_rank_from_environment(tmp_path, family_dirs, monkeypatch):
    atlas = make_atlas(tmp_path / "env", family_dirs, ("cnn", "mlp"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    stats = tokenize(atlas.root, shard_bytes=1, progress=False)
    assert 0 < stats["models"] < 4
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(WeightAtlasError, match="bad rank"):
        tokenize(atlas.root, progress=False)


def _rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_stage_streams_without_loading_the_model(tmp_path):
    """The stage holds about one tensor at a time, never the whole model (sampled RssAnon)."""
    import threading
    import time

    from core.models.io import save_model_dir
    from core.models.native import MLP

    atlas = Atlas.create(tmp_path / "big")
    model = MLP(2048, 10, 2048, 4)
    nbytes = sum(p.numel() * 4 for p in model.parameters())
    save_model_dir(model, atlas.hub_dir / "big", "weightatlas")
    del model
    row = {"id": "big", "status": "accepted", "family": "mlp", "split": "train", "path": "hub/big"}
    append_jsonl(atlas.manifest_path, [row])
    tokenize(atlas.root, "dense", 64, progress=False, shard_bytes=1)  # warm imports and caches
    shutil.rmtree(atlas.tokens_dir)
    base = _rss_anon()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon())
            time.sleep(0.001)

    th = threading.Thread(target=sample)
    th.start()
    try:
        stats = tokenize(atlas.root, "dense", 64, progress=False)
    finally:
        done.set()
        th.join()
    assert stats["values"] * 4 == nbytes
    assert peak[0] - base < 0.4 * nbytes, (peak[0] - base, nbytes)


def test_cli_preset_and_flags(tmp_path, family_dirs):
    atlas = make_atlas(tmp_path / "p", family_dirs, ("mlp",))
    assert (
        run_tokenize_cli(
            cli_args([str(atlas.root), "--preset", "paper-sparse", "--token-size", "100"])
        )
        == 0
    )
    stats = read_json(atlas.tokens_dir / "stats.json")
    assert (stats["scheme"], stats["token_size"], stats["models"]) == ("sparse", 100, 2)
    assert TokenTable(atlas.tokens_dir).scheme_and_size() == ("sparse", 100)
    with pytest.raises(SystemExit):
        cli_args([str(atlas.root), "--scheme", "fancy"])
    # a re-run that names only the shard size keeps the store's scheme and size
    assert run_tokenize_cli(cli_args([str(atlas.root), "--set", "shard_bytes=100000"])) == 0
    # the shorthand flags are aliases of --set fields, and --set is applied last
    other = make_atlas(tmp_path / "q", family_dirs, ("mlp",))
    argv = [str(other.root), "--token-size", "32", "--set", "token_size=48"]
    assert run_tokenize_cli(cli_args(argv)) == 0
    assert TokenTable(other.tokens_dir).scheme_and_size() == ("dense", 48)
