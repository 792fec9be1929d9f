"""Small statistics every layer shares. No I/O, no Airflow; statsmodels loads on first use."""

from __future__ import annotations

from typing import Any

import numpy as np


def wilson_interval(successes: Any, n: Any, alpha: float = 0.05) -> tuple[Any, Any]:
    """The Wilson score interval of ``successes`` in ``n`` trials at level ``1 - alpha``
    (statsmodels' ``proportion_confint``), for scalars or arrays alike.

    Rounding can put a bound a hair on the wrong side of the observed rate at 0% or 100%;
    the bounds are kept on its sides. No trials (``n`` 0 or missing) says nothing: [0, 1].
    """
    from statsmodels.stats.proportion import proportion_confint

    k = np.asarray(successes, dtype=np.float64)
    trials = np.asarray(n, dtype=np.float64)
    k, trials = np.broadcast_arrays(k, trials)
    lower, upper = np.zeros(k.shape), np.ones(k.shape)
    some = trials > 0
    if some.any():
        lo, hi = proportion_confint(k[some], trials[some], alpha=alpha, method="wilson")
        p = k[some] / trials[some]
        lower[some] = np.minimum(np.asarray(lo, dtype=np.float64), p)
        upper[some] = np.maximum(np.asarray(hi, dtype=np.float64), p)
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper


def exact_binomial_interval(successes: Any, n: Any, alpha: float = 0.05) -> tuple[Any, Any]:
    """The Clopper-Pearson (exact, beta-quantile) interval of ``successes`` in ``n``
    trials: each one-sided bound errs at most ``alpha / 2`` of the time whatever the rate,
    where Wilson's can err several times that on a few expected events (1.5 failures in 150
    calls). Rules judge rates on it; no trials: [0, 1]."""
    from statsmodels.stats.proportion import proportion_confint

    k, trials = _arrays(successes, n)
    lower, upper = np.zeros(k.shape), np.ones(k.shape)
    some = trials > 0
    if some.any():
        lo, hi = proportion_confint(k[some], trials[some], alpha=alpha, method="beta")
        p = k[some] / trials[some]
        lower[some] = np.minimum(np.nan_to_num(np.asarray(lo, dtype=np.float64), nan=0.0), p)
        upper[some] = np.maximum(np.nan_to_num(np.asarray(hi, dtype=np.float64), nan=1.0), p)
    return _out(lower, upper)


#: The level of the ``lower`` / ``upper`` interval every metric row carries (two-sided).
INTERVAL_CONFIDENCE = 0.95
INTERVAL_ALPHA = 1.0 - INTERVAL_CONFIDENCE


def _arrays(*xs: Any) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(*xs)]


def _out(lower: np.ndarray, upper: np.ndarray) -> tuple[Any, Any]:
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper


def poisson_interval(count: Any, alpha: float = INTERVAL_ALPHA) -> tuple[Any, Any]:
    """Exact (Garwood) interval of a Poisson count: ``chi2`` quantiles at ``2k`` and
    ``2k + 2`` degrees of freedom. A count of 0 has lower bound 0; NaN stays NaN."""
    from scipy.stats import chi2

    (k,) = _arrays(count)
    with np.errstate(invalid="ignore"):
        lower = np.where(k > 0, chi2.ppf(alpha / 2, 2 * k) / 2, 0.0)
        upper = chi2.ppf(1 - alpha / 2, 2 * k + 2) / 2
    lower, upper = np.where(np.isnan(k), np.nan, lower), np.where(np.isnan(k), np.nan, upper)
    return _out(np.minimum(lower, k), np.maximum(upper, k))


def mean_interval(mean: Any, sd: Any, n: Any, alpha: float = INTERVAL_ALPHA) -> tuple[Any, Any]:
    """Student-t interval of a mean: ``mean +- t(n - 1) * sd / sqrt(n)``. Fewer than two
    observations say nothing about the spread: NaN bounds."""
    from scipy.stats import t

    m, s, k = _arrays(mean, sd, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = t.ppf(1 - alpha / 2, np.maximum(k - 1, 1)) * s / np.sqrt(k)
    half = np.where(k >= 2, half, np.nan)
    return _out(m - half, m + half)


def sum_interval(total: Any, sum_of_squares: Any,
                 alpha: float = INTERVAL_ALPHA) -> tuple[Any, Any]:
    """Normal interval of a compound-Poisson total (tokens, cost: events of varying size):
    variance estimated by the sum of the squared sizes. Never below 0."""
    from scipy.stats import norm

    s, q = _arrays(total, sum_of_squares)
    half = norm.ppf(1 - alpha / 2) * np.sqrt(np.maximum(q, 0.0))
    return _out(np.maximum(s - half, 0.0), s + half)


def quantile_ranks(n: Any, q: float, alpha: float = INTERVAL_ALPHA) -> tuple[Any, Any]:
    """0-based ranks ``(lo, hi)`` in ``n`` sorted observations whose values bracket the
    ``q`` quantile with confidence ``1 - alpha``, distribution-free: the count of
    observations below the quantile is binomial(n, q). Clipped to the sample (the min or
    max stands in where the interval would reach beyond it, so small samples cover less)."""
    from scipy.stats import binom

    (k,) = _arrays(n)
    k = np.maximum(k, 1)
    lo = binom.ppf(alpha / 2, k, q) - 1  # the r-th smallest has 0-based rank r - 1
    hi = binom.ppf(1 - alpha / 2, k, q)
    lo = np.clip(np.nan_to_num(lo, nan=0.0), 0, k - 1).astype(np.int64)
    hi = np.clip(np.nan_to_num(hi, nan=0.0), 0, k - 1).astype(np.int64)
    if lo.ndim == 0:
        return int(lo), int(hi)
    return lo, hi


def quantile_interval(values: Any, q: float, alpha: float = INTERVAL_ALPHA) -> tuple[float, float]:
    """The order-statistic interval of the ``q`` quantile of one sample (see
    :func:`quantile_ranks`); NaN for an empty sample."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if len(x) == 0:
        return float("nan"), float("nan")
    lo, hi = quantile_ranks(len(x), q, alpha)
    return float(x[lo]), float(x[hi])


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of a confidence level (0.95 -> 1.96)."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def rescale_interval(value: Any, lower: Any, upper: Any, confidence: float,
                     from_confidence: float = INTERVAL_CONFIDENCE) -> tuple[Any, Any]:
    """A stored interval at ``from_confidence`` carried to ``confidence`` by scaling each
    side's distance from the value by the ratio of normal quantiles (exact for normal
    intervals, close for t, Poisson and order-statistic ones at the sizes rules judge)."""
    v, lo, hi = _arrays(value, lower, upper)
    if confidence == from_confidence:
        return _out(lo, hi)
    factor = z_value(confidence) / z_value(from_confidence)
    return _out(v - (v - lo) * factor, v + (hi - v) * factor)
