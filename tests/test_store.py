"""Token store: memory-mapped shards, exact reads, seeded SANE windows.

.venv/bin/pytest tests/test_store.py
"""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader

from core.atlas import Atlas
from core.bench import write_store
from core.errors import WeightAtlasError
from core.tokens.plan import detokenize, tokenize_state_dict
from core.tokens.shards import read_shard
from core.tokens.store import TokenStore, WindowDataset

D = 16


def small_models() -> dict[str, tuple[nn.Module, dict[str, torch.Tensor]]]:
    """Three models of different lengths, one shorter than the windows below."""
    torch.manual_seed(0)
    out = {
        "resnet": timm.create_model("resnet10t", pretrained=False, num_classes=5, in_chans=1),
        "mlp": nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3)),
        "tiny": nn.Sequential(nn.Linear(2, 2)),
    }
    return {k: (m, m.state_dict()) for k, m in out.items()}


@pytest.fixture(scope="module")
def store_and_tokens(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    atlas = Atlas.create(root)
    toks = {}
    for name, (model, sd) in small_models().items():
        toks[name] = (tokenize_state_dict(sd, "dense", D, model=model), sd)
    write_store(atlas.tokens_dir, {k: v[0] for k, v in toks.items()}, "dense", D)
    return TokenStore(atlas.tokens_dir), toks


def test_get_is_exact_through_disk(store_and_tokens):
    store, toks = store_and_tokens
    assert store.ids == sorted(toks) and store.token_size == D and store.scheme == "dense"
    for mid, (tk, sd) in toks.items():
        got = store.get(mid)
        assert torch.equal(got.tokens, tk.tokens)
        assert torch.equal(got.valid, tk.valid)
        assert torch.equal(got.positions, tk.positions)
        assert torch.equal(got.mask, tk.mask)
        back = detokenize(got.tokens, store.layers(mid))
        assert all(torch.equal(back[k], sd[k]) for k in back) and back
        assert [e.kind for e in store.layers(mid)] == [e.kind for e in tk.layers]


def test_shard_is_plain_safetensors(store_and_tokens):
    store, toks = store_and_tokens
    (shard,) = list(store.dir.glob("shard-*.safetensors"))
    with safe_open(str(shard), framework="pt") as f:
        tokens = f.get_tensor("tokens")
        assert tokens.shape == (sum(t.n_tokens for t, _ in toks.values()), D)
        assert f.get_tensor("valid").dtype == torch.int32
    arrays = read_shard(shard)
    assert not arrays["tokens"].flags.writeable
    assert torch.equal(torch.from_numpy(arrays["tokens"].copy()), tokens)


def test_window_slices_and_padding(store_and_tokens):
    store, toks = store_and_tokens
    tk = toks["resnet"][0]
    for start, ws in [(0, 1), (5, 64), (tk.n_tokens - 64, 64), (tk.n_tokens - 3, 8)]:
        w = store.window("resnet", start, ws)
        k = min(ws, tk.n_tokens - start)
        assert w["tokens"].shape == (ws, D) and w["mask"].dtype == torch.bool
        assert torch.equal(w["tokens"][:k], tk.tokens[start : start + k])
        assert torch.equal(w["positions"][:k], tk.positions[start : start + k])
        assert torch.equal(w["mask"][:k], tk.mask[start : start + k])
        assert not w["mask"][k:].any() and not w["tokens"][k:].any()
    chunks = list(store.iter_chunks("mlp", 5))
    n = toks["mlp"][0].n_tokens
    assert [s for s, _ in chunks] == list(range(0, n, 5))
    cat = torch.cat([c["tokens"] for _, c in chunks])[:n]
    assert torch.equal(cat, toks["mlp"][0].tokens)


def test_window_dataset_seeded_and_reproducible(store_and_tokens):
    store, toks = store_and_tokens
    ws = 32
    ds = WindowDataset(store, store.ids, ws, seed=3, windows_per_model=20)
    again = WindowDataset(store, store.ids, ws, seed=3, windows_per_model=20)
    other = WindowDataset(store, store.ids, ws, seed=4, windows_per_model=20)
    assert len(ds) == 60
    starts = [ds.start(i) for i in range(len(ds))]
    assert starts == [again.start(i) for i in range(len(ds))]
    assert starts != [other.start(i) for i in range(len(ds))]
    ds.set_epoch(1)
    epoch1 = [ds.start(i) for i in range(len(ds))]
    assert epoch1 != starts
    ds.set_epoch(0)
    assert [ds.start(i) for i in range(len(ds))] == starts
    for i in range(len(ds)):
        item = ds[i]
        mid = ds.ids[item["model"]]
        tk = toks[mid][0]
        s = starts[i]
        assert 0 <= s <= max(0, tk.n_tokens - ws)
        k = min(ws, tk.n_tokens)
        assert item["tokens"].shape == (ws, D) and item["positions"].shape == (ws, 3)
        assert torch.equal(item["tokens"][:k], tk.tokens[s : s + k])
        assert torch.equal(item["positions"][:k], tk.positions[s : s + k])
        assert item["mask"][k:].sum() == 0
    # long models get windows spread over their whole length
    long_starts = {s for i, s in enumerate(starts) if ds.ids[i % 3] == "resnet"}
    assert len(long_starts) > 10
    # a pickled copy (DataLoader workers) reads the same items
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[7]["tokens"], ds[7]["tokens"])


