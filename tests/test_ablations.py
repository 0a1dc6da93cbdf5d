"""Pure parts of the ablations and report tables (fast; the trained ablations run in the
notebook and pipeline tests):

    .venv/bin/pytest tests/test_ablations.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from core.atlas import Atlas, append_jsonl
from core.errors import WeightAtlasError
from core.experiments import ablations as abl
from core.experiments import report
from core.experiments.ablations import (
    ablation_config,
    budget_subsample,
    by_kind,
    composition_prompts,
    run_ablations,
    sibling_atlas,
)
from core.experiments.pipeline import table_numbers
from core.experiments.report import collection_table, md_table, write_table


def _row(mid: str, family: str, split: str = "train", **labels) -> dict:
    return {
        "id": mid,
        "status": "accepted",
        "family": family,
        "split": split,
        "path": f"hub/{mid}",
        "params": 100,
        "labels": labels,
    }


def test_budget_subsample_stays_within_budget_and_spreads_over_families() -> None:
    rows = [_row(f"{f}-{i}", f) for f in ("a", "b", "c") for i in range(6)]
    n_tokens = {r["id"]: 10 for r in rows}
    n_tokens.update({f"c-{i}": 40 for i in range(6)})
    picked = budget_subsample(rows, n_tokens, budget=60, seed=0)
    assert sum(n_tokens[r["id"]] for r in picked) <= 60
    fams = [r["family"] for r in picked]
    assert set(fams) == {"a", "b", "c"}  # one c (40) fits next to one a and one b
    assert fams.count("a") == fams.count("b") == 1
    assert budget_subsample(rows, n_tokens, 60, seed=0) == picked  # deterministic
    assert budget_subsample(rows, n_tokens, 5, seed=0) == []


def test_by_kind_averages_defined_values_per_kind() -> None:
    recs = [
        {"kind": "conv", "w1_over_std": 1.0},
        {"kind": "conv", "w1_over_std": 3.0},
        {"kind": "norm", "w1_over_std": None},  # constant layer: no std
        {"kind": "norm", "w1_over_std": 0.5},
    ]
    out = by_kind(recs)
    assert out == {"all": pytest.approx(1.5), "conv": 2.0, "norm": 0.5}


def test_composition_prompts_are_the_best_of_one_size() -> None:
    rows = [
        _row("c1", "cnn", task="digits10", width=8, depth=2, val_accuracy=0.7),
        _row("c2", "cnn", task="digits10", width=16, depth=2, val_accuracy=0.9),
        _row("c3", "cnn", task="digits10", width=16, depth=2, val_accuracy=0.8),
        _row("c4", "cnn", task="wine", width=16, depth=2, val_accuracy=0.99),
        _row("m1", "mlp", task="digits10", width=16, depth=2, val_accuracy=0.95),
    ]
    prompts, size = composition_prompts(rows, "cnn", "digits10", 5)
    assert [r["id"] for r in prompts] == ["c2", "c3"] and size == (16, 2)
    with pytest.raises(WeightAtlasError, match="no vit models"):
        composition_prompts(rows, "vit", "digits10", 1)


def test_sibling_atlas_points_into_the_parent_and_is_reused(tmp_path: Path) -> None:
    parent = Atlas.create(tmp_path / "atlas")
    parent.update_info(token_scheme="dense", token_size=64, sources=["zoo"])
    rows = [_row("m1", "cnn"), _row("m2", "mlp", split="val")]
    sib = sibling_atlas(parent, "tok-sparse", rows)
    assert sib.root == parent.root / "ablations" / "tok-sparse"
    got = {r["id"]: r for r in sib.manifest()}
    assert Path(got["m1"]["path"]) == (parent.root / "hub" / "m1").resolve()
    assert got["m2"]["split"] == "val"
    info = sib.info()
    assert info["derived_from"] == str(parent.root.resolve()) and "token_scheme" not in info
    assert sibling_atlas(parent, "tok-sparse", rows).root == sib.root  # same ids: reused
    (sib.tokens_dir).mkdir()
    (sib.tokens_dir / "index.json").write_text("{}")
    with pytest.raises(WeightAtlasError, match="another model selection"):
        sibling_atlas(parent, "tok-sparse", rows[:1])


def test_ablation_config_rejects_unknown_keys_and_ablations(tmp_path: Path) -> None:
    assert ablation_config("ci", {"steps": "7"}).steps == 7
    with pytest.raises(ValueError, match="unknown AblationConfig key"):
        ablation_config("ci", {"stepz": 7})
    with pytest.raises(WeightAtlasError, match="unknown ablation"):
        run_ablations(tmp_path, "ci", only=("mln", "bogus"))


def test_mln_arms_share_one_budget_and_differ_only_in_the_normalization() -> None:
    from core.backbone.config import build_configs

    cfg = ablation_config("demo", {})
    assert abl.mln_budget(cfg) == {"latent_dim": 56, "skip": True, "skip_init": "random"}
    built = {m: build_configs(cfg.backbone_preset, {**abl.mln_budget(cfg), **o})
             for m, o in abl.MLN_ARMS.items()}  # fmt: skip
    for b, _ in built.values():
        assert (b.latent_dim, b.skip, b.skip_init) == (56, True, "random")
    differ = {k for b, t in built.values() for k, v in {**vars(b), **vars(t)}.items()
              if v != {**vars(built["none"][0]), **vars(built["none"][1])}[k]}  # fmt: skip
    assert differ == {"loss_norm", "token_norm"}
    plain = ablation_config("demo", {"mln_skip": False, "mln_latent_dim": None})
    assert abl.mln_budget(plain) == {}


def test_same_run_fills_backbone_fields_added_since(tmp_path: Path) -> None:
    """A backbone trained before a BackboneConfig field existed is the same run when the new
    field's default is asked for (ablation backbones are reused, not retrained)."""
    from core.backbone.config import build_configs
    from core.config import to_dict

    over = {"steps": 5, "latent_dim": 8}
    b, t = build_configs("ci", over)
    saved = {k: v for k, v in to_dict(b).items() if k != "skip_init"}
    (tmp_path / "config.json").write_text(
        json.dumps({"preset": "ci", "backbone": saved, "train": to_dict(t)})
    )
    assert abl.same_run(tmp_path, "ci", over)
    assert not abl.same_run(tmp_path, "ci", {**over, "skip": True, "skip_init": "random"})


