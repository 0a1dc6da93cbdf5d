"""Verdict rules of the report (issue 25): a verdict says only what its numbers support.

Each rule runs on a small synthetic result table shaped like the JSON its stage writes.
"""

from __future__ import annotations

import pytest

from core.embeddings.probes import target_noise
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


def test_sign_test_and_paired_verdict() -> None:
    assert report.sign_test(16, 16) == pytest.approx(2 / 2**16)
    assert report.sign_test(8, 16) == 1.0 and report.sign_test(0, 0) == 1.0
    # two huge outliers move a mean, not a paired median: 7 of 14 wins is no effect
    pairs = [(0.5, 0.5 + d) for d in (0.01, -0.01) * 7] + [(0.5, 9.0), (0.5, 11.0)]
    out, text = report.paired_verdict(pairs)
    assert out == "inconclusive" and "9 of 16" in text
    out, _ = report.paired_verdict([(0.3, 2.0 + i) for i in range(10)])
    assert out == "agree"
    out, _ = report.paired_verdict([(2.0 + i, 0.3) for i in range(10)])
    assert out == "disagree"


def _layers(arm_values: dict[str, list[float]]) -> list[dict]:
    return [
        {"model": f"m{i}", "layer": name, "kind": "norm", "w1_over_std": v}
        for name, values in arm_values.items()
        for i, v in enumerate(values)
    ]


def test_padding_line_pairs_batchnorm_weights_and_biases_apart() -> None:
    """The demo's numbers in small: padding hurts batch-norm weights (token 2-9 vs masked
    0.4-0.7) while token reconstructs the biases better; pooled medians (0.55 vs 0.52) and
    outlier-driven means hid both."""
    token = _layers(
        {
            "bn.weight": [1.9, 5.3, 8.6, 3.0, 5.5, 3.7],
            "bn.bias": [0.04, 0.1, 0.09, 0.07, 0.18, 0.11],
        }
    )
    masked = _layers(
        {
            "bn.weight": [0.56, 0.65, 0.71, 0.46, 0.39, 0.47],
            "bn.bias": [0.4, 0.35, 0.35, 0.53, 0.32, 0.28],
        }
    )
    gen = {"mean": 0.2, "std": 0.01}
    mln = {"modes": {"token": {"layers": token}, "masked": {"layers": masked, "generation": gen}}}
    lines = [ln for ln in report.mln_verdicts(mln) if "padding" in ln]
    assert len(lines) == 2
    assert lines[0].startswith("- **agree**") and "batch-norm weights" in lines[0]
    assert lines[1].startswith("- **disagree**") and "batch-norm biases" in lines[1]
    assert "6 of 6 pairs" in lines[0] and "0 of 6 pairs" in lines[1]


def test_composition_below_the_token_floor_is_not_testable() -> None:
    def comp(tokens: int, d: float, s: float) -> dict:
        gen = lambda m: {"generation": {"mean": m, "std": 0.005}, "tokens": tokens}  # noqa: E731
        return {"chance": 0.103, "variants": {"diverse": gen(d), "single-family": gen(s)}}

    (line,) = report.composition_verdicts(comp(4989, 0.099, 0.114))
    assert line.startswith(f"- **{NOT_TESTABLE}**") and "4,989 tokens" in line and "45 M" in line
    (line,) = report.composition_verdicts(comp(60_000_000, 0.099, 0.104))
    assert line.startswith("- **inconclusive**") and "both at chance" in line
    (line,) = report.composition_verdicts(comp(4989, 0.40, 0.20))  # above chance: a result
    assert line.startswith("- **agree**") and "below 001 Table 12" in line


def test_the_second_modality_gets_verdicts() -> None:
    gen = {
        "finetuned_test_losses": [0.691, 0.690],
        "random_finetuned_test_losses": [0.608, 0.581],
        "finetuned_test_accuracies": [0.775, 0.775],
        "random_finetuned_test_accuracies": [0.775, 0.775],
        "chance_accuracy": 0.5,
    }
    arm = lambda r2, g: {"generation": g, "heldout_sequence": {"r2_weights": r2,  # noqa: E731
                         "per_model": {"a": r2, "b": r2 + 0.01, "c": r2 - 0.01}}}  # fmt: skip
    mod = {
        "config": {"finetune_epochs": 1, "target_arch": "zoo:gpt2"},
        "target_task": "seq-brackets",
        "arms": {"images-only": arm(0.048, gen), "both": arm(0.016, {})},
    }
    loss, acc, own = report.modality_verdicts(mod)
    assert loss.startswith("- **disagree**") and "by test loss" in loss and "R² of" in loss
    assert acc.startswith("- **inconclusive**") and "by test accuracy" in acc
    assert own.startswith("- **disagree**") and "not 001's" in own
    assert "experiment_modality.md" in report.VERDICTS


def test_training_table_names_every_selection_metric_the_trainer_can_record():
    """The training table labels the kept step by what the trainer selected on (a backbone
    selected on rec+knn must not be labelled as selected on reconstruction)."""
    from core.backbone.config import SELECT_METRIC
    from core.backbone.selection import SCORE_METRIC
    from core.experiments.report import SELECTION_METRICS

    assert set(SELECTION_METRICS) == {SELECT_METRIC, SCORE_METRIC}
    assert "k-NN" in SELECTION_METRICS[SCORE_METRIC]
    assert "k-NN" not in SELECTION_METRICS[SELECT_METRIC]
