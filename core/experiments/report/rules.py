"""The rules every report verdict follows: at chance, overlapping spreads, robust
spreads, paired sign tests, the thresholds, and the one-line verdict format.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

AT_CHANCE_MARGIN = 0.02  # an arm within max(its std, this) of chance is "at chance"


def at_chance(mean: float, std: float, chance: float) -> bool:
    """Whether an accuracy ``mean ± std`` cannot be told from chance."""
    return mean - chance <= max(std, AT_CHANCE_MARGIN)


def compare(
    a: tuple[float, float],
    b: tuple[float, float],
    chance: float | None = None,
    higher_is_better: bool = True,
) -> tuple[str, str]:
    """Verdict on the claim "a is better than b" from ``(mean, spread)`` of each arm.

    ``inconclusive`` when both arms sit at chance or when the intervals mean ± spread overlap;
    else ``agree`` (a better) or ``disagree`` (b better).

    Returns:
        ``(outcome, effect text)``, e.g. ``("agree", "+0.120 (spreads 0.030, 0.020)")``.
    """
    (ma, sa), (mb, sb) = a, b
    effect = ma - mb
    text = f"{effect:+.3f} (spreads {sa:.3f}, {sb:.3f})"
    if chance is not None and at_chance(ma, sa, chance) and at_chance(mb, sb, chance):
        return "inconclusive", text + f"; both at chance ({chance:.3f})"
    if abs(effect) <= sa + sb:
        return "inconclusive", text + "; spreads overlap"
    better = effect > 0 if higher_is_better else effect < 0
    return ("agree" if better else "disagree"), text


def verdict_line(outcome: str, what: str, text: str) -> str:
    """One verdict line of a report section: ``- **outcome**: what: text``."""
    return f"- **{outcome}**: {what}: {text}"


# Thresholds of the verdict rules (issue 25: a verdict says only what its numbers support).
PROBE_MIN_R2 = 0.5  # parity "agrees" only where both probes reach this R² (003: ~0.95 on MNIST)
# 001 Table 12: sampled ResNet-18s fall to random guessing below ~45 M training tokens
GENERATION_TOKEN_FLOOR = 45_000_000
TABLE5_EPOCH = 2  # 003 Table 5 compares sampled and prompt models after 2 fine-tuning epochs
NOT_TESTABLE = "not testable"


MAD_TO_STD = 1.4826  # median absolute deviation x this = std for a normal distribution


def robust_spread(values: Sequence[float]) -> tuple[float, float]:
    """``(median, 1.4826 x median absolute deviation)``: a centre and spread that a few
    outlying values do not drive (for normal data, the mean and the std)."""
    if not values:
        raise ValueError("robust_spread needs at least one value")
    m = statistics.median(values)
    return m, MAD_TO_STD * statistics.median(abs(v - m) for v in values)


SIGN_TEST_ALPHA = 0.05  # paired comparisons: a majority counts when the sign test rejects 50/50


def sign_test(wins: int, n: int) -> float:
    """Two-sided exact sign-test p-value of ``wins`` of ``n`` paired comparisons (ties left
    out before counting): the chance of a split at least this uneven under 50/50."""
    if n == 0:
        return 1.0
    k = min(wins, n - wins)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_verdict(
    pairs: list[tuple[float, float]], lower_is_better: bool = True, alpha: float = SIGN_TEST_ALPHA
) -> tuple[str, str]:
    """Verdict on "the first arm is better" from paired values: the median of each arm, the
    median paired difference and an exact sign test (robust: a few outlying layers move
    neither). ``agree`` / ``disagree`` when the sign test rejects an even split at ``alpha``,
    else ``inconclusive``."""
    diffs = [x - y for x, y in pairs if x != y]
    better = sum((d < 0) if lower_is_better else (d > 0) for d in diffs)
    p = sign_test(better, len(diffs))
    med_a = statistics.median(x for x, _ in pairs)
    med_b = statistics.median(y for _, y in pairs)
    med_d = statistics.median(x - y for x, y in pairs)
    text = (
        f"medians {med_a:.3f} vs {med_b:.3f}, median paired difference {med_d:+.3f}; first arm "
        f"better in {better} of {len(diffs)} pairs (sign test p = {p:.2g})"
    )
    if p >= alpha:
        return "inconclusive", text
    return ("agree" if better > len(diffs) - better else "disagree"), text