def test_tables_write_na_never_nan(tmp_path: Path) -> None:
    a = Atlas.create(tmp_path / "atlas")
    path = write_table(a, "t", ["x", "y", "z"], [["a", float("nan"), 3], ["b", None, 1e-5]])
    text = path.read_text()
    assert "nan" not in text.lower() and text.count("n/a") == 2
    assert table_numbers(text) == [3.0, 1e-5]
    with pytest.raises(ValueError, match="cells"):
        md_table(["x"], [[1, 2]])


def test_collection_table_counts_families_splits_and_accuracy(tmp_path: Path) -> None:
    a = Atlas.create(tmp_path / "atlas")
    rows = [
        _row("c1", "cnn", "train", task="digits10", test_accuracy=0.5),
        _row("c2", "cnn", "test", task="digits10", test_accuracy=0.7),
        _row("m1", "mlp", "val", task="wine", test_accuracy=0.9),
        {**_row("x", "vit"), "status": "rejected", "reason": "pickle-only: model.bin"},
    ]
    append_jsonl(a.manifest_path, rows)
    text = collection_table(a).read_text()
    assert "3 of 4 candidate models accepted" in text and "pickle-only (1)" in text
    lines = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    cnn = [c.strip() for c in lines["cnn"].strip("|").split("|")]
    assert cnn == ["cnn", "2", "0", "1", "0", "1", "1", "100", "0.600"]
    vit = [c.strip() for c in lines["vit"].strip("|").split("|")]
    assert vit[1:3] == ["0", "1"] and vit[-1] == "n/a"
    assert all(math.isfinite(v) for v in table_numbers(text))


