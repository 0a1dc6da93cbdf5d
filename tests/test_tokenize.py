"""Tokenization: exact round trips, padding, positions, exclusions, and the resumable stage.

.venv/bin/pytest tests/test_tokenize.py
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from core.atlas import Atlas, TokenTable, append_jsonl, read_json
from core.cli import add_tokenize_cli, run_tokenize_cli
from core.collection.specs import resolve_arch
from core.errors import WeightAtlasError
from core.models.families import FAMILIES
from core.models.registry import trainable_names
from core.tokens.plan import (
    _Meta,
    detokenize,
    fill_tokens,
    plan_tokens,
    tokenize_model_dir,
    tokenize_state_dict,
)
from core.tokens.schemes import SCHEMES, layer_kinds
from core.tokens.store import TokenStore, read_index
from core.tokens.tokenize import tokenize

TIMM_ARCHS = ["resnet18", "vit_small_patch16_224", "convnext_tiny"]


def assert_exact(tk, sd: dict[str, torch.Tensor]) -> None:
    """Every tokenized tensor comes back bit-identical; padding is zero; mask counts values."""
    back = detokenize(tk.tokens, tk.layers)
    assert set(back) == {e.name for e in tk.layers}
    for name, t in back.items():
        assert t.dtype == sd[name].dtype, name
        assert torch.equal(t, sd[name]), name
    assert tk.mask.shape == tk.tokens.shape
    assert int(tk.mask.sum()) == sum(sd[e.name].numel() for e in tk.layers)
    assert torch.count_nonzero(tk.tokens[~tk.mask]) == 0
    assert tk.tokens.dtype == torch.float32 and tk.positions.dtype == torch.int64


def padding(tk) -> float:
    return 1 - int(tk.valid.sum()) / tk.tokens.numel()


@pytest.fixture(scope="module", params=TIMM_ARCHS)
def timm_model(request):
    torch.manual_seed(0)
    return timm.create_model(request.param, pretrained=False)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_timm_round_trip(timm_model, scheme):
    sd = timm_model.state_dict()
    tk = tokenize_state_dict(sd, scheme, 64, model=timm_model)
    assert_exact(tk, sd)
    assert {e.name for e in tk.layers} == trainable_names(timm_model)
    buffers = {n for n, _ in timm_model.named_buffers()} & set(sd)
    assert {x["name"] for x in tk.excluded} == buffers
    # the sequence follows module order, not the alphabetical order of the file
    names = [e.name for e in tk.layers]
    assert names == [n for n in sd if n in set(names)]


class FamilyDirs(dict):
    """Lazily built: one fresh model per zoo family, saved in its Hub format -> (model, dir)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, name: str):
        target = resolve_arch(f"zoo:{name}")
        model = target.build(seed=0)
        self[name] = (model, target.save(model, self.root / name))
        return self[name]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return FamilyDirs(tmp_path_factory.mktemp("families"))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_round_trip_from_dir(family_dirs, family, scheme):
    model, path = family_dirs[family]
    sd = model.state_dict()
    tk = tokenize_model_dir(path, scheme, 64)
    assert_exact(tk, sd)
    assert {e.name for e in tk.layers} == trainable_names(model)
    reasons = {x["name"]: x["reason"] for x in tk.excluded}
    for name, buf in model.named_buffers():
        if name in sd:
            assert reasons[name] == ("buffer" if buf.is_floating_point() else "not a float tensor")


def test_dense_padding_lower_than_sparse_on_zoo(family_dirs):
    dense_tok = dense_val = sparse_tok = sparse_val = 0
    for name in FAMILIES:
        _, path = family_dirs[name]
        d = tokenize_model_dir(path, "dense", 64)
        s = tokenize_model_dir(path, "sparse", 64)
        assert padding(d) < padding(s)
        dense_tok, dense_val = dense_tok + d.tokens.numel(), dense_val + int(d.valid.sum())
        sparse_tok, sparse_val = sparse_tok + s.tokens.numel(), sparse_val + int(s.valid.sum())
    assert dense_val == sparse_val
    assert 1 - dense_val / dense_tok < 0.5 * (1 - sparse_val / sparse_tok)


ODD = {
    "scalar": torch.tensor(3.25),
    "vec": torch.randn(7),
    "one": torch.randn(1),
    "five_d": torch.randn(2, 3, 1, 4, 5),
    "empty_1d": torch.randn(0),
    "empty_mid": torch.randn(3, 0, 2),
    "empty_rows": torch.randn(0, 5),
    "bf16": torch.randn(5, 9).to(torch.bfloat16),
    "fp16": torch.randn(4, 3, 3).to(torch.float16),
    "fp16_scalar": torch.tensor(-0.0, dtype=torch.float16),
    "special": torch.tensor([float("inf"), float("-inf"), 1e-45, -0.0, 3.4e38]),
    "fp8": torch.randn(3, 5).to(torch.float8_e4m3fn),
    "ints": torch.arange(6).reshape(2, 3),
    "flags": torch.tensor([True, False]),
    "count": torch.tensor(7, dtype=torch.int64),
}
NON_FLOAT = {"ints", "flags", "count"}


