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
