"""Every number of a report with its uncertainty, and every difference to the baseline with its interval.

docs/STATISTICS.md says which interval each number gets:

- a group's value is the mean over its pretraining seeds of each seed's metric;
- with per-item scores for every seed (probes: ``predictions.npz``), a 95 % interval from the
  hierarchical bootstrap (:func:`transfer.stats.group_interval`; with one seed it is the interval
  the task stored in its record);
- without them (detection, segmentation): the std over fine-tuning runs when the record has
  several, else the run is labelled a single run; with several pretraining seeds, their std;
- a difference to the baseline: :func:`transfer.stats.difference_interval` (items paired; seeds
  paired when both groups' records name the same pretraining seeds, see :func:`seeds_paired`),
  only when both sides have per-item scores on the same test items. It is marked (†) when the
  interval excludes 0.

All values in percent, as the records store them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reports.results import Results, finite
from transfer.stats import difference_interval, excludes_zero, group_interval


@dataclass(frozen=True)
class Stat:
    """A group's number: mean over seeds, its interval if it has one, and the per-seed values."""
    value: float
    lo: float | None = None
    hi: float | None = None
    per_seed: tuple[float, ...] = ()
    std: float | None = None  # without an interval: std over fine-tuning runs (n_runs > 1) or over seeds
    n_runs: int = 1  # fine-tuning runs behind a single seed's value

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    @property
    def seed_sd(self) -> float | None:
        """The spread over pretraining seeds (sample std); None with one seed."""
        return float(np.std(self.per_seed, ddof=1)) if self.n_seeds > 1 else None


@dataclass(frozen=True)
class Delta:
    """(group − baseline) with its 95 % interval when both have per-item scores."""
    value: float
    lo: float | None = None
    hi: float | None = None
    n_seeds: int = 1
    paired_seeds: bool = False  # the interval pairs the two groups' pretraining seeds (:func:`seeds_paired`)

    @property
    def marked(self) -> bool:
        """Distinguishable from zero at 95 %: the interval excludes 0 (a † in the tables)."""
        return excludes_zero(self.lo, self.hi)


def _ok(results: Results, name: str, task: str, metric: str) -> list[tuple[dict, float]]:
    out = []
    for record in results.seeds(name, task):
        value = finite((record.get("metrics") or {}).get(metric)) if record.get("status") == "ok" else None
        if value is not None:
            out.append((record, value))
    return out


def _all_scores(results: Results, runs: list[tuple[dict, float]], metric: str) -> list[np.ndarray] | None:
    scores = [results.scores(r, metric) for r, _ in runs]
    return scores if runs and all(s is not None and s.size for s in scores) else None


def seed_stat(results: Results, record: dict, metric: str) -> Stat | None:
    """One checkpoint's number as its task recorded it: stored interval, run std or few-shot ± ci95."""
    metrics = record.get("metrics") or {} if record.get("status") == "ok" else {}
    value = finite(metrics.get(metric))
    if value is None:
        return None
    stored = (record.get("intervals") or {}).get(metric) or {}
    if finite(stored.get("lo")) is not None and finite(stored.get("hi")) is not None:
        return Stat(value, float(stored["lo"]), float(stored["hi"]), (value,))
    ci = finite(metrics.get(f"{metric}_ci95"))  # a record from before the intervals: AugSelf's ±1.96·sem
    if ci is not None:
        return Stat(value, value - ci, value + ci, (value,))
    std = finite((record.get("metrics_std") or {}).get(metric))
    n_runs = max(1, len(record.get("seeds") or [])) if std is not None else 1
    return Stat(value, per_seed=(value,), std=std, n_runs=n_runs)


def group_stat(results: Results, name: str, task: str, metric: str) -> Stat | None:
    """The group's number (see module docstring); None when no seed has an ok value."""
    key = ("group", name, task, metric)
    if key not in results.cache:
        results.cache[key] = _group_stat(results, name, task, metric)
    return results.cache[key]


def _group_stat(results: Results, name: str, task: str, metric: str) -> Stat | None:
    runs = _ok(results, name, task, metric)
    if not runs:
        return None
    if len(runs) == 1:
        return seed_stat(results, runs[0][0], metric)
    values = tuple(v for _, v in runs)
    scores = _all_scores(results, runs, metric)
    if scores is None:
        return Stat(float(np.mean(values)), per_seed=values, std=float(np.std(values, ddof=1)))
    iv = group_interval(scores, seed=0)
    return Stat(float(np.mean(values)), 100 * iv.lo, 100 * iv.hi, values)


def delta(results: Results, name: str, baseline: str, task: str, metric: str) -> Delta | None:
    """``name`` − ``baseline`` on ``task``/``metric``; None when either has no value."""
    key = ("delta", name, baseline, task, metric)
    if key not in results.cache:
        results.cache[key] = _delta(results, name, baseline, task, metric)
    return results.cache[key]


def _delta(results: Results, name: str, baseline: str, task: str, metric: str) -> Delta | None:
    a, b = group_stat(results, name, task, metric), group_stat(results, baseline, task, metric)
    if a is None or b is None or name == baseline:
        return None
    value = a.value - b.value
    runs_a, runs_b = _ok(results, name, task, metric), _ok(results, baseline, task, metric)
    sa, sb = _all_scores(results, runs_a, metric), _all_scores(results, runs_b, metric)
    if sa is None or sb is None or len({s.size for s in sa + sb}) != 1:
        return Delta(value, n_seeds=min(a.n_seeds, b.n_seeds))
    paired = seeds_paired([r for r, _ in runs_a], [r for r, _ in runs_b])
    iv = difference_interval(sa, sb, seed=0, paired_seeds=paired)
    return Delta(value, 100 * iv.lo, 100 * iv.hi, iv.n_seeds, paired and len(sa) > 1)


def seeds_paired(a: list[dict], b: list[dict]) -> bool:
    """Whether two groups' seeds (records in ``seed_index`` order) pair one to one: both record the
    same pretraining seeds (same seed = same initial weights and data order); when a group's records
    do not say (checkpoints from other codebases, older records), by position when both have as many."""
    if len(a) != len(b):
        return False
    seeds_a, seeds_b = [r.get("pretrain_seed") for r in a], [r.get("pretrain_seed") for r in b]
    if None in seeds_a or None in seeds_b:
        return True
    return seeds_a == seeds_b