@pytest.mark.parametrize("token_size", [1, 3, 64])
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_odd_shapes_and_dtypes(scheme, token_size, tmp_path):
    tk = tokenize_state_dict(ODD, scheme, token_size)
    floats = {k: v for k, v in ODD.items() if k not in NON_FLOAT}
    assert_exact(tk, floats)
    assert {x["name"]: x["reason"] for x in tk.excluded} == dict.fromkeys(
        NON_FLOAT, "not a float tensor"
    )
    # the same through a safetensors file, streamed with safe_open
    save_file(ODD, tmp_path / "model.safetensors")
    tk2 = tokenize_model_dir(tmp_path / "model.safetensors", scheme, token_size, trainable=set(ODD))
    assert_exact(tk2, floats)
    blocks = {e.name: tk.tokens[e.offset : e.offset + e.count] for e in tk.layers}
    for e in tk2.layers:  # without a model the order is the file's, the tokens per tensor agree
        assert torch.equal(tk2.tokens[e.offset : e.offset + e.count], blocks[e.name])
    nan = torch.tensor([float("nan"), 1.0])
    tk3 = tokenize_state_dict({"x": nan}, scheme, token_size)
    assert torch.equal(
        detokenize(tk3.tokens, tk3.layers)["x"].view(torch.int32), nan.view(torch.int32)
    )


def test_layout_by_hand():
    a = torch.arange(15, dtype=torch.float32).reshape(3, 5) + 1
    b = torch.arange(7, dtype=torch.float32) + 100
    dense = tokenize_state_dict({"a": a, "b": b}, "dense", 4)
    assert dense.valid.tolist() == [4, 4, 4, 3, 4, 3]
    assert dense.positions.tolist() == [
        [0, 0, 0],
        [1, 0, 1],
        [2, 0, 2],
        [3, 0, 3],
        [4, 1, 0],
        [5, 1, 1],
    ]
    assert dense.tokens[3].tolist() == [13, 14, 15, 0] and dense.tokens[5].tolist() == [
        104,
        105,
        106,
        0,
    ]
    sparse = tokenize_state_dict({"a": a, "b": b}, "sparse", 4)
    assert sparse.valid.tolist() == [4, 1, 4, 1, 4, 1] + [1] * 7
    assert sparse.tokens[1].tolist() == [5, 0, 0, 0] and sparse.tokens[2].tolist() == [6, 7, 8, 9]
    assert sparse.positions[6].tolist() == [6, 1, 0] and sparse.positions[-1].tolist() == [12, 1, 6]
    assert [(e.offset, e.count, e.rows, e.row_len) for e in sparse.layers] == [
        (0, 6, 3, 5),
        (6, 7, 7, 1),
    ]


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_positions_at_layer_boundaries(scheme):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    tk = tokenize_state_dict(model.state_dict(), scheme, 50, model=model)
    pos = tk.positions
    assert torch.equal(pos[:, 0], torch.arange(tk.n_tokens))
    assert sum(e.count for e in tk.layers) == tk.n_tokens
    for i, e in enumerate(tk.layers):
        assert e.layer == i
        assert pos[e.offset].tolist() == [e.offset, i, 0]
        assert pos[e.offset + e.count - 1].tolist() == [e.offset + e.count - 1, i, e.count - 1]
        if e.offset > 0:
            prev = tk.layers[i - 1]
            assert pos[e.offset - 1].tolist() == [e.offset - 1, i - 1, prev.count - 1]
    assert bool((pos[1:, 1] - pos[:-1, 1] >= 0).all())
    starts = torch.nonzero(pos[:, 2] == 0).flatten().tolist()
    assert starts == [e.offset for e in tk.layers if e.count]


class Odd(nn.Module):
    """Names chosen to defeat substring matching: a buffer called weight, a parameter called running_mean."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.randn(4))
        self.running_mean = nn.Parameter(torch.randn(4))
        self.conv = nn.Conv1d(2, 3, 3)
        self.norm = nn.BatchNorm1d(3)
        self.emb = nn.Embedding(5, 2)
        self.lin = nn.Linear(2, 2, bias=False)


def test_buffers_and_kinds_from_module_structure():
    m = Odd()
    tk = tokenize_state_dict(m.state_dict(), "dense", 8, model=m)
    kinds = {e.name: e.kind for e in tk.layers}
    assert kinds == {
        "running_mean": "other",
        "conv.weight": "conv",
        "conv.bias": "bias",
        "norm.weight": "norm",
        "norm.bias": "norm",
        "emb.weight": "embedding",
        "lin.weight": "linear",
    }
    excluded = {x["name"]: x["reason"] for x in tk.excluded}
    assert excluded == {
        "weight": "buffer",
        "norm.running_mean": "buffer",
        "norm.running_var": "buffer",
        "norm.num_batches_tracked": "not a float tensor",
    }
    assert layer_kinds(m)["norm.running_var"] == "norm"
    # a tensor the architecture does not know is told apart from a buffer
    sd = dict(m.state_dict(), extra=torch.ones(2))
    tk = tokenize_state_dict(sd, "dense", 8, model=m)
    assert {x["name"]: x["reason"] for x in tk.excluded}["extra"] == "not in the architecture"


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


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_fill_overwrites_garbage_buffers(scheme):
    """Outputs need no zero-initialisation: padding is written explicitly (memmaps, reused buffers)."""
    sd = {k: v for k, v in ODD.items() if k not in NON_FLOAT}
    ref = tokenize_state_dict(sd, scheme, 3)
    plan = plan_tokens({k: _Meta(tuple(v.shape), v.dtype) for k, v in sd.items()}, scheme, 3)
    n = plan.n_tokens
    tokens = torch.full((n, 3), float("nan"))
    valid = torch.full((n,), -1, dtype=torch.int32)
    positions = torch.full((n, 3), -1, dtype=torch.int64)
    fill_tokens(plan, sd.__getitem__, tokens, valid, positions)
    assert torch.equal(tokens, ref.tokens) and torch.equal(valid, ref.valid)
    assert torch.equal(positions, ref.positions)


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
