"""Uncertainty of every number a report shows (PROTOCOLS.md "Uncertainty", docs/STATISTICS.md).

Two levels of noise: the finite test set (resample test items) and the pretraining seed (resample
seeds). All intervals are 95 % percentile-bootstrap intervals, seeded, so a report rebuilt from the
same records shows the same intervals.

- :func:`mean_interval`: one checkpoint, per-item scores (1/0 correctness, per-episode accuracy).
- :func:`group_interval`: a method with several pretraining seeds: hierarchical bootstrap over
  seeds and items (crossed: one item resample for every drawn seed, since all seeds are scored on
  the same test items).
- :func:`difference_interval`: method A − method B on the same test items, paired by item and,
  when both have the same seeds, by seed; otherwise seeds are drawn independently per method.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95 % interval; ``excludes_zero`` is what a report marks (†)."""
    value: float
    lo: float
    hi: float
    n_seeds: int = 1

    @property
    def excludes_zero(self) -> bool:
        return excludes_zero(self.lo, self.hi)


def excludes_zero(lo: float | None, hi: float | None) -> bool:
    """Whether the interval [lo, hi] lies on one side of 0 (what a report marks †); no interval never does."""
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bounds(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    alpha = (1 - level) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _as_groups(scores: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    groups = [np.asarray(scores, dtype=np.float64)] if np.ndim(scores[0]) == 0 else \
        [np.asarray(s, dtype=np.float64) for s in scores]
    if not groups or any(g.ndim != 1 or g.size == 0 for g in groups):
        raise ValueError("scores: expected one non-empty 1-D array per seed")
    return groups


def mean_interval(scores: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Mean of per-item ``scores`` with a percentile-bootstrap interval over items."""
    return group_interval([np.asarray(scores)], n_boot, seed)


def group_interval(groups: list[np.ndarray], n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Mean over seeds of each seed's mean score; hierarchical bootstrap over seeds and items.

    Seeds scored on the same test items (equal sizes: the suite's design, as :func:`difference_interval`
    requires) are crossed with them: each draw resamples the seeds, and one resample of the items serves
    every drawn seed (Owen 2007, "The pigeonhole bootstrap"). Resampling the items anew per seed, as for
    seeds nested over test sets of their own, treats k evaluations of one test set as k test sets: on
    simulated shared test sets it covered the truth 63-78 % of the time instead of 95 %
    (tests/transfer/test_stats.py). Seeds with item counts of their own are nested: items within each.
    """
    groups = _as_groups(groups)
    rng = _rng(seed)
    seeds = _draw_seeds(rng, len(groups), n_boot)
    draws = np.zeros(n_boot)
    value = float(np.mean([g.mean() for g in groups]))
    if len({g.size for g in groups}) == 1:  # crossed: the same items for every seed (one seed: items alone)
        stack, n_items = np.stack(groups), groups[0].size  # [seeds, items]
        for chunk in np.array_split(np.arange(n_boot), max(1, n_boot * n_items * len(groups) // _CHUNK)):
            means = stack[:, rng.integers(n_items, size=(chunk.size, n_items))].mean(axis=2)  # [seeds, chunk]
            draws[chunk] = means.T[np.arange(chunk.size)[:, None], seeds[chunk]].mean(1)
        return Interval(value, *_bounds(draws), n_seeds=len(groups))
    for j in range(len(groups)):  # nested: position j of the drawn seed list, its own item resample
        for s, g in enumerate(groups):
            rows = np.flatnonzero(seeds[:, j] == s)
            for chunk in np.array_split(rows, max(1, rows.size * g.size // _CHUNK)):
                draws[chunk] += g[rng.integers(g.size, size=(chunk.size, g.size))].mean(axis=1)
    draws /= len(groups)
    return Interval(value, *_bounds(draws), n_seeds=len(groups))


def difference_interval(a: list[np.ndarray], b: list[np.ndarray], n_boot: int = N_BOOT, seed: int = 0,
                        paired_seeds: bool | None = None) -> Interval:
    """(mean of A) − (mean of B), both scored on the same test items in the same order.

    Items are resampled once per draw and used for both methods (paired). Seeds are paired by
    position (``a[i]`` with ``b[i]``: the same pretraining seed) when ``paired_seeds``, else drawn
    independently; ``None`` pairs them when A and B have as many seeds.
    """
    a, b = _as_groups(a), _as_groups(b)
    sizes = {g.size for g in a + b}
    if len(sizes) != 1:
        raise ValueError(f"scores: A and B must be scored on the same test items, got sizes {sorted(sizes)}")
    if paired_seeds is None:
        paired_seeds = len(a) == len(b)
    elif paired_seeds and len(a) != len(b):
        raise ValueError(f"paired_seeds: A has {len(a)} seeds and B {len(b)}; paired seeds need as many")
    n_items = sizes.pop()
    rng = _rng(seed)
    seeds_a = _draw_seeds(rng, len(a), n_boot)
    seeds_b = seeds_a if paired_seeds else _draw_seeds(rng, len(b), n_boot)
    stack_a, stack_b = np.stack(a), np.stack(b)  # [seeds, items]
    draws = np.empty(n_boot)
    for chunk in np.array_split(np.arange(n_boot), max(1, n_boot * n_items // _CHUNK)):
        items = rng.integers(n_items, size=(chunk.size, n_items))
        mean_a = stack_a[:, items].mean(axis=2)  # [seeds, chunk]: every seed on the drawn items
        mean_b = stack_b[:, items].mean(axis=2)
        cols = np.arange(chunk.size)[:, None]
        draws[chunk] = mean_a.T[cols, seeds_a[chunk]].mean(1) - mean_b.T[cols, seeds_b[chunk]].mean(1)
    value = float(stack_a.mean() - stack_b.mean())
    return Interval(value, *_bounds(draws), n_seeds=min(len(a), len(b)))


_CHUNK = 2_000_000  # items resampled per vectorised block (memory ~16 MB)


def _draw_seeds(rng: np.random.Generator, n_seeds: int, n_boot: int) -> np.ndarray:
    """[n_boot, n_seeds] seed indices drawn with replacement (all zeros for one seed)."""
    if n_seeds == 1:
        return np.zeros((n_boot, 1), dtype=np.int64)
    return rng.integers(n_seeds, size=(n_boot, n_seeds))
