"""Contrastive views: every permutation view preserves the model's function; tokens follow."""

from __future__ import annotations

import pytest
import torch

from core.backbone.views import (
    canonical_permutation,
    canonical_permutations,
    canonicalize_state_dict,
    canonicalize_tokens,
    permute_state_dict,
    permute_tensor,
    permute_tokens,
    unit_groups,
)
from core.models.families import FAMILIES, build_family
from core.models.io import config_of
from core.models.registry import library_of, logits
from core.tokens.plan import tokenize_state_dict
from core.zoos.tasks import get_task

# family -> (zoo family to build, task, width, depth, unit groups at least)
CASES = {
    "mlp": ("mlp", "digits10", 16, 2, 2),
    "cnn": ("cnn", "digits10", 8, 3, 3),
    "bert": ("bert", "seq-brackets", 16, 2, 2 * 4),
    "gpt2": ("gpt2", "seq-brackets", 16, 2, 2 * 4),
    "vit": ("vit", "digits10", 16, 2, 2 * 4),
    "timm-vit": ("timm-vit", "digits10", 16, 2, 2 * 4),
    "swin": ("swin", "digits16", 8, 1, 2 + 2 + 3),
    "convnext": ("convnext", "digits10", 8, 1, 2),
    "timm-convnext": ("timm-convnext", "digits10", 8, 1, 4),
    "resnet": ("resnet", "digits10", 8, 1, 2),
    "timm-resnet": ("timm-resnet", "digits10", 8, 1, 4),
}


def _model(case: str) -> tuple[torch.nn.Module, dict, str, torch.Tensor]:
    fam, task_name, width, depth, _ = CASES[case]
    info = get_task(task_name).info
    model = build_family(fam, info, width, depth, seed=1).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # trained-like weights: no zero biases, non-trivial norms and stats
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.add_(0.1 * torch.randn(t.shape, generator=g))
    if info.kind == "sequence":
        x = torch.randint(2, info.vocab_size, (4, info.seq_len), generator=g)
    else:
        x = torch.randn(4, *info.input_shape, generator=g)
    library = library_of(config_of(model, FAMILIES[fam].library))
    from core.models.registry import family_of

    family = family_of(config_of(model, library))
    return model, config_of(model, library), family, x


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_permutation_view_leaves_the_models_outputs_unchanged(case):
    model, config, family, x = _model(case)
    sd = model.state_dict()
    groups = unit_groups(family, {k: tuple(v.shape) for k, v in sd.items()}, config)
    assert len(groups) >= CASES[case][4], [g.units for g in groups]
    with torch.no_grad():
        ref = logits(model, x)
        for seed in range(3):
            perm = permute_state_dict(sd, groups, torch.Generator().manual_seed(seed))
            assert any(not torch.equal(perm[k], sd[k]) for k in sd)  # a real permutation
            model.load_state_dict(perm)
            torch.testing.assert_close(logits(model, x), ref, atol=1e-5, rtol=1e-5)
        # each group alone preserves the function too
        for g in groups:
            model.load_state_dict(permute_state_dict(sd, [g], torch.Generator().manual_seed(9)))
            torch.testing.assert_close(logits(model, x), ref, atol=1e-5, rtol=1e-5)
        model.load_state_dict(sd)


def test_a_group_that_forgets_a_reader_changes_the_function():
    """The test above can fail: dropping the head's columns from the last group breaks it."""
    model, config, family, x = _model("mlp")
    sd = model.state_dict()
    groups = unit_groups(family, {k: tuple(v.shape) for k, v in sd.items()}, config)
    last = groups[-1]
    broken = type(last)(last.units, tuple(m for m in last.members if m.name != "head.weight"))
    with torch.no_grad():
        ref = logits(model, x)
        model.load_state_dict(
            permute_state_dict(sd, groups[:-1] + [broken], torch.Generator().manual_seed(0))
        )
        assert (logits(model, x) - ref).abs().max() > 1e-3


