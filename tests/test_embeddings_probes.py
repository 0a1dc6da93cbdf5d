"""core.embeddings.probes: probes (split by training run, embeddings vs s(W)) and the per-layer reconstruction report."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ci_backbone

from core.atlas import Atlas, read_json
from core.collection.facts import run_of
from core.embeddings.encode import EmbedConfig, pooled_dim
from core.embeddings.probes import ProbeConfig, probe_split, target_noise


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


def test_target_noise_reads_the_task_test_size() -> None:
    rows = [
        {"labels": {"task": "digits10", "test_accuracy": a, "generalization_gap": g}}
        for a, g in ((0.9, 0.01), (0.8, -0.02), (0.5, 0.0))
    ]
    n = target_noise(rows)
    assert n["n_test_examples"] == 360 and n["task"] == "digits10"
    assert n["test_accuracy_se"] == pytest.approx((0.8 * 0.2 / 360) ** 0.5)
    assert n["generalization_gap_std"] == pytest.approx(0.012472, abs=1e-5)
    assert n["gap_reliability"] == 0.0  # the gap's whole spread is within its noise
    probe = [{"labels": {**r["labels"], "task": "shapes16-probe"}} for r in rows]
    assert (
        target_noise(probe)["test_accuracy_se"] < 0.0065
        and target_noise(probe)["gap_reliability"] > 0.7
    )
    unknown = target_noise([{"labels": {"task": "imagenet", "test_accuracy": 0.5}}] * 2)
    assert unknown["test_accuracy_se"] is None and unknown["n_test_examples"] is None


def test_evaluate_measures_permutation_ratios_in_both_forms(probe_atlas):
    """Issue 25's permutation figure: the atlas embedding (canonical form, as embedded) puts every
    permuted copy on its original; the same backbone on raw tokens (what it learned) does not."""
    from core.embeddings.invariance import permutation_summary
    from core.embeddings.probes import ProbeConfig, evaluate, permutation
    from core.embeddings.table import embedded_canonical, embedded_pooling

    out = evaluate(probe_atlas, overrides={"min_side": 3})
    perm = out["permutation"]
    assert perm["canonical"] is True and embedded_canonical(probe_atlas) is True
    assert perm["pooling"] == embedded_pooling(probe_atlas) and perm["target"] == 0.1
    for fam in ("mlp", "cnn"):  # TINY's families, both with permutation views
        emb, learned = perm["embedding"][fam], perm["learned"][fam]
        assert emb["models"] == learned["models"] >= 2
        assert emb["max_ratio"] == pytest.approx(0.0, abs=1e-6)
        assert learned["median_ratio"] > 1e-3 and learned["max_ratio"] >= learned["median_ratio"]
    results = Atlas(probe_atlas).results_dir
    assert read_json(results / "permutation.json") == perm  # its own file, like map_quality
    assert read_json(results / "probes.json")["permutation"] == perm
    md = (results / "permutation.md").read_text()
    learned_mlp = perm["learned"]["mlp"]["median_ratio"]
    assert "| family | embedding ratio | learned ratio | learned max | models |" in md
    assert f"| mlp | 0.000 | {learned_mlp:.3f} |" in md and "canonical form" in md
    line = permutation_summary(perm)
    assert line.startswith(
        "permutation ratio (copy distance / median inter-model distance): cnn 0.000 (learned "
    )
    assert f"mlp 0.000 (learned {learned_mlp:.3f})" in line and "target <= 0.1" in line
    # not measured: said so, not a zero
    off = permutation(Atlas(probe_atlas), None, ProbeConfig(permutation_copies=0))
    assert off == {"skipped": "permutation_copies is 0"}
    assert "not measured" in permutation_summary(off)
