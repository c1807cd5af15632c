"""The intervals every report shows (transfer/stats.py), checked against problems with a known answer."""
from __future__ import annotations

import numpy as np
import pytest

from transfer.stats import difference_interval, group_interval, mean_interval


def test_bootstrap_interval_has_its_nominal_coverage():
    rng = np.random.default_rng(123)
    p, n, trials = 0.7, 200, 1000
    hits = 0
    for t in range(trials):
        iv = mean_interval(rng.random(n) < p, n_boot=1000, seed=t)
        hits += iv.lo <= p <= iv.hi
    assert 0.93 <= hits / trials <= 0.97, hits / trials


def test_identical_predictions_give_a_zero_interval():
    rng = np.random.default_rng(0)
    seeds = [rng.random(300) < q for q in (0.5, 0.6, 0.7)]
    iv = difference_interval(seeds, [s.copy() for s in seeds])
    assert (iv.value, iv.lo, iv.hi) == (0.0, 0.0, 0.0) and not iv.excludes_zero


def test_known_shift_is_covered_and_detected():
    rng = np.random.default_rng(1)
    truth = rng.random(2000)
    a = [(truth < 0.80).astype(float) for _ in range(3)]
    b = [(truth < 0.70).astype(float) for _ in range(3)]
    iv = difference_interval(a, b)
    assert iv.lo <= 0.10 <= iv.hi and iv.excludes_zero and iv.value == pytest.approx(0.10, abs=0.01)


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(2)
    items = rng.random(500)
    steady = [(items < 0.6).astype(float)] * 3
    noisy = [(items < q).astype(float) for q in (0.45, 0.6, 0.75)]
    one = group_interval(steady)
    many = group_interval(noisy)
    assert many.hi - many.lo > 2 * (one.hi - one.lo) and many.n_seeds == 3
    assert group_interval([steady[0]]).n_seeds == 1


def test_unpaired_seed_counts_and_bad_input():
    rng = np.random.default_rng(3)
    a = [rng.random(100) < 0.5 for _ in range(3)]
    b = [rng.random(100) < 0.5 for _ in range(2)]
    assert difference_interval(a, b).n_seeds == 2
    with pytest.raises(ValueError, match="same test items"):
        difference_interval(a, [rng.random(50) < 0.5])
    with pytest.raises(ValueError, match="1-D"):
        group_interval([np.zeros((0,))])


def test_seeds_on_one_test_set_have_the_nominal_coverage():
    """Every seed is scored on the same test items (the population: items, and seeds with their spread):
    the interval covers the truth 95 % of the time. Resampling items anew per seed (the nested bootstrap
    this replaced) covered it 63-78 % of the time here: k evaluations of one test set are not k test sets."""
    rng = np.random.default_rng(7)
    for seed_sd in (0.0, 0.05):
        trials, hits = 300, 0
        for t in range(trials):
            items = rng.random(300)  # item difficulty, shared by every seed
            seeds = [(items < q).astype(float) for q in 0.6 + seed_sd * rng.standard_normal(5)]
            iv = group_interval(seeds, n_boot=1000, seed=t)
            hits += iv.lo <= 0.6 <= iv.hi
        assert 0.92 <= hits / trials <= 0.98, (seed_sd, hits / trials)


def test_copies_of_one_evaluation_are_no_more_certain_than_one():
    rng = np.random.default_rng(4)
    one = rng.random(400) < 0.7
    single, copies = group_interval([one]), group_interval([one] * 5)
    assert copies.value == single.value and copies.n_seeds == 5
    assert (copies.hi - copies.lo) == pytest.approx(single.hi - single.lo, rel=0.1)  # not 1/sqrt(5) of it
    nested = group_interval([one, one[:399]])  # items of their own per seed (different counts): nested
    assert nested.n_seeds == 2 and nested.lo < nested.value < nested.hi
