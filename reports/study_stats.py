"""Intervals and generated sentences of the MAST study report (reports/study_report.py).

Method (stated in the report): every number is a test-set accuracy of one pretraining seed. Per
arm: the mean over seeds with a two-sided 95% Student-t interval, mean ± t_{0.975, n−1}·s/√n.
Differences: MAST minus a control *paired by seed* (both pretrained from the same seed), the
t-interval of the n per-seed differences. These intervals cover the variation between
pretraining seeds as it shows on this fixed test set; they do not add test-set sampling on top
(a hierarchical bootstrap over seeds and test items is the statistics issue's job). With n = 3
the t quantile is 4.30, so only large or very consistent differences exclude 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import t as student_t


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with a 95% t-interval (lo/hi None when n < 2)."""
    mean: float
    lo: float | None
    hi: float | None
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)

    def text(self, with_sign: bool = False) -> str:
        """``71.2 [66.0, 76.4]``, or with_sign ``+4.9 [+1.2, +8.6]``; ``(1 seed)`` instead of an interval."""
        fmt = signed if with_sign else (lambda x: f"{x:.1f}")
        return f"{fmt(self.mean)} (1 seed)" if self.lo is None else f"{fmt(self.mean)} [{fmt(self.lo)}, {fmt(self.hi)}]"


def t_interval(values: list[float], level: float = 0.95) -> Interval:
    """Mean and two-sided Student-t interval; no interval for a single value."""
    if not values:
        raise ValueError("t_interval: expected at least one value, got none")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, None, None, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Interval | None:
    """t-interval of a[s] − b[s] over the seeds s both have; None when they share none."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return t_interval([a[s] - b[s] for s in seeds])


def signed(x: float) -> str:
    """``+1.2`` / ``-0.4``; a value that rounds to zero prints as ``+0.0`` (never ``-0.0``)."""
    return f"{x + 0.0:+.1f}" if round(x, 1) != 0 else "+0.0"


def verdict(task: str, control: str, diff: Interval) -> str:
    """One generated sentence: does the paired interval of MAST − control exclude 0?"""
    if diff.lo is None:
        return (f"{task}: MAST − {control} = {signed(diff.mean)} points on 1 seed; no interval, "
                "so no statement about the difference.")
    span = f"{signed(diff.mean)} points, 95% CI [{signed(diff.lo)}, {signed(diff.hi)}] over {diff.n} paired seeds"
    if diff.lo > 0:
        return f"{task}: MAST is higher than {control} ({span}); the interval excludes 0."
    if diff.hi < 0:
        return f"{task}: MAST is lower than {control} ({span}); the interval excludes 0."
    return f"{task}: no distinguishable difference between MAST and {control} ({span}); the interval includes 0."