@pytest.mark.parametrize("scheme", ["dense", "sparse"])
@pytest.mark.parametrize("case", ["cnn", "gpt2", "timm-vit"])
def test_permuted_tokens_are_the_tokens_of_the_permuted_model(case, scheme):
    model, config, family, _ = _model(case)
    sd = model.state_dict()
    tok = tokenize_state_dict(sd, scheme, 64, model=model)
    shapes = {e.name: tuple(e.shape) for e in tok.layers}  # the store's view: no buffers
    groups = unit_groups(family, shapes, config)
    assert groups
    perm_sd = permute_state_dict(sd, groups, torch.Generator().manual_seed(5))
    want = tokenize_state_dict(perm_sd, scheme, 64, model=model)
    got = permute_tokens(tok.tokens, tok.layers, groups, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, want.tokens, atol=0, rtol=0)
    assert not torch.equal(got, tok.tokens)
    # a span permutes only the tensors it overlaps
    e = next(e for e in tok.layers if e.name in {m.name for g in groups for m in g.members})
    part = permute_tokens(
        tok.tokens, tok.layers, groups, torch.Generator().manual_seed(5), (e.offset, e.offset + 1)
    )
    inside = slice(e.offset, e.offset + e.count)
    torch.testing.assert_close(part[inside], want.tokens[inside], atol=0, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_permuted_copy_has_the_originals_canonical_form(case):
    """Canonicalization undoes any function-preserving permutation, and keeps the function."""
    model, config, family, x = _model(case)
    sd = model.state_dict()
    tok = tokenize_state_dict(sd, "dense", 64, model=model)
    keys = {e.name for e in tok.layers}  # the order is set by tokenized tensors only
    groups = unit_groups(family, {k: tuple(v.shape) for k, v in sd.items()}, config)
    canon = canonicalize_state_dict(sd, groups, keys)
    assert any(not torch.equal(canon[k], sd[k]) for k in sd)  # it did reorder something
    with torch.no_grad():
        ref = logits(model, x)
        model.load_state_dict(canon)
        torch.testing.assert_close(logits(model, x), ref, atol=1e-5, rtol=1e-5)
    for seed in range(2):
        perm = permute_state_dict(sd, groups, torch.Generator().manual_seed(seed))
        again = canonicalize_state_dict(perm, groups, keys)
        for k in sd:
            torch.testing.assert_close(again[k], canon[k], atol=0, rtol=0, msg=k)
    # the token-level form: the tokens of the canonical model, from a permuted copy's tokens
    shapes = {e.name: tuple(e.shape) for e in tok.layers}
    tgroups = unit_groups(family, shapes, config)
    want = tokenize_state_dict(canon, "dense", 64, model=model).tokens
    perm_tok = permute_tokens(tok.tokens, tok.layers, tgroups, torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        canonicalize_tokens(perm_tok, tok.layers, tgroups), want, atol=0, rtol=0
    )
    torch.testing.assert_close(
        canonicalize_tokens(tok.tokens, tok.layers, tgroups), want, atol=0, rtol=0
    )
    mine = perm_tok.clone()  # in place (embed --model: a big model's only copy of its tokens)
    assert canonicalize_tokens(mine, tok.layers, tgroups, inplace=True) is mine
    torch.testing.assert_close(mine, want, atol=0, rtol=0)


def _reference_permutations(groups, get):
    """Group ``i``'s canonical permutation read from the tensors with groups ``0..i-1``'s
    permutations applied from scratch (quadratic; what ``canonical_permutations`` must equal)."""
    perms = []
    for i, g in enumerate(groups):

        def current(name, i=i):
            t = get(name)
            return None if t is None else permute_tensor(name, t, groups[:i], perms[:i])

        perms.append(canonical_permutation(g, current))
    return perms


@pytest.mark.parametrize("case", ["bert", "gpt2", "cnn"])
def test_canonical_permutations_equal_the_quadratic_reference(case):
    """One pass over current tensors gives exactly the permutations of applying every earlier
    group again for each group (heads, then the dims inside each head; a CNN's chain)."""
    model, config, family, _ = _model(case)
    sd = model.state_dict()
    groups = unit_groups(family, {k: tuple(v.shape) for k, v in sd.items()}, config)
    names = [m.name for g in groups for m in g.members]
    assert len(names) > len(set(names))  # some tensor is read by several groups
    some = {k for i, k in enumerate(sorted(sd)) if i % 3}  # untokenized tensors: None
    perm = permute_state_dict(sd, groups, torch.Generator().manual_seed(4))
    for get in (sd.get, perm.get, lambda n: sd[n] if n in some else None):
        want = _reference_permutations(groups, get)
        assert any(not torch.equal(p, torch.arange(len(p))) for p in want)
        got = canonical_permutations(groups, get)
        assert len(got) == len(want) == len(groups)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


def test_unknown_family_has_no_groups():
    assert unit_groups("regnet", {"a.weight": (4, 4)}, {}) == []
    assert unit_groups(None, {}, None) == []


def test_view_maker_permutes_the_second_window_reproducibly(atlas_factory):
    from conftest import TINY

    from core.atlas import Atlas
    from core.backbone.views import ViewMaker, store_groups
    from core.tokens.store import TokenStore

    a = Atlas.open(atlas_factory(TINY))
    store = TokenStore(a.tokens_dir)
    ids = [i for i in store.ids if "cnn" in i][:2] + [i for i in store.ids if "mlp" in i][:1]
    groups = store_groups(a, store, ids)
    assert all(groups[i] for i in ids)  # cnn and mlp have unit groups
    ws = 16
    same = ViewMaker(store, groups, ws, seed=0, positive="same", permute=True)
    for mid in ids:
        first = store.window(mid, 0, ws)
        w = same.window(7, mid, 0)
        assert int(w["start"]) == 0 and torch.equal(w["positions"], first["positions"])
        assert torch.equal(w["mask"], first["mask"])
        assert not torch.equal(w["tokens"], first["tokens"])  # permuted
        assert torch.equal(w["tokens"], same.window(7, mid, 0)["tokens"])  # row 7: the same
    plain = ViewMaker(store, {}, ws, seed=0, positive="same", permute=True)
    assert torch.equal(plain.window(3, ids[0], 0)["tokens"], store.window(ids[0], 0, ws)["tokens"])
    anywhere = ViewMaker(store, groups, ws, seed=0, positive="any", permute=False)
    big = max(ids, key=store.n_tokens)
    starts = {int(anywhere.window(r, big, 0)["start"]) for r in range(20)}
    assert len(starts) > 1 and max(starts) <= store.n_tokens(big) - ws


def test_canonical_store_serves_every_window_in_canonical_form(atlas_factory):
    """Training on ``train.canonical``: windows and chunks are cut from the canonical tokens."""
    from conftest import TINY

    from core.atlas import Atlas
    from core.backbone.views import CanonicalStore, store_groups
    from core.tokens.store import TokenStore

    a = Atlas.open(atlas_factory(TINY))
    store = TokenStore(a.tokens_dir)
    groups = store_groups(a, store, store.ids)
    canon = CanonicalStore(store, groups)
    mid = next(i for i in store.ids if groups[i])
    tok = store.get(mid)
    want = canonicalize_tokens(tok.tokens, tok.layers, groups[mid])
    assert not torch.equal(want, tok.tokens)
    torch.testing.assert_close(canon.get(mid).tokens, want, atol=0, rtol=0)
    n = store.n_tokens(mid)
    parts = [w["tokens"][: min(5, n - s)] for s, w in canon.iter_chunks(mid, 5)]
    torch.testing.assert_close(torch.cat(parts), want, atol=0, rtol=0)
    w = canon.window(mid, n - 2, 5)  # past the end: padding stays zero and masked
    assert torch.equal(w["tokens"][2:], torch.zeros_like(w["tokens"][2:]))
    assert torch.equal(w["mask"], store.window(mid, n - 2, 5)["mask"])
    assert canon.token_size == store.token_size and mid in canon and len(canon) == len(store)
