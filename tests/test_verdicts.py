"""core.experiments.report.verdicts (issue 25): a probe or generation verdict says only what its
numbers support.

Each rule runs on a small synthetic result table shaped like the JSON its stage writes.
"""

from __future__ import annotations

from core.experiments import report
from core.experiments.report import NOT_TESTABLE


def _probe(m: float, s: float, base: float = -0.02) -> dict:
    return {"cv_mean": m, "cv_std": s, "cv_baseline_mean": base, "cv_baseline_std": 0.01}


def test_probe_verdict_needs_a_trained_backbone() -> None:
    e, w = _probe(0.30, 0.05), _probe(0.80, 0.05)
    out, why = report.probe_verdict("test_accuracy", e, w, step=0)
    assert out == NOT_TESTABLE and "step 0" in why and "untrained" in why
    out, why = report.probe_verdict("test_accuracy", e, w, step=None)
    assert out == NOT_TESTABLE and "backbone step" in why
    out, why = report.probe_verdict("test_accuracy", e, w, step=900)
    assert out == "disagree" and "kept step 900" in why


def test_probe_parity_agrees_only_above_the_minimum_level() -> None:
    # 0.33 vs 0.41 overlap: the demo's mlp epoch line, which once read "agree"
    out, why = report.probe_verdict("epoch", _probe(0.334, 0.064), _probe(0.407, 0.071), 900)
    assert out == "inconclusive" and "weak" in why
    out, _ = report.probe_verdict("epoch", _probe(0.93, 0.03), _probe(0.95, 0.02), 900)
    assert out == "agree"
    # the threshold is a parameter of the rule
    out, _ = report.probe_verdict(
        "epoch", _probe(0.334, 0.064), _probe(0.407, 0.071), 900, None, 0.3
    )
    assert out == "agree"


def test_gap_within_the_test_accuracy_standard_error_is_noise() -> None:
    e, w = _probe(0.10, 0.1), _probe(0.15, 0.1)
    noisy = {"test_accuracy_se": 0.020, "generalization_gap_std": 0.018, "n_test_examples": 360}
    out, why = report.probe_verdict("generalization_gap", e, w, 900, noisy)
    assert out == NOT_TESTABLE and "noise at this test size" in why and "360" in why
    clean = {"test_accuracy_se": 0.004, "generalization_gap_std": 0.03, "n_test_examples": 6000}
    out, _ = report.probe_verdict("generalization_gap", e, w, 900, clean)
    assert out == "inconclusive"  # tested: both weak, spreads overlap
    # the noise rule is about the gap only
    out, _ = report.probe_verdict("test_accuracy", _probe(0.9, 0.02), _probe(0.9, 0.02), 9, noisy)
    assert out == "agree"


def test_probe_verdict_lines_name_the_step_the_combined_set_and_the_noise() -> None:
    results = {
        "embedding": {"test_accuracy": _probe(0.91, 0.02), "generalization_gap": _probe(0.0, 0.1)},
        "s(W)": {"test_accuracy": _probe(0.93, 0.02), "generalization_gap": _probe(0.05, 0.1)},
        "embedding+s(W)": {"test_accuracy": _probe(0.95, 0.01)},
    }
    noise = {"test_accuracy_se": 0.021, "generalization_gap_std": 0.015, "n_test_examples": 360}
    out = {"backbone_step": 0, "zoos": {"cnn/digits10": {"results": results, "noise": noise}}}
    lines = report.probe_verdicts(out)
    assert len(lines) == 2 and all(ln.startswith(f"- **{NOT_TESTABLE}**") for ln in lines)
    out["backbone_step"] = 1500
    acc, gap = report.probe_verdicts(out)
    assert acc.startswith("- **agree**: cnn/digits10, test_accuracy") and "kept step 1500" in acc
    assert "embedding+s(W) 0.950 ± 0.010" in acc
    assert gap.startswith(f"- **{NOT_TESTABLE}**") and "SE 0.0210 (360 test examples)" in gap
    out["backbone_step"] = 0  # both reasons named
    gap = report.probe_verdicts(out)[1]
    assert "untrained" in gap and "noise at this test size" in gap


def _generation(batchnorm: str, source: str, prompts: list[float]) -> dict:
    table = []
    for setting, task in (("in-distribution", "digits10"), ("held-out", "gratings16")):
        for init, base in (("sampled", 0.22), ("random", 0.09)):
            row = {"setting": setting, "task": task, "init": init, "n_models": 10}
            for e, step in ((0, 0.0), (1, 0.2), (3, 0.5)):
                row[f"epoch{e}_mean"], row[f"epoch{e}_std"] = base + step, 0.03
            table.append(row)
    prompt = {"source": source, "prompt_val_accuracy": prompts, "prompt_batchnorm": batchnorm}
    return {
        "config": {"epochs": [0, 1, 3]},
        "table": table,
        "prompts": {"in-distribution": {**prompt, "source": "atlas"}, "held-out": prompt},
    }


