"""core.experiments.report.rules: the sign test and paired verdicts every report rule builds on."""

from __future__ import annotations

import pytest

from core.experiments import report


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