def test_dataloader_batches(store_and_tokens):
    store, _ = store_and_tokens
    ds = WindowDataset(store, ["resnet", "tiny"], 24, seed=0, windows_per_model=4)
    batch = next(iter(DataLoader(ds, batch_size=8, shuffle=False)))
    assert batch["tokens"].shape == (8, 24, D) and batch["tokens"].dtype == torch.float32
    assert batch["mask"].shape == (8, 24, D) and batch["positions"].dtype == torch.int64
    assert batch["model"].tolist() == [0, 1] * 4


def test_errors(store_and_tokens, tmp_path):
    store, _ = store_and_tokens
    with pytest.raises(WeightAtlasError, match="not in the token store"):
        store.window("nope", 0, 4)
    with pytest.raises(WeightAtlasError, match="not in the token store"):
        WindowDataset(store, ["nope"], 4)
    with pytest.raises(WeightAtlasError, match="no token store"):
        TokenStore(tmp_path / "missing")
    bad = tmp_path / "shard-bad.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(WeightAtlasError, match="not a readable token shard"):
        read_shard(bad)


# ------------------------------------------------------------- damaged shards (issue 27)


def _mlp_atlas(root) -> Atlas:
    """Eight tiny zoo MLPs, collected and tokenized by the real stages."""
    from core.collection.collect import collect
    from core.collection.specs import resolve_arch
    from core.models.families import build_from_config
    from core.models.io import save_model_dir
    from core.tokens.tokenize import tokenize

    for i in range(8):
        arch = resolve_arch("mlp", width=(16, 32)[i % 2])
        model = build_from_config(arch.config, i)
        save_model_dir(model, root / "models" / f"m{i}", arch.library, config=arch.config)
    collect(root / "atlas", overrides={"source": str(root / "models")}, progress=False)
    tokenize(root / "atlas", progress=False)
    return Atlas.open(root / "atlas")


def test_a_damaged_shard_is_one_line_naming_it_and_the_fix(tmp_path, capsys):
    import numpy as np
    from conftest import ci_backbone

    from core.backbone.model import save_backbone
    from core.cli import main
    from core.tokens.store import read_index

    atlas = _mlp_atlas(tmp_path)
    index = read_index(atlas.tokens_dir)
    assert all(m["checksum"].startswith("bsum64:") for m in index["models"].values())
    save_backbone(ci_backbone(), atlas.backbone_dir)
    (shard,) = {m["shard"] for m in index["models"].values()}
    path = atlas.tokens_dir / shard
    good = path.read_bytes()
    mid = len(good) // 2
    block = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert block != good[mid : mid + 4096]
    path.write_bytes(good[:mid] + block + good[mid + 4096 :])  # 4 KB overwritten mid-file

    store = TokenStore(atlas.tokens_dir)
    hit = []
    for m in store.ids:
        try:
            store.get(m)
        except WeightAtlasError as e:
            hit.append(str(e))
    assert hit and all(shard in h and "weightatlas tokenize" in h for h in hit), hit
    capsys.readouterr()
    assert main(["embed", str(atlas.root)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("weightatlas")]  # after the bar
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("weightatlas embed: error:") and f"{shard} is damaged" in lines[0]
    assert "delete that shard" in lines[0]
    # the fix the line gives: delete the shard, re-run tokenize; embed then runs
    path.unlink()
    assert main(["tokenize", str(atlas.root)]) == 0
    assert path.read_bytes() == good
    assert len(TokenStore(atlas.tokens_dir).ids) == 8
    assert main(["embed", str(atlas.root)]) == 0, capsys.readouterr().err


def test_a_store_without_checksums_still_reads(tmp_path):
    """Atlases tokenized before checksums open and read as before: the demo's token store with
    the checksums taken out of its index reads the same tokens."""
    import json
    import shutil
    from pathlib import Path

    from core.atlas import TokenTable

    demo = Path(__file__).resolve().parents[1] / "assets" / "demo" / "tokens"
    old = tmp_path / "tokens"
    shutil.copytree(demo, old)
    index = json.loads((old / TokenTable.INDEX).read_text())
    for entry in index["models"].values():
        entry.pop("checksum", None)
    (old / TokenTable.INDEX).write_text(json.dumps(index))
    store = TokenStore(old)
    assert store.ids and all("checksum" not in store.entry(m) for m in store.ids)
    got = store.get(store.ids[0])
    assert torch.equal(got.tokens, TokenStore(demo).get(store.ids[0]).tokens)
    assert got.tokens.shape == (store.n_tokens(store.ids[0]), store.token_size)
