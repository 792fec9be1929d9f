"""End-of-period projections of a budget: spent so far plus a forecast of the rest.

The rest of the period is forecast with the project's Holt-Winters baseline fit
(:func:`promptops.detection.baselines.holt_winters.fit_values`) on the scope's hourly spend:
weekly seasonality once two weeks of history exist, daily before, so a Monday morning's
burn does not project a month of Mondays and a quiet weekend lowers the projection. The
interval is the sum of the hourly band over the rest of the period, which treats the hours'
errors as fully correlated: a level the fit got wrong is wrong for every remaining hour, and
the sum is then wide enough that "will exceed" (the lower end crosses the budget) is said
with confidence.

Thousands of scopes (every user) are not fitted one by one: each is projected as its share
of the platform's forecast (:func:`project_shares`), its share measured over the recent
history, with the interval widened by the share's own sampling error (a user with 20 calls
has a share known to about a fifth).

With too little history for either, the projection is linear (spent per elapsed hour times
the period's hours) and says so: ``method="linear"``. A linear projection has no interval,
and the evaluator never alerts "will exceed" on it (never page on a fallback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from promptops.detection.baselines.config import BaselineConfig
from promptops.detection.baselines.holt_winters import (
    DAILY,
    HOLT_WINTERS,
    WEEKLY,
    fit_values,
)

#: Hours of history below which a scope is projected linearly (three days: one daily
#: cycle to fit and two to check it against).
MIN_HISTORY_HOURS = 72
#: Calls behind a share below which a scope's share is too uncertain to scale a forecast.
MIN_SHARE_CALLS = 30
HOLT_WINTERS_METHOD = "holt_winters"
SEASONAL_MEDIAN = "seasonal_median"
SHARE = "share_of_platform"
LINEAR = "linear"
CLOSED = "period_over"


@dataclass(frozen=True)
class Projection:
    """A scope's spend at the end of its period: ``spent`` so far plus the forecast rest
    (``expected``, with ``lower`` and ``upper``). ``method`` says how; ``reason`` why a
    fallback was used (empty for Holt-Winters)."""

    spent: float
    expected: float
    lower: float
    upper: float
    method: str
    reason: str = ""

    @property
    def has_interval(self) -> bool:
        return self.method not in (LINEAR,)


def linear(spent: float, elapsed_hours: float, hours_left: float, reason: str) -> Projection:
    """Spent per elapsed hour, carried to the period's end (no interval)."""
    if hours_left <= 0:
        return Projection(spent, spent, spent, spent, CLOSED)
    rate = spent / elapsed_hours if elapsed_hours > 0 else 0.0
    total = spent + rate * hours_left
    return Projection(spent, total, total, total, LINEAR, reason)


def project_series(spent: float, history: np.ndarray, elapsed_hours: float, hours_left: int,
                   config: BaselineConfig | None = None) -> Projection:
    """Project one scope from its hourly spend ``history`` (oldest first, ending with the
    last evaluated hour; NaN = no data): ``spent`` plus the forecast of ``hours_left``."""
    if hours_left <= 0:
        return Projection(spent, spent, spent, spent, CLOSED)
    values = np.asarray(history, dtype="float64")
    finite = np.flatnonzero(np.isfinite(values))
    span = len(values) - finite[0] if len(finite) else 0
    if span < MIN_HISTORY_HOURS:
        return linear(spent, elapsed_hours, hours_left,
                      f"only {span} hours of history (a seasonal forecast needs "
                      f"{MIN_HISTORY_HOURS}): linear projection")
    config = config or BaselineConfig()
    season = WEEKLY if span >= 14 * 24 else DAILY
    model = fit_values(values, season, hours_left, config, bounds=(0.0, math.inf),
                       week_cycles=7 if season == DAILY else 0)
    rest = np.clip(np.nan_to_num(model.expected), 0.0, None)
    lower = np.clip(np.nan_to_num(model.lower), 0.0, None)
    upper = np.clip(np.nan_to_num(model.upper), 0.0, None)
    method = HOLT_WINTERS_METHOD if model.method == HOLT_WINTERS else SEASONAL_MEDIAN
    reason = "" if method == HOLT_WINTERS_METHOD else model.reason
    return Projection(spent, spent + float(rest.sum()), spent + float(lower.sum()),
                      spent + float(upper.sum()), method, reason)


@dataclass(frozen=True)
class ShareProjections:
    """Per-scope projections as arrays, aligned with the inputs of :func:`project_shares`."""

    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    #: True where the share was too uncertain (or the platform forecast was linear) and the
    #: projection is linear.
    linear: np.ndarray
    method: str
    reason: str


def project_shares(spent: np.ndarray, share: np.ndarray, share_calls: np.ndarray,
                   platform: Projection, elapsed_hours: float,
                   hours_left: int) -> ShareProjections:
    """Project many scopes at once as their share of the platform's forecast rest.

    ``spent``: each scope's spend so far; ``share``: its share of the platform's spend over
    the recent history; ``share_calls``: the calls behind that share (its sampling error is
    about ``1/sqrt(calls)``, two of which widen the interval on each side)."""
    spent = np.asarray(spent, dtype="float64")
    share = np.clip(np.asarray(share, dtype="float64"), 0.0, 1.0)
    calls = np.asarray(share_calls, dtype="float64")
    if hours_left <= 0:
        none = np.zeros(len(spent), dtype=bool)
        return ShareProjections(spent, spent, spent, none, CLOSED, "")
    rate = np.divide(spent, elapsed_hours) if elapsed_hours > 0 else np.zeros_like(spent)
    straight = spent + rate * hours_left
    if not platform.has_interval:
        flat = np.ones(len(spent), dtype=bool)
        return ShareProjections(straight, straight, straight, flat, LINEAR,
                                f"the platform's own projection is linear ({platform.reason})")
    rel = np.divide(2.0, np.sqrt(np.maximum(calls, 1.0)))
    rest = platform.expected - platform.spent
    rest_lo = platform.lower - platform.spent
    rest_hi = platform.upper - platform.spent
    expected = spent + share * rest
    lower = spent + share * rest_lo * np.clip(1.0 - rel, 0.0, None)
    upper = spent + share * rest_hi * (1.0 + rel)
    flat = (calls < MIN_SHARE_CALLS) | ~np.isfinite(share)
    expected = np.where(flat, straight, expected)
    lower = np.where(flat, straight, lower)
    upper = np.where(flat, straight, upper)
    return ShareProjections(expected, lower, upper, flat, SHARE,
                            f"fewer than {MIN_SHARE_CALLS} calls behind the share: linear")


__all__ = ["CLOSED", "HOLT_WINTERS_METHOD", "LINEAR", "MIN_HISTORY_HOURS", "SEASONAL_MEDIAN",
           "SHARE", "Projection", "ShareProjections", "linear", "project_series",
           "project_shares"]