def test_samples_are_compared_with_their_prompts_like_for_like() -> None:
    lines = report.generation_verdicts(_generation("re-estimated", "fresh", [0.94, 0.96, 0.97]))
    ind = [ln for ln in lines if "in-distribution" in ln and "prompts" in ln]
    assert len(ind) == 1 and ind[0].startswith("- **disagree**")  # 0.22 vs 0.96
    assert "0.220 ± 0.030 vs prompts' validation accuracy 0.957" in ind[0]
    (t5,) = [ln for ln in lines if "Table 5" in ln]
    assert "after 2 fine-tuning epochs (here epoch 1)" in t5 and "sampled test 0.420" in t5
    assert "epoch 0" not in t5.split(":")[1]
    # batch norm estimated differently in the two arms: no verdict either way
    lines = report.generation_verdicts(_generation("as trained", "fresh", [0.30, 0.28]))
    prompt_lines = [ln for ln in lines if "prompt" in ln]
    assert len(prompt_lines) == 3
    assert all(ln.startswith(f"- **{NOT_TESTABLE}**") for ln in prompt_lines)
    assert all("batch-norm statistics differ" in ln for ln in prompt_lines)
    # results written before prompts carried the flag are not like for like either
    old = _generation("as trained", "atlas", [0.95])
    for p in old["prompts"].values():
        del p["prompt_batchnorm"]
    assert all(
        ln.startswith(f"- **{NOT_TESTABLE}**")
        for ln in report.generation_verdicts(old)
        if "prompt" in ln
    )


def _perm_result(canonical: bool = True) -> dict:
    learned = {
        "median_distance": 11.0,
        "models": 12,
        "cnn": {"median_ratio": 0.265, "max_ratio": 0.41, "models": 6},
        "mlp": {"median_ratio": 0.04, "max_ratio": 0.09, "models": 6},
    }
    zero = {"median_ratio": 0.0, "max_ratio": 0.0, "models": 6}
    embedding = {"median_distance": 10.0, "models": 12, "cnn": zero, "mlp": zero}
    return {
        "embedding": embedding if canonical else learned,
        "learned": learned,
        "canonical": canonical,
        "pooling": "depth-mean+std",
        "copies": 1,
        "seed": 0,
        "target": 0.1,
    }


def test_permutation_verdicts_judge_what_the_backbone_learned() -> None:
    """Canonical form puts copies at 0 by construction: the verdict is on the learned figure."""
    lines = report.permutation_verdicts(_perm_result())
    assert len(lines) == 2
    cnn, mlp = lines
    assert cnn.startswith("- **disagree**: cnn, learned permutation ratio (raw tokens): 0.265")
    assert "vs target <= 0.1" in cnn and "6 models" in cnn
    assert "atlas embedding's 0.000 is canonical form's" in cnn and "not learned" in cnn
    assert mlp.startswith("- **agree**: mlp, learned permutation ratio (raw tokens): 0.040")
    # an atlas embedded on raw tokens: the embedding's figure is the learned one
    (cnn, _) = report.permutation_verdicts(_perm_result(canonical=False))
    assert cnn.startswith("- **disagree**: cnn, embedding permutation ratio (no canonical form")
    assert "canonical form's" not in cnn
    # not measured or an older result: no verdict
    assert report.permutation_verdicts({"skipped": "permutation_copies is 0"}) == []
    assert report.permutation_verdicts({}) == []


def _space(f: float, t: float, r: float) -> dict:
    return {"family_accuracy": f, "task_accuracy": t, "test_accuracy_r2": r}


def test_map_quality_verdicts_judge_each_space_against_s_w_and_the_reference() -> None:
    """The demo atlas' figures (session 7): family agrees, task is no better than the majority
    (with the ceiling a perfect task code would reach), R² is behind s(W)."""
    out = {
        "spaces": {
            "embedding": _space(0.939, 0.460, 0.236),
            "umap": _space(0.940, 0.452, 0.153),
            "pca": None,
            "s(W)": _space(0.973, 0.481, 0.471),
        },
        "reference": {**_space(0.299, 0.503, -0.005), "task_ceiling": 0.888},
    }
    lines = report.map_quality_verdicts(out)
    assert len(lines) == 6  # 3 figures x (embedding, UMAP); no PCA coordinates
    by = {line.split(": ")[1]: line for line in lines}
    assert by["family accuracy, embedding"].startswith("- **agree**")
    task = by["task accuracy, embedding"]
    assert task.startswith("- **disagree**") and "no better than the predictor" in task
    assert "majority task of the family 0.503, ceiling 0.888" in task
    r2 = by["test accuracy r2, embedding"]
    assert r2.startswith("- **disagree**") and "behind s(W) by more than 0.05" in r2
    assert "ceiling" not in r2
