"""One series: Holt-Winters bands that hold normal days and miss spikes, and the fallback
for every kind of bad history."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from promptops.detection.baselines import HOLT_WINTERS, MEDIAN_MAD, BaselineConfig, fit_series
from tests.helpers.baselines import DAY, seasonal

LAST = DAY - timedelta(hours=1)
CFG = BaselineConfig()


def inside(fit, actual: np.ndarray) -> np.ndarray:
    return (actual >= fit.lower) & (actual <= fit.upper)


def test_normal_seasonal_day_stays_inside_its_band():
    values = seasonal(15, seed=3)
    history, next_day = values[:-24], values[-24:]
    fit = fit_series(history, LAST, CFG, metric="requests")
    assert fit.method == HOLT_WINTERS
    assert fit.params["seasonal"] == "mul" and fit.params["seasonal_periods"] == 24
    assert fit.hours == [DAY + timedelta(hours=h) for h in range(24)]
    assert inside(fit, next_day).all()
    # The band follows the daily cycle: the afternoon peak is expected well above the night.
    assert fit.expected[14] > 2 * fit.expected[2]
    assert np.all(fit.lower <= fit.expected) and np.all(fit.expected <= fit.upper)


def test_spike_is_outside_the_band():
    values = seasonal(15, seed=4)
    history, next_day = values[:-24], values[-24:].copy()
    next_day[13] *= 1.6
    next_day[3] *= 0.3
    fit = fit_series(history, LAST, CFG, metric="requests")
    flagged = np.flatnonzero(~inside(fit, next_day))
    assert flagged.tolist() == [3, 13]


def test_additive_seasonality_when_values_are_not_all_positive():
    rng = np.random.default_rng(5)
    hours = np.arange(14 * 24)
    values = 5 * np.sin(2 * np.pi * hours / 24) + rng.standard_normal(len(hours))
    fit = fit_series(values, LAST, CFG)
    assert fit.method == HOLT_WINTERS
    assert fit.params["seasonal"] == "add"


def test_weekly_seasonality_with_three_weeks_of_history():
    weekday = np.repeat([1.0, 1, 1, 1, 1, 0.4, 0.4], 24)
    values = seasonal(21, seed=6) * np.tile(weekday, 3)
    fit = fit_series(values, LAST, BaselineConfig(history_days=21))
    assert fit.method == HOLT_WINTERS
    assert fit.params["seasonal_periods"] == 168
    # The next day repeats the first day of the history (a weekday), not yesterday's weekend.
    assert fit.expected.mean() > 1.8 * values[-24:].mean()


def test_rates_are_kept_inside_their_range():
    rng = np.random.default_rng(7)
    values = np.clip(0.004 + 0.004 * rng.standard_normal(14 * 24), 0, 1)
    fit = fit_series(values, LAST, CFG, metric="error_rate")
    assert np.all(fit.lower >= 0) and np.all(fit.upper <= 1)


def test_past_outliers_do_not_widen_the_band_much():
    clean = seasonal(14, seed=8)
    dirty = clean.copy()
    dirty[[30, 100, 200, 250]] *= 15
    a, b = fit_series(clean, LAST, CFG), fit_series(dirty, LAST, CFG)
    assert b.method == HOLT_WINTERS and "4 outlier(s) clipped" in b.reason
    width = lambda f: float(np.mean(f.upper - f.lower))  # noqa: E731
    assert width(b) < 1.5 * width(a)


@pytest.mark.parametrize(("name", "values", "words"), [
    ("too short", seasonal(2), "too short: 48 observed points"),
    ("constant", np.full(14 * 24, 7.0), "constant history"),
    ("all zero", np.zeros(14 * 24), "constant history: every observed value is 0"),
    ("mostly zero", np.where(np.arange(14 * 24) % 5 == 0, 3.0, 0.0), "mostly zero: 80%"),
    ("gappy", np.where(np.arange(14 * 24) % 2 == 0, np.nan, seasonal(14)), "too gappy: 50%"),
    ("no data", np.full(14 * 24, np.nan), "no history"),
])
def test_bad_history_falls_back_with_the_reason(name, values, words):
    fit = fit_series(values, LAST, CFG, metric="requests")
    assert fit.method == MEDIAN_MAD, name
    assert words in fit.reason
    assert len(fit.expected) == len(fit.lower) == len(fit.upper) == 24


def test_fallback_follows_the_hour_of_day():
    # Ten days with every third hour missing: too gappy for Holt-Winters, enough per hour.
    values = seasonal(10, seed=9)
    values[::3] = np.nan
    fit = fit_series(values, LAST, BaselineConfig(max_gap_share=0.2))
    assert fit.method == MEDIAN_MAD
    assert fit.expected[14] > 2 * fit.expected[2]
    truth = seasonal(11, seed=9)[-24:]
    assert inside(fit, truth).mean() >= 0.9


def test_constant_history_gives_a_zero_width_band_at_that_value():
    fit = fit_series(np.full(14 * 24, 7.0), LAST, CFG)
    assert np.all(fit.expected == 7.0) and np.all(fit.lower == 7.0) and np.all(fit.upper == 7.0)


def test_few_gaps_are_filled_and_reported():
    values = seasonal(14, seed=10)
    values[[5, 50, 51, 300]] = np.nan
    values[60] = np.inf  # not a number either: a gap
    fit = fit_series(values, LAST, CFG)
    assert fit.method == HOLT_WINTERS
    assert "5 missing filled" in fit.reason
    assert fit.params["filled"] == 5


def test_a_series_that_starts_late_is_fitted_on_what_exists():
    values = seasonal(14, seed=11)
    values[:150] = np.nan  # a new model: no traffic before
    fit = fit_series(values, LAST, CFG)
    assert fit.method == HOLT_WINTERS
    assert fit.params["filled"] == 0


def test_same_history_same_band():
    values = seasonal(14, seed=12)
    a, b = fit_series(values, LAST, CFG), fit_series(values.copy(), LAST, CFG)
    assert np.array_equal(a.lower, b.lower) and np.array_equal(a.upper, b.upper)


def test_quiet_weekends_with_two_weeks_of_history():
    # Fifteen days ending on a Monday; Saturdays and Sundays run at 55% of weekday traffic.
    weekday = np.array([0.55 if d % 7 in (5, 6) else 1.0 for d in range(15)])  # day 0: Mon
    values = seasonal(15, seed=13) * np.repeat(weekday, 24)
    history, monday = values[:-24], values[-24:]
    fit = fit_series(history, LAST, CFG)
    assert fit.method == HOLT_WINTERS
    assert "day-of-week factors" in fit.reason
    factors = fit.params["day_factors"]  # the forecast day (a Monday) first
    assert factors[0] > 1.5 * factors[5] and factors[0] > 1.5 * factors[6]
    assert inside(fit, monday).all()
    # Without a weekly pattern there is no factor.
    assert fit_series(seasonal(14, seed=14), LAST, CFG).params["day_factors"] is None



def test_a_monday_after_the_first_quiet_weekend_stays_inside_the_band():
    """Seven days of history ending on a weekend at 55% of weekday traffic: the weekly
    cycle is not known yet, so the band allows for the day's level (how much daily levels
    moved in the window); a 4x surge is still far outside."""
    values = seasonal(8, seed=12)
    values[5 * 24:7 * 24] *= 0.55  # Saturday and Sunday
    history, monday = values[:7 * 24], values[7 * 24:]
    fit = fit_series(history, LAST, CFG, metric="requests")
    assert fit.method == HOLT_WINTERS and fit.params["day_level_sd"] > 0.2
    assert "daily level varies" in fit.reason
    assert inside(fit, monday).all()
    assert not inside(fit, monday * 4)[8:20].any()


def test_steady_daily_levels_barely_widen_the_band():
    fit = fit_series(seasonal(14, seed=13), LAST, CFG, metric="requests")
    assert fit.params["day_level_sd"] < 0.03
