"""A single odd day (a holiday, a one-day surge) is fitted as missing, so the day after it
keeps its band; two odd days in a row are a level shift the band follows."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from promptops.detection.baselines import HOLT_WINTERS, BaselineConfig, fit_series
from tests.helpers.baselines import DAY

LAST = DAY - timedelta(hours=1)
CFG = BaselineConfig()
OFF = BaselineConfig(odd_day_ratio=math.inf)
#: Requests per hour: ~100 at the afternoon peak, ~20 at night.
PROFILE = 60 + 40 * np.cos(2 * np.pi * (np.arange(24) - 15) / 24)


def history(days: int, scale: dict[int, float], seed: int) -> np.ndarray:
    """``days`` days of Poisson traffic, day d (1-based) scaled by ``scale.get(d, 1)``."""
    rng = np.random.default_rng(seed)
    factor = np.repeat([scale.get(d, 1.0) for d in range(1, days + 1)], 24)
    return rng.poisson(np.tile(PROFILE, days) * factor).astype("float64")


def error(fit, truth: np.ndarray) -> float:
    """Mean relative error of the expected values over the day's hours (Poisson noise at
    20/h makes any one hour's profile estimate from a week of history ~10% off)."""
    return float(np.mean(np.abs(fit.expected / truth - 1)))


def misses_above(fit, truth: np.ndarray, seed: int = 99) -> float:
    """Share of 2,000 simulated normal days' hours above the band's upper edge."""
    sims = np.random.default_rng(seed).poisson(truth, size=(2000, 24))
    return float(np.mean(sims > fit.upper))


def test_the_day_after_a_holiday_keeps_its_band():
    misses, clean_misses, old_misses = [], [], []
    for seed in range(1, 7):
        values = history(8, {8: 0.4}, seed=seed)
        fit = fit_series(values, LAST, CFG, metric="requests")
        assert fit.method == HOLT_WINTERS
        assert [back for back, _ in fit.params["odd_days"]] == [1]
        assert 0.3 < fit.params["odd_days"][0][1] < 0.5
        assert "odd day(s) fitted as missing" in fit.reason
        assert error(fit, PROFILE) < 0.15
        assert abs(fit.expected.sum() / PROFILE.sum() - 1) < 0.1
        misses.append(misses_above(fit, PROFILE))
        # The same days without the holiday: the band the holiday must not cost.
        clean = values.copy()
        clean[-24:] = history(8, {}, seed=seed)[-24:]
        clean_misses.append(misses_above(fit_series(clean, LAST, CFG, metric="requests"),
                                         PROFILE))
        # Without the imputation the holiday is the level the forecast starts from.
        old = fit_series(values, LAST, OFF, metric="requests")
        assert old.params["odd_days"] == []
        assert np.mean(old.expected / PROFILE) < 0.8
        old_misses.append(misses_above(old, PROFILE))
    # Upper band: >= 99% of normal hours below it, as after a normal day (a week of Poisson
    # history at 20-100/h leaves a ~1% miss rate per seed at worst, holiday or not).
    assert np.mean(misses) <= 0.01
    assert np.mean(misses) <= np.mean(clean_misses) + 0.002
    assert np.mean(old_misses) > 5 * np.mean(misses)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_two_low_days_are_a_level_shift_the_band_follows(seed):
    values = history(8, {7: 0.4, 8: 0.4}, seed=seed)
    fit = fit_series(values, LAST, CFG, metric="requests")
    assert fit.params["odd_days"] == []
    assert error(fit, 0.4 * PROFILE) < 0.25


def test_a_single_surge_day_is_imputed_too():
    values = history(8, {8: 2.5}, seed=5)
    fit = fit_series(values, LAST, CFG, metric="requests")
    assert [back for back, _ in fit.params["odd_days"]] == [1]
    assert 2.2 < fit.params["odd_days"][0][1] < 2.8
    assert error(fit, PROFILE) < 0.15
    old = fit_series(values, LAST, OFF, metric="requests")
    assert np.mean(old.expected / PROFILE) > 1.5


def test_an_odd_day_inside_the_window_leaves_the_profile_alone():
    # A holiday in the middle of the window: the surrounding normal days set the level.
    values = history(8, {4: 0.3}, seed=6)
    fit = fit_series(values, LAST, CFG, metric="requests")
    assert [back for back, _ in fit.params["odd_days"]] == [5]
    assert error(fit, PROFILE) < 0.1


def test_a_lone_quiet_weekend_day_is_kept():
    # A Saturday (0.55x) at the end of the window is the level Sunday follows.
    values = history(8, {8: 0.55}, seed=7)
    fit = fit_series(values, LAST, CFG, metric="requests")
    assert fit.params["odd_days"] == []
    assert np.mean(fit.expected / PROFILE) < 0.8


def test_too_little_history_keeps_every_day():
    # Three normal days besides the holiday: too few to call one of them odd.
    values = history(4, {4: 0.4}, seed=8)
    fit = fit_series(values, LAST, CFG, metric="requests")
    assert fit.method == HOLT_WINTERS and fit.params["odd_days"] == []


def test_a_day_with_gaps_is_not_a_candidate():
    values = history(8, {8: 0.4}, seed=9)
    values[-5] = np.nan
    fit = fit_series(values, LAST, CFG, metric="requests")
    assert fit.params["odd_days"] == []


def test_the_ratio_must_exceed_one():
    with pytest.raises(ValidationError):
        BaselineConfig(odd_day_ratio=1.0)
