"""Statistics of paired differences over seeds: mean ± standard deviation and a two-sided paired t-test."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Two-sided 95% quantiles of Student's t by degrees of freedom (table constants, not measurements).
T95 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042,
}  # fmt: skip


def t95(degrees: int) -> float:
    """The two-sided 95% t quantile for ``degrees`` >= 1 degrees of freedom; between table entries the
    next smaller one's (a slightly wider interval), beyond the table 30's."""
    if degrees < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {degrees}")
    return T95[max(d for d in T95 if d <= degrees)]


def clean(values: Sequence[float | None]) -> list[float]:
    """``values`` without None and NaN (a metric with no ground truth in its range)."""
    return [v for v in values if v is not None and not math.isnan(v)]


def mean_std(values: Sequence[float | None]) -> str:
    """``"m ± s"`` over seeds (one decimal), ``"m"`` for one value, ``"-"`` for none."""
    values = clean(values)
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def judge(differences: Sequence[float]) -> str | None:
    """``"a gain"``, ``"a loss"`` or ``"not distinguishable from zero"``: the two-sided paired t-test at
    95% of the mean of per-seed differences against 0; None with fewer than two seeds."""
    if len(differences) < 2:
        return None
    mean, spread = statistics.mean(differences), statistics.stdev(differences)
    bound = t95(len(differences) - 1) * spread / math.sqrt(len(differences))
    if mean > bound:
        return "a gain"
    if mean < -bound:
        return "a loss"
    return "not distinguishable from zero"


def verdict(differences: Sequence[float]) -> str:
    """The mean paired difference, its spread, and :func:`judge`'s word."""
    word = judge(differences)
    if word is None:
        return f"{mean_std(differences)} (one seed: no spread to judge it by)" if differences else "no data"
    return (
        f"{statistics.mean(differences):+.1f} ± {statistics.stdev(differences):.1f} over "
        f"{len(differences)} seeds, {word} at 95% confidence"
    )


def seen(differences: Sequence[float]) -> str:
    """How a difference reads: the test's word with several seeds, the sign alone with one."""
    word = judge(differences)
    if word is not None:
        return word
    if not differences:
        return "not measured"
    return "higher (one seed)" if statistics.mean(differences) > 0 else "not higher (one seed)"
