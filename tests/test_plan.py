"""core.tokens.plan: exact round trips through every registered scheme, padding, positions, exclusions."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import assert_exact
from safetensors.torch import save_file
from torch import nn

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

TIMM_ARCHS = ["resnet18", "vit_small_patch16_224", "convnext_tiny"]


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