def test_compare_calls_overlap_and_chance_inconclusive() -> None:
    assert report.compare((0.8, 0.05), (0.5, 0.05))[0] == "agree"
    assert report.compare((0.5, 0.05), (0.8, 0.05))[0] == "disagree"
    out, text = report.compare((0.6, 0.1), (0.5, 0.1))
    assert out == "inconclusive" and "overlap" in text and "+0.100" in text
    out, text = report.compare((0.125, 0.01), (0.10, 0.0), chance=0.11)  # both within 0.02
    assert out == "inconclusive" and "chance" in text
    assert report.compare((0.2, 0.01), (0.5, 0.01), higher_is_better=False)[0] == "agree"
    # a clear gain above chance is not swallowed by the chance rule
    assert report.compare((0.6, 0.02), (0.1, 0.0), chance=0.1)[0] == "agree"


def _arm_summary(std_norm: float, w1_norm: float, r2: float, acc: float) -> dict:
    spread = {
        "r2": {"conv": {"mean": r2, "std": 0.02, "models": 4}},
        "std_ratio": {
            "norm": {"mean": std_norm, "std": 0.05, "models": 4},
            "bias": {"mean": std_norm, "std": 0.05, "models": 4},
        },  # fmt: skip
        "w1_over_std": {k: {"mean": w1_norm, "std": 0.02, "models": 4} for k in ("conv", "norm")},
    }
    return {
        "loss_norm": "x",
        "token_norm": False,
        "r2_median": {"conv": r2, "norm": 0.1},
        "std_ratio_median": {"conv": 0.8, "norm": std_norm},
        "w1_median": {"conv": 0.1, "norm": w1_norm},
        "spread": spread,
        "val_r2": 0.5,
        "generation": {"task": "digits10", "mean": acc, "std": 0.01},
    }


def test_mln_tables_and_verdicts_from_a_result() -> None:
    modes = {
        "none": _arm_summary(0.1, 0.9, 0.0, 0.10),
        "token": _arm_summary(1.5, 2.0, 0.2, 0.10),
        "layer": _arm_summary(0.7, 0.5, 0.44, 0.11),
        "masked": _arm_summary(0.7, 0.3, 0.43, 0.10),
    }
    result = {
        "modes": modes, "heldout": ["a", "b"], "zoo": "cnn/digits10", "models": 120,
        "train_models": 80, "prompts": ["p1"], "chance": 0.102,
        "config": {"backbone_preset": "ci", "steps": 600, "seed": 0, "target_arch": "zoo:cnn",
                   "sample_n": 12, "sample_keep": 4},
        "pca_reference": {"rank": 32, **_arm_summary(0.8, 0.2, 0.53, 0.0)},
    }  # fmt: skip
    md = abl.mln_markdown(result)
    assert "| masked | 0.430 (0.020) |" in md and "PCA rank 32 (reference)" in md
    assert "Median per-layer std ratio" in md and "| 0.102 |" in md
    assert all(math.isfinite(v) for v in table_numbers(md))
    lines = report.mln_verdicts(result)
    text = "\n".join(lines)
    assert "**agree**: Fig. 6: without normalization norm layers are squashed" in text
    assert "**agree**: Fig. 6: normalizing with padding biases norm layers" in text
    assert "**agree**: Fig. 6: MLN matches the norm distributions closest" in text
    assert "**agree**: §4.1: MLN replaces LWLN with comparable conv" in text
    assert "**inconclusive**: Table 1" in text and "both at chance" in text


def test_probe_verdicts_follow_the_parity_claim() -> None:
    def res(m, s, base=-0.02):
        return {"cv_mean": m, "cv_std": s, "cv_baseline_mean": base, "cv_baseline_std": 0.01}

    out = {"backbone_step": 1200, "zoos": {"cnn/digits10": {"results": {
        "embedding": {"test_accuracy": res(0.80, 0.05), "epoch": res(0.40, 0.05), "generalization_gap": res(0.0, 0.05)},
        "s(W)": {"test_accuracy": res(0.85, 0.05), "epoch": res(0.90, 0.05), "generalization_gap": res(0.01, 0.05)},
    }}}}  # fmt: skip
    lines = report.probe_verdicts(out)
    assert (
        lines[0].startswith("- **agree**: cnn/digits10, test_accuracy") and "comparable" in lines[0]
    )
    assert (
        lines[1].startswith("- **disagree**: cnn/digits10, epoch") and "s(W) is ahead" in lines[1]
    )
    assert lines[2].startswith("- **inconclusive**: cnn/digits10, generalization_gap")
