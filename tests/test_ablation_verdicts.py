"""core.experiments.report.ablation_verdicts: the MLN, composition and modality verdicts."""

from __future__ import annotations

from core.experiments import report
from core.experiments.report import NOT_TESTABLE


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
