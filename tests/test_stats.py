"""The sampling intervals metric rows carry, checked for coverage on known distributions
(fixed seeds): the share of samples whose interval holds the true value is about the level."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from promptops.stats import (
    exact_binomial_interval,
    mean_interval,
    poisson_interval,
    quantile_interval,
    quantile_ranks,
    rescale_interval,
    sum_interval,
    wilson_interval,
    z_value,
)

TRIALS = 2000


def coverage(lower: np.ndarray, upper: np.ndarray, truth: float) -> float:
    return float(np.mean((lower <= truth) & (truth <= upper)))


def test_poisson_exact_interval_textbook_values_and_coverage():
    assert poisson_interval(0) == (0.0, pytest.approx(3.6889, abs=1e-4))
    lo, hi = poisson_interval(10)
    assert (lo, hi) == (pytest.approx(4.7954, abs=1e-4), pytest.approx(18.3904, abs=1e-4))
    rng = np.random.default_rng(1)
    for mu in (3.0, 40.0, 900.0):
        lo, hi = poisson_interval(rng.poisson(mu, TRIALS))
        # Exact intervals are conservative: at least 95%, never far above at large counts.
        assert 0.95 <= coverage(lo, hi, mu) <= 0.99
    lo, hi = poisson_interval(np.array([np.nan, 5.0]))
    assert np.isnan(lo[0]) and np.isnan(hi[0]) and lo[1] < 5 < hi[1]


def test_mean_interval_covers_a_normal_mean_and_needs_two_observations():
    rng = np.random.default_rng(2)
    x = rng.normal(100.0, 15.0, size=(TRIALS, 30))
    lo, hi = mean_interval(x.mean(axis=1), x.std(axis=1, ddof=1), 30)
    assert coverage(lo, hi, 100.0) == pytest.approx(0.95, abs=0.015)
    lo, hi = mean_interval(np.array([5.0, 5.0]), np.array([1.0, 1.0]), np.array([1, 2]))
    assert np.isnan(lo[0]) and np.isnan(hi[0]) and lo[1] < 5 < hi[1]


def test_mean_interval_on_heavy_tailed_latency_errs_on_the_safe_side_for_above_rules():
    """58 lognormal latencies (the issue's slice): the sample mean is skewed, but its lower
    bound exceeds the true mean rarely (the one-sided error an ``above`` rule makes)."""
    rng = np.random.default_rng(3)
    mu, sigma = np.log(800.0), 0.9
    truth = np.exp(mu + sigma ** 2 / 2)
    x = rng.lognormal(mu, sigma, size=(TRIALS, 58))
    lo, _ = mean_interval(x.mean(axis=1), x.std(axis=1, ddof=1), 58)
    assert np.mean(lo > truth) <= 0.025


def test_quantile_interval_covers_p95_and_p50_distribution_free():
    rng = np.random.default_rng(4)
    truth95 = float(sps.lognorm(s=0.7, scale=900.0).ppf(0.95))
    truth50 = 900.0
    hits95 = hits50 = 0
    for _ in range(TRIALS):
        x = rng.lognormal(np.log(900.0), 0.7, size=400)
        lo, hi = quantile_interval(x, 0.95)
        hits95 += lo <= truth95 <= hi
        lo, hi = quantile_interval(x, 0.50)
        hits50 += lo <= truth50 <= hi
    # Order statistics are discrete: the coverage is at least the level, a little above.
    assert 0.94 <= hits95 / TRIALS <= 0.985
    assert 0.94 <= hits50 / TRIALS <= 0.985


def test_quantile_ranks_stay_inside_the_sample():
    lo, hi = quantile_ranks(np.array([1, 10, 100]), 0.99)
    assert list(hi) == [0, 9, 99] and all(0 <= a <= b for a, b in zip(lo, hi, strict=True))
    assert quantile_interval([], 0.5)[0] != quantile_interval([], 0.5)[0]  # NaN


def test_compound_poisson_total_covers_token_sums():
    """Token totals: a Poisson number of calls of varying size; the interval of the total
    rests on the sum of squared sizes."""
    rng = np.random.default_rng(5)
    rate, mean_size = 300, 800.0
    totals, squares = [], []
    for _ in range(TRIALS):
        sizes = rng.gamma(2.0, mean_size / 2.0, size=rng.poisson(rate))
        totals.append(sizes.sum())
        squares.append((sizes ** 2).sum())
    lo, hi = sum_interval(np.array(totals), np.array(squares))
    assert coverage(lo, hi, rate * mean_size) == pytest.approx(0.95, abs=0.02)
    assert sum_interval(10.0, 1e6)[0] == 0.0  # never below zero


def test_rescaling_an_interval_to_another_confidence():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    lo, hi = rescale_interval(10.0, 8.04, 13.92, 0.99)
    assert lo == pytest.approx(10 - 1.96 * 2.576 / 1.96, abs=0.01)
    assert hi == pytest.approx(10 + 3.92 * 2.575829 / 1.959964, abs=1e-6)
    assert rescale_interval(1.0, 0.5, 2.0, 0.95) == (0.5, 2.0)


@pytest.mark.parametrize(("n", "p"), [(150, 0.01), (102, 0.01), (60, 0.05), (2000, 0.003)])
def test_exact_binomial_bounds_never_err_more_than_their_share(n, p):
    """Clopper-Pearson: each one-sided bound misses the true rate at most alpha/2 of the
    time, computed exactly over the binomial distribution (Wilson's may miss far more)."""
    k = np.arange(n + 1)
    weight = sps.binom.pmf(k, n, p)
    lo, hi = exact_binomial_interval(k, np.full(n + 1, n))
    assert weight[lo > p].sum() <= 0.025 and weight[hi < p].sum() <= 0.025
    w_lo, _ = wilson_interval(k, np.full(n + 1, n))
    if (n, p) == (150, 0.01):
        assert weight[w_lo > p].sum() > 0.06  # 1.5 expected events: Wilson errs 2.6x
    assert exact_binomial_interval(0, 0) == (0.0, 1.0)
