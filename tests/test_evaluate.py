"""Probes (split by training run, embeddings vs s(W)) and the per-layer reconstruction report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, ci_backbone

from core.atlas import Atlas, read_json
from core.backbone.model import BACKBONE_PRESETS, Backbone, BackboneConfig, save_backbone
from core.collection.facts import run_of
from core.config import build_config
from core.embeddings.embed import embed
from core.embeddings.encode import EmbedConfig, pooled_dim
from core.embeddings.fidelity import wasserstein1
from core.embeddings.probes import ProbeConfig, probe_split
from core.embeddings.statistics import DEPTH_BINS, STAT_NAMES, weight_statistics


def _rows(runs: int, epochs: int, split_of_run) -> list[dict]:
    rows = []
    for r in range(runs):
        for e in range(1, epochs + 1):
            family = "cnn" if r % 2 else "mlp"
            rows.append(
                {
                    "id": f"zoo/{family}-digits10-r{r}-e{e}",
                    "family": family,
                    "split": split_of_run(r, e),
                    "labels": {"family": family, "task": "digits10", "run": r, "epoch": e},
                }
            )
    return rows


def _assert_no_leak(rows, train, test):
    keys = np.array([run_of(r) for r in rows])
    assert not set(keys[train]) & set(keys[test])
    assert train.sum() and test.sum() and (train ^ test).all()


def test_probe_split_by_run_from_manifest():
    rows = _rows(10, 3, lambda r, e: "test" if r in (2, 7) else ("val" if r == 4 else "train"))
    train, test, how = probe_split(rows, ProbeConfig(min_side=3))
    assert how == "manifest"
    _assert_no_leak(rows, train, test)
    assert sorted({r["labels"]["run"] for r, t in zip(rows, test) if t}) == [2, 7]


def test_probe_split_never_leaks_a_run_even_if_the_manifest_does():
    # a manifest that puts one run's checkpoints on both sides: the probe re-splits by run
    rows = _rows(8, 4, lambda r, e: "test" if (r == 1 or (r == 3 and e == 4)) else "train")
    train, test, how = probe_split(rows, ProbeConfig(min_side=3))
    assert how == "group-shuffle"
    _assert_no_leak(rows, train, test)
    # too few test models: also a grouped split
    rows = _rows(8, 3, lambda r, e: "train")
    train, test, how = probe_split(rows, ProbeConfig(min_side=3))
    assert how == "group-shuffle"
    _assert_no_leak(rows, train, test)


def test_weight_statistics_fixed_length_and_values():
    from core.tokens.plan import tokenize_state_dict

    torch.manual_seed(0)
    shallow = {"a.weight": torch.randn(8, 4), "a.bias": torch.randn(8)}
    deep = {f"l{i}.weight": torch.randn(16, 16) * (i + 1) for i in range(7)}
    feats = []
    for sd in (shallow, deep):
        tok = tokenize_state_dict(sd, "dense", 16)
        feats.append(weight_statistics(tok.tokens, tok.mask, tok.positions))
    assert feats[0].shape == feats[1].shape == ((DEPTH_BINS + 1) * len(STAT_NAMES),)
    # whole-model statistics: the last block, computed from the real values only
    allv = torch.cat([v.flatten() for v in shallow.values()]).double().numpy()
    np.testing.assert_allclose(feats[0][-7:-5], [allv.mean(), allv.std()], rtol=1e-6)
    np.testing.assert_allclose(feats[0][-5:], np.quantile(allv, [0, 0.25, 0.5, 0.75, 1]), rtol=1e-6)
    # depth bins of the deep model: std grows with depth as the weights were scaled
    stds = feats[1][1 : DEPTH_BINS * 7 : 7]
    assert np.all(np.diff(stds) > 0)


def test_wasserstein1_matches_scipy():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(0.3, 2.0, size=500)
    assert wasserstein1(a, b) == pytest.approx(wasserstein_distance(a, b), rel=1e-9)


@pytest.fixture(scope="module")
def probe_atlas(atlas_factory) -> Path:
    """zoo (mlp on wine + digits, cnn on digits; 3 runs each) -> collect -> tokenize -> embed."""
    atlas = atlas_factory(TINY, ci_backbone())
    embed(atlas)
    return atlas


def test_evaluate_writes_probe_table_for_both_feature_sets(probe_atlas):
    from core.embeddings.probes import evaluate

    out = evaluate(probe_atlas, overrides={"min_side": 3})
    res = read_json(Atlas(probe_atlas).results_dir / "probes.json")
    assert res["split"]["shared_runs"] == [] and out["split"]["shared_runs"] == []
    assert res["split"]["n_train"] + res["split"]["n_test"] == len(Atlas(probe_atlas).accepted())
    latent = ci_backbone().cfg.latent_dim
    assert res["features"]["embedding+depth"] == 5 * latent
    assert res["features"]["embedding"] == pooled_dim(latent, EmbedConfig().pooling)
    for fs in ("embedding", "embedding+depth", "s(W)"):
        for target in ("test_accuracy", "epoch", "generalization_gap"):
            v = res["results"][fs][target]
            assert v["metric"] == "r2" and v["value"] is not None and v["value"] <= 1.0
        for target in ("family", "task"):
            v = res["results"][fs][target]
            assert v["metric"] == "accuracy" and 0.0 <= v["value"] <= 1.0
    for fs in ("embedding", "embedding+depth", "s(W)"):  # grouped K-fold over all runs
        for target, v in res["results"][fs].items():
            assert v["cv_folds"] >= 2 and np.isfinite(v["cv_mean"]) and v["cv_std"] >= 0, target
    # s(W) separates tasks: wine MLPs and digit models have very different weights
    assert res["results"]["s(W)"]["task"]["value"] >= 0.75
    for fs in ("embedding", "s(W)"):  # every table carries its baseline
        assert res["results"][fs]["family"]["majority"] == res["results"][fs]["family"]["baseline"]
        assert res["results"][fs]["test_accuracy"]["baseline"] <= 0.0 + 1e-9
    md = (Atlas(probe_atlas).results_dir / "probes.md").read_text()
    assert "| test_accuracy | R² |" in md and "| family | accuracy |" in md
    assert "fold cross-validation" in md and " ± " in md and "| baseline |" in md
    # the map quality is written beside the probes and returned with them
    mq = read_json(Atlas(probe_atlas).results_dir / "map_quality.json")
    assert mq["spaces"]["embedding"]["family_accuracy"] == out["map_quality"]["spaces"][
        "embedding"]["family_accuracy"]  # fmt: skip
    assert "2-D UMAP" in (Atlas(probe_atlas).results_dir / "map_quality.md").read_text()


def test_evaluate_probes_inside_each_homogeneous_zoo(probe_atlas):
    """Each family x task pair of the fixture is one size with 3 runs: a zoo at min 3 runs."""
    from core.embeddings.probes import evaluate

    out = evaluate(probe_atlas, overrides={"min_side": 3, "zoo_min_runs": 3, "outer_folds": 3})
    rows = {r["id"]: r for r in Atlas(probe_atlas).accepted()}
    assert sorted(out["zoos"]) == ["cnn/digits10/w8d2", "mlp/digits10/w16d1", "mlp/wine/w16d1"]
    for key, z in out["zoos"].items():
        members = [r for r in rows.values() if key.startswith(f"{r['family']}/")
                   and (r.get("labels") or {}).get("task") == z["task"]]  # fmt: skip
        assert z["n_models"] == len(members) and z["n_runs"] == 3
        assert z["split"]["shared_runs"] == []
        assert set(z["results"]) == {"embedding", "embedding+depth", "s(W)", "embedding+s(W)", "W"}
        assert z["features"]["embedding+s(W)"] == z["features"]["embedding"] + z["features"]["s(W)"]
        # digits10's 360 test images: a test accuracy's standard error of up to 0.026
        noise = z["noise"]
        if z["task"] == "digits10":
            assert noise["n_test_examples"] == 360 and 0.0 < noise["test_accuracy_se"] <= 0.027
        # W: every trainable value of the model (the zoo's params label counts them)
        assert z["features"]["W"] == members[0]["labels"]["params"]
        for res in z["results"].values():
            assert set(res) == {"test_accuracy", "epoch", "generalization_gap"}
            for r in res.values():
                assert r["cv_folds"] == 3 and "cv_baseline_mean" in r and "no_signal" in r
    # the backbone the embedding came from says whether it was trained (its kept step)
    kept = read_json(Atlas(probe_atlas).backbone_dir / "config.json").get("step")
    assert out["backbone_step"] == kept
    md = (Atlas(probe_atlas).results_dir / "probes.md").read_text()
    assert "**Within one zoo**" in md and "*cnn/digits10/w8d2*" in md
    assert "standard error" in md and "360 test examples" in md
    assert md.index("**Within one zoo**") < md.index("**Pooled over the whole collection**")
    assert run_of(next(iter(rows.values())))


def _grouped(n_runs: int, per_run: int, seed: int):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"run{r}" for r in range(n_runs)], per_run)
    cls = np.repeat(rng.integers(0, 3, n_runs), per_run)  # one class per run, like a task
    return rng, groups, cls


@pytest.mark.parametrize("seed", range(5))
def test_no_signal_flag_fires_on_noise_and_not_on_a_learnable_target(seed):
    from core.embeddings.probes import fit_classifier, fit_regression

    cfg = ProbeConfig()
    rng, groups, cls = _grouped(40, 4, seed)
    tr = np.isin(groups, [f"run{r}" for r in range(30)])
    noise = rng.normal(size=(len(groups), 20))
    r = fit_classifier(
        noise[tr], cls[tr].astype(str), groups[tr], noise[~tr], cls[~tr].astype(str), cfg
    )
    assert r["no_signal"] and r["C"] == pytest.approx(10**cfg.c_min_log10)
    y = rng.normal(size=len(groups))
    r = fit_regression(noise[tr], y[tr], groups[tr], noise[~tr], y[~tr], cfg)
    assert r["no_signal"] and r["alpha"] == pytest.approx(10**cfg.alpha_max_log10)
    # learnable: the class shifts three of the features; y is linear in the features
    signal = noise.copy()
    signal[:, :3] += 1.5 * np.eye(3)[cls]
    r = fit_classifier(
        signal[tr], cls[tr].astype(str), groups[tr], signal[~tr], cls[~tr].astype(str), cfg
    )
    assert not r["no_signal"] and r["value"] > r["majority"] + 0.2
    y = noise @ rng.normal(size=20) + 0.1 * rng.normal(size=len(groups))
    r = fit_regression(noise[tr], y[tr], groups[tr], noise[~tr], y[~tr], cfg)
    assert not r["no_signal"] and r["value"] > 0.9 > r["baseline"]


def test_grouped_cross_validation_never_puts_a_run_on_both_sides(monkeypatch):
    from core.embeddings import probes as ev

    rng, groups, cls = _grouped(12, 5, 0)
    x = rng.normal(size=(len(groups), 4))
    seen = []

    def spy(x_tr, y_tr, g_tr, x_te, y_te, cfg):
        seen.append((set(g_tr), set(np.unique(x_te[:, 0]))))
        test_runs = {groups[np.flatnonzero(x[:, 0] == v)[0]] for v in x_te[:, 0]}
        assert not set(g_tr) & test_runs, "a run on both sides"
        # and the inner C / alpha search splits the train side by run as well
        for a, b in ev._cv_splits(g_tr, cfg.cv_folds):
            assert not set(g_tr[a]) & set(g_tr[b])
        return {"value": 0.0, "baseline": 0.0}

    out = ev.cross_validated(spy, x, cls, groups, ProbeConfig(outer_folds=4))
    assert out["cv_folds"] == 4 and len(seen) == 4
    assert set().union(*[s for s, _ in seen]) == set(groups)


def test_task_target_only_for_pairs_with_two_runs_and_zoo_grouping():
    from core.embeddings.probes import homogeneous_zoos, task_pairs

    def row(fam, task, run, epoch, width=8, zoo=None):
        labels = {"family": fam, "task": task, "run": run, "epoch": epoch, "width": width,
                  "depth": 2, **({"zoo": zoo} if zoo else {})}  # fmt: skip
        return {"id": f"{fam}-{task}-r{run}-e{epoch}", "family": fam, "labels": labels}

    rows = [row("cnn", "digits10", r, e) for r in range(3) for e in (1, 2)]
    rows += [row("mlp", "wine", 0, e) for e in (1, 2)]  # one run: never in the task probe
    rows += [row("cnn", "digits10", r, 1, width=16, zoo="cnn/digits10") for r in range(3, 7)]
    keep = task_pairs(rows, 2)
    assert keep.tolist() == [True] * 6 + [False] * 2 + [True] * 4
    zoos = homogeneous_zoos(rows, 3)
    assert list(zoos) == ["cnn/digits10", "cnn/digits10/w8d2"]
    assert zoos["cnn/digits10"] == list(range(8, 12)) and zoos["cnn/digits10/w8d2"] == list(
        range(6)
    )
    assert homogeneous_zoos(rows, 4) == {"cnn/digits10": list(range(8, 12))}


def test_layer_report_records(probe_atlas):
    from core.embeddings.fidelity import layer_report
    from core.tokens.store import TokenStore

    store = TokenStore(Atlas(probe_atlas).tokens_dir)
    mid = next(i for i in store.ids if "cnn" in i)
    recs = layer_report(probe_atlas, mid, max_values=50)
    layers = store.layers(mid)
    assert [r["name"] for r in recs] == [e.name for e in layers]
    for r, e in zip(recs, layers):
        assert r["shape"] == list(e.shape) and r["n_values"] == int(np.prod(e.shape))
        assert len(r["original"]) == min(50, r["n_values"]) == len(r["reconstructed"])
        assert r["mse"] >= 0 and (r["w1_over_std"] is None or r["w1_over_std"] >= 0)
        if r["n_values"] <= 50 and r["r2"] is not None:  # metrics agree with the returned values
            o, x = np.array(r["original"]), np.array(r["reconstructed"])
            assert r["mse"] == pytest.approx(np.mean((o - x) ** 2), rel=1e-6)
            assert r["r2"] == pytest.approx(1 - r["mse"] / o.var(), rel=1e-6)
    # original values are the model's real weights (evenly subsampled)
    from core.tokens.plan import detokenize

    sd = detokenize(store.get(mid).tokens, layers)
    w = sd[layers[0].name].flatten().double().numpy()
    idx = np.linspace(0, w.size - 1, min(50, w.size)).round().astype(int)
    np.testing.assert_allclose(recs[0]["original"], w[idx], rtol=1e-6)


def test_depth_pooling_bins_layers_like_s_of_w():
    from core.embeddings.statistics import DEPTH_BINS, depth_pooled

    layer_z = np.arange(16, dtype=np.float64).reshape(8, 2)  # 8 layers, 2 dims
    overall = np.array([-1.0, -1.0])
    got = depth_pooled(layer_z, overall).reshape(DEPTH_BINS + 1, 2)
    assert np.array_equal(got[:DEPTH_BINS], layer_z.reshape(DEPTH_BINS, 2, 2).mean(1))
    assert np.array_equal(got[-1], overall)
    # a model with fewer layers than bins fills the empty bins with its overall vector
    few = depth_pooled(layer_z[:2], overall).reshape(DEPTH_BINS + 1, 2)
    assert sum(np.array_equal(row, overall) for row in few[:DEPTH_BINS]) == DEPTH_BINS - 2


def test_encode_decode_accuracy_exact_through_an_identity_backbone(probe_atlas, tmp_path):
    """A skip backbone with room for every feature (latent 80 >= 64 + 2, a test device, not a
    preset), its skip set to the tokens' PCA, decodes every weight back (accuracy unchanged,
    R² 1); the atlas' random plain backbone does not (R² far below 1)."""
    from core.generation.evaluation import reconstruction_accuracy
    from core.tokens.store import TokenStore

    cfg = build_config(
        BackboneConfig, BACKBONE_PRESETS, "ci",
        overrides={"token_size": 64, "latent_dim": 80, "skip": True},
    )  # fmt: skip
    torch.manual_seed(0)
    model = Backbone(cfg)
    store = TokenStore(Atlas(probe_atlas).tokens_dir)
    toks = [
        torch.as_tensor(store.get(m).tokens) * torch.as_tensor(store.get(m).mask) for m in store.ids
    ]
    assert model.init_skip_pca(torch.cat(toks)) == pytest.approx(1.0)
    ident = save_backbone(model, tmp_path / "identity")
    splits = ("train", "val", "test")
    rows = reconstruction_accuracy(probe_atlas, "cnn", "digits10", splits, backbone_dir=ident)
    cnn = [
        r for r in Atlas(probe_atlas).accepted()
        if r["labels"]["family"] == "cnn" and r["labels"]["task"] == "digits10"
    ]  # fmt: skip
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in cnn)
    for r in rows:
        assert r["r2"] == pytest.approx(1.0, abs=1e-5)
        assert r["accuracy_decoded"] == pytest.approx(r["accuracy_original"], abs=1e-9)
        assert 0.0 <= r["accuracy_decoded_bn"] <= 1.0  # the CNNs have batch norm
    random = reconstruction_accuracy(probe_atlas, "cnn", "digits10", splits)
    assert all(r["r2"] < 0.5 for r in random)


def test_backbone_step_reads_the_kept_step(tmp_path):
    from core.atlas import write_json
    from core.embeddings.probes import backbone_step

    assert backbone_step(tmp_path) is None  # no config.json
    write_json(tmp_path / "config.json", {"preset": "demo"})
    assert backbone_step(tmp_path) is None  # does not say
    write_json(tmp_path / "config.json", {"preset": "demo", "step": 0})
    assert backbone_step(tmp_path) == 0  # the untrained initial code
    write_json(tmp_path / "config.json", {"step": 1800, "selected": {"step": 1800}})
    assert backbone_step(tmp_path) == 1800
