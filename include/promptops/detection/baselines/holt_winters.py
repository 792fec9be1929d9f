"""One series, one baseline: Holt-Winters where the history allows it, a robust fallback
where it does not.

:func:`fit_values` is the one fitting path for a regular series (hourly metrics in the
DAG, any sampling interval in the CSV scorer): it returns a :class:`SeriesModel` that
forecasts the next ``horizon`` points with a prediction band and, for the scorer, gives
one-step-ahead forecasts over newer values with the fitted parameters held fixed.
:func:`fit_series` is the hourly wrapper the DAG uses (24-hour forecast, timestamps).

Holt-Winters (statsmodels ``ExponentialSmoothing``): additive trend (damped by default),
daily seasonality (weekly once ``weekly_min_days`` of history exist), multiplicative
seasonality when every value is positive and additive otherwise; heuristic initial states
and a least-squares fit, which is about ten times faster than the default L-BFGS-B here
for the same error. The band (``simulate=True``, the hourly bands) comes from simulated forecast paths
(``HoltWintersResults.simulate``) driven by errors drawn from the fit's own one-step
errors (a bootstrap): the ``coverage`` quantiles of the paths, never thinner than
``expected +/- z * sd`` of the same paths; it widens with the horizon and is as skewed as
the metric's errors are.
With two or more weeks of history and a clear weekly pattern (a quiet weekend), a
day-of-week factor is divided out before the fit and multiplied back into the forecast.

Before fitting, gaps (up to ``max_gap_share``) are filled with their phase's median
(never zero) and values more than ``outlier_mads`` robust deviations from their phase's
median are clipped (never more than 2% of the points, so a quantised or low-noise series
keeps its noise), so one past incident does not become the expected shape. In a daily-season fit a single
whole day whose level is far off the other days' (a holiday, a one-day surge; see
``odd_day_ratio``) is fitted as missing (the day before in its place), so the day after it
keeps its band; two such days in a row are a level shift, which the fit follows.

Fallback (``median_mad``): per phase (hour of day) the median of the window's observed
values, and as spread 1.4826 x their MAD once a phase has five values (before that, the
spread pooled over all phases, relative to the level for a positive series), widened by
``sqrt(1 + 1/count)`` because the median itself rests on few values. Used, with the reason, when the history is too short, constant,
mostly zero, too gappy, or when the fit fails or forecasts something unstable.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np

from promptops.detection.baselines.config import BaselineConfig, metric_bounds

Method = Literal["holt_winters", "median_mad"]
HOLT_WINTERS: Method = "holt_winters"
MEDIAN_MAD: Method = "median_mad"

DAILY = 24
WEEKLY = 168
#: Robust standard deviation from the median absolute deviation (normal data).
MAD_TO_SD = 1.4826
#: At most this share of a window's points is clipped as outliers before a fit.
MAX_CLIP_SHARE = 0.02
#: Values (in phases seen twice or more) a pooled fallback spread needs; with fewer, the
#: spread of all values is used (a spread from two or three residuals is mostly luck).
_MIN_POOLED = 20
_SEED = 20240607  # fixed: a rerun of the same history gives the same band


@dataclass(frozen=True)
class BaselineFit:
    """The baseline of one hourly series for the 24 hours after ``last_ts``."""

    method: Method
    #: Why this method (the fallback's cause; the Holt-Winters fit's caveats).
    reason: str
    #: Fitted parameters (JSON-able): smoothing constants, seasonality, sigma, counts.
    params: dict[str, Any]
    hours: list[datetime]
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


@dataclass
class SeriesModel:
    """A fitted baseline on a regular series (internal to baselines; see module doc)."""

    method: Method
    reason: str
    params: dict[str, Any]
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    #: Length of the window that was fitted (phase of the next value = n % season).
    n: int
    season: int
    bounds: tuple[float, float]
    # Holt-Winters state to run the filter on newer values with fixed parameters.
    _window: np.ndarray | None = None
    _hw: dict[str, Any] = field(default_factory=dict)
    _fixed: dict[str, Any] = field(default_factory=dict)
    _sigma: float = math.nan
    _relative: bool = False
    #: Day-of-week factors by label (0 = the cycle right after the window), or None.
    _days: np.ndarray | None = None
    # Fallback: center and spread per phase.
    _center: np.ndarray | None = None
    _spread: np.ndarray | None = None

    def one_step(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each value of ``block`` (the values right after the window, NaN = missing):
        the forecast made from the window and the block's earlier values only, and the
        standard deviation of that forecast's error."""
        block = np.asarray(block, dtype="float64")
        if self.method == MEDIAN_MAD or self._window is None:
            assert self._center is not None and self._spread is not None  # noqa: S101
            phases = (self.n + np.arange(len(block))) % max(self.season, 1)
            return self._center[phases].copy(), self._spread[phases].copy()
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        day = _day_factor(self._days, len(self._window), len(block), self.season)
        values = np.concatenate([self._window,
                                 _impute(self._window, block / day, self.season)])
        if self._hw.get("seasonal") == "mul":
            # The multiplicative model needs positive inputs; a drop to zero still scores
            # on its raw value, only the state update sees the floor.
            values = np.maximum(values, self._fixed["floor"])
        try:
            model = ExponentialSmoothing(values, **self._hw, initialization_method="known",
                                         **self._fixed["initial"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fitted = model.fit(optimized=False, **self._fixed["smoothing"]).fittedvalues
            forecast = np.asarray(fitted[len(self._window):], dtype="float64") * day
        except Exception:  # noqa: BLE001 - never crash a scoring run: use the day-ahead band
            k = min(len(block), len(self.expected))
            half = (self.upper[:k] - self.lower[:k]) / 2 / self.params["z"]
            return (np.concatenate([self.expected[:k], np.full(len(block) - k, np.nan)]),
                    np.concatenate([half, np.full(len(block) - k, np.nan)]))
        sd = self._sigma * np.abs(forecast) if self._relative else self._sigma * day
        return forecast, sd


# -- the hourly entry point ------------------------------------------------------------------


def fit_series(values: np.ndarray, last_ts: datetime, config: BaselineConfig | None = None, *,
               metric: str | None = None) -> BaselineFit:
    """Fit one hourly series (NaN = missing hour) whose last value is the hour ``last_ts``
    and forecast the 24 hours after it. Never raises on bad history: falls back to the
    per-hour-of-day median/MAD and says why in ``reason``."""
    config = config if config is not None else BaselineConfig()
    values = np.asarray(values, dtype="float64")
    finite = np.flatnonzero(np.isfinite(values))
    span = len(values) - finite[0] if len(finite) else 0
    season = WEEKLY if span >= config.weekly_min_days * 24 else DAILY
    bounds = metric_bounds(metric)
    model = fit_values(values, season, DAILY, config, bounds=bounds,
                       week_cycles=7 if season == DAILY else 0)
    if model.method == MEDIAN_MAD and season == WEEKLY:
        # Weekly did not work out: daily seasonality (or the hour-of-day fallback) instead.
        weekly = model.reason
        model = fit_values(values, DAILY, DAILY, config, bounds=bounds, week_cycles=7)
        model.reason = f"{model.reason} (weekly seasonality: {weekly})"
    hours = [last_ts + timedelta(hours=h + 1) for h in range(DAILY)]
    # How much history the band rests on (the hourly check caps a short one at warning).
    model.params["history_hours"] = int(span)
    return BaselineFit(model.method, model.reason, model.params, hours, model.expected,
                       model.lower, model.upper)


# -- the generic fit -------------------------------------------------------------------------


def min_points(season: int, config: BaselineConfig) -> int:
    """Observed points a Holt-Winters fit needs: ``min_history_hours / 24`` seasons, and two
    full seasons plus ten for the heuristic initial states."""
    cycles = config.min_history_hours / 24
    if season < 2:
        return max(10, math.ceil(cycles * 10))
    return max(math.ceil(cycles * season), 2 * season + 10)


def fit_values(values: np.ndarray, season: int, horizon: int, config: BaselineConfig, *,
               bounds: tuple[float, float] = (-math.inf, math.inf),
               week_cycles: int = 0, simulate: bool = True) -> SeriesModel:
    """Fit a regular series (NaN = missing) with period ``season`` (< 2: no seasonality) and
    forecast ``horizon`` points with a band. ``week_cycles=7`` says the season is a day:
    a day-of-week factor is then estimated and applied when it is clear in the history.
    ``simulate=False`` skips the simulated forecast paths (the band is then the normal
    ``expected +/- z * sigma``): the one-step scorer never uses them. Never raises on bad
    history."""
    y = np.asarray(values, dtype="float64")
    y = np.where(np.isfinite(y), y, np.nan)
    season = int(season) if season and season >= 2 else 1
    reason = _why_not_holt_winters(y, season, config)
    if reason is None:
        try:
            return _holt_winters(y, season, horizon, config, bounds, week_cycles, simulate)
        except _Unstable as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - any fit failure falls back, never crashes
            reason = f"Holt-Winters failed: {type(exc).__name__}: {exc}"[:300]
    return _median_mad(y, season, horizon, config, bounds, reason)


def _why_not_holt_winters(y: np.ndarray, season: int, config: BaselineConfig) -> str | None:
    finite = np.isfinite(y)
    if not finite.any():
        return "no history: every point is missing"
    first = int(np.argmax(finite))
    window = y[first:]
    observed = window[np.isfinite(window)]
    need = min_points(season, config)
    if len(observed) < need:
        return f"too short: {len(observed)} observed points, Holt-Winters needs {need}"
    gaps = 1 - len(observed) / len(window)
    if gaps > config.max_gap_share:
        return (f"too gappy: {gaps:.0%} of the {len(window)} points since the first value are "
                f"missing (limit {config.max_gap_share:.0%})")
    lo, hi = float(observed.min()), float(observed.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return f"constant history: every observed value is {hi:g}"
    zeros = float(np.mean(observed == 0))
    if zeros > config.max_zero_share:
        return f"mostly zero: {zeros:.0%} of observed values are 0 (limit {config.max_zero_share:.0%})"
    return None


class _Unstable(ValueError):
    pass


def _phase_profile(y: np.ndarray, season: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per phase (index mod season): median, 1.4826 x MAD, and count of observed values."""
    n = len(y)
    pad = (-n) % season
    grid = np.concatenate([y, np.full(pad, np.nan)]).reshape(-1, season)
    counts = np.isfinite(grid).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN phases -> NaN, handled
        med = np.nanmedian(grid, axis=0)
        mad = MAD_TO_SD * np.nanmedian(np.abs(grid - med), axis=0)
    return med, mad, counts


def _fill_phases(med: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Phases without any value get the circular linear interpolation of their neighbours
    (an hour that never has traffic lies between the hours around it)."""
    have = np.flatnonzero(counts > 0)
    if len(have) == len(med) or len(have) == 0:
        return med
    idx = np.arange(len(med))
    return np.interp(idx, have, med[have], period=len(med))


def _prepare(y: np.ndarray, season: int, config: BaselineConfig
             ) -> tuple[np.ndarray, int, np.ndarray]:
    """Leading gaps trimmed, other gaps filled with the phase median, outliers clipped.
    Returns (values, filled, mask of the clipped points). Phases stay aligned to the end of
    the series."""
    first = int(np.argmax(np.isfinite(y)))
    # Trim whole seasons only, so index mod season stays the phase of the original index.
    start = first - first % season
    y = y[start:]
    med, _, counts = _phase_profile(y, season)
    med = _fill_phases(med, counts)
    phases = np.arange(len(y)) % season
    missing = ~np.isfinite(y)
    # The few leading points before the first value (inside its season) are filled too,
    # but only gaps after the first value count as filled.
    gaps = int(missing[first - start:].sum())
    y = np.where(missing, med[phases], y)
    resid = y - med[phases]
    sd = MAD_TO_SD * float(np.median(np.abs(resid - np.median(resid))))
    clipped = np.zeros(len(y), dtype=bool)
    seen = np.abs(resid[~missing])
    if sd > 0 and len(seen):
        # Never more than MAX_CLIP_SHARE of the points: on a quantised or low-noise series
        # the MAD is tiny and ``outlier_mads`` of it would clip half the window (which then
        # also hides most of the noise from the band).
        reach = max(config.outlier_mads * sd, float(np.quantile(seen, 1 - MAX_CLIP_SHARE)))
        lo, hi = med[phases] - reach, med[phases] + reach
        out = (y < lo) | (y > hi)
        clipped = out & ~missing
        positive = bool(np.all(y > 0))
        y = np.clip(y, lo, hi)
        if positive:
            y = np.maximum(y, float(np.min(y[y > 0])) if np.any(y > 0) else 1e-9)
    return y, gaps, clipped


def _holt_winters(values: np.ndarray, season: int, horizon: int, config: BaselineConfig,
                  bounds: tuple[float, float], week_cycles: int = 0,
                  simulate: bool = True) -> SeriesModel:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    y, filled, clipped = _prepare(values, season, config)
    daily = week_cycles == 7 and season >= 2
    days = _weekday_factors(y, season) if daily else None
    odd: list[tuple[int, float]] = []
    if daily:
        observed = np.isfinite(values[len(values) - len(y):])
        y, clipped, odd = _impute_odd_days(y, clipped, observed, season, days, config)
        if odd:  # the weekly pattern without the odd day (a holiday blurs it)
            days = _weekday_factors(y, season)
    if days is not None:
        y = y / _day_factor(days, len(y), -len(y), season)
    seasonal = None if season < 2 else ("mul" if np.all(y > 0) else "add")
    hw = {"trend": "add", "damped_trend": config.damped_trend, "seasonal": seasonal,
          "seasonal_periods": season if seasonal else None}
    model = ExponentialSmoothing(y, **hw, initialization_method="heuristic")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit(optimized=True, use_brute=False, method="least_squares")
    p = res.params
    fitted = np.asarray(res.fittedvalues, dtype="float64")
    relative = seasonal == "mul"
    resid = (y - fitted) / fitted if relative else y - fitted
    # One-step errors to learn the noise from: not the first season (they reflect the
    # heuristic start, not the model), not the points clipped as outliers.
    start = season if season > 1 else 0
    errors_seen = resid[start:][~clipped[start:]]
    sigma = _robust_rms(errors_seen)
    expected = np.asarray(res.forecast(horizon), dtype="float64")
    _check_stable(y, expected, np.zeros(horizon), sigma)
    z = config.z
    if simulate:
        lower, upper = _simulated_band(res, errors_seen, expected, horizon, relative, config)
    else:
        half = z * sigma * (np.abs(expected) if relative else 1.0)
        lower, upper = expected - half, expected + half
    # The next day's level is uncertain too: until the weekly cycle is known (or beyond
    # it), a Monday after a quiet weekend is twice the level the filter ends on.
    day_sd = _day_level_sd(y, season) if week_cycles == 7 and season >= 2 else 0.0
    if day_sd > 0:
        lower, upper = _widen_relative(expected, lower, upper, z * day_sd)
    if days is not None:
        ahead = _day_factor(days, len(y), horizon, season)
        expected, lower, upper = expected * ahead, lower * ahead, upper * ahead
    lo, hi = bounds
    n_clipped = int(clipped.sum())
    notes = [f"fitted on {len(y)} points"]
    if filled:
        notes.append(f"{filled} missing filled with the phase median")
    if n_clipped:
        notes.append(f"{n_clipped} outlier(s) clipped")
    if odd:
        notes.append("odd day(s) fitted as missing: " + ", ".join(
            f"x{ratio:.2f} {back} day(s) back" for back, ratio in odd))
    if days is not None:
        notes.append(f"day-of-week factors x{days.min():.2f} to x{days.max():.2f}")
    if day_sd > 0.05:
        notes.append(f"daily level varies {day_sd:.0%} (band widened for it)")
    notes += [f"optimizer: {w.message}" for w in caught
              if "converge" in str(w.message).lower() or "Convergence" in w.category.__name__]
    params = {
        "trend": "add", "damped_trend": config.damped_trend, "seasonal": seasonal,
        "seasonal_periods": season if seasonal else None,
        "alpha": _num(p["smoothing_level"]), "beta": _num(p["smoothing_trend"]),
        "gamma": _num(p["smoothing_seasonal"]), "phi": _num(p["damping_trend"]),
        "sigma": sigma, "error": "mul" if relative else "add", "sse": _num(res.sse),
        "points": len(y), "filled": filled, "clipped": n_clipped, "z": z,
        "day_level_sd": round(day_sd, 4),
        # Whole days imputed as odd: [days back from the window's end, level ratio].
        "odd_days": [[back, round(ratio, 4)] for back, ratio in odd],
        # By day, the day forecast first: what the daily cycle is multiplied by.
        "day_factors": None if days is None else [round(float(f), 4) for f in days],
    }
    fixed = {
        "initial": {"initial_level": _num(p["initial_level"]),
                    "initial_trend": _num(p["initial_trend"]),
                    **({"initial_seasonal": np.asarray(p["initial_seasons"], dtype="float64")}
                       if seasonal else {})},
        "smoothing": {"smoothing_level": p["smoothing_level"],
                      "smoothing_trend": p["smoothing_trend"],
                      **({"smoothing_seasonal": p["smoothing_seasonal"]} if seasonal else {}),
                      **({"damping_trend": p["damping_trend"]} if config.damped_trend else {})},
        "floor": float(np.min(y)) if relative else 0.0,
    }
    return SeriesModel(
        method=HOLT_WINTERS, reason="; ".join(notes), params=params,
        expected=np.clip(expected, lo, hi), lower=np.clip(lower, lo, hi),
        upper=np.clip(upper, lo, hi), n=len(values), season=season, bounds=bounds,
        _window=y, _hw=hw, _fixed=fixed, _sigma=sigma, _relative=relative, _days=days)


def _simulated_band(res: Any, errors_seen: np.ndarray, expected: np.ndarray, horizon: int,
                    relative: bool, config: BaselineConfig) -> tuple[np.ndarray, np.ndarray]:
    """The band from forecast paths driven by errors drawn from the seen ones (bootstrap),
    so a skewed, heavy-tailed metric (a latency mean on few calls) gets the band its own
    errors call for; never thinner than the normal band of the same spread."""
    rng = np.random.default_rng(_SEED)
    draws = rng.choice(errors_seen, size=(horizon, config.simulations))
    paths = np.asarray(res.simulate(horizon, repetitions=config.simulations,
                                    error="mul" if relative else "add", anchor="end",
                                    random_errors=draws), dtype="float64").reshape(horizon, -1)
    tail = (1 - config.coverage) / 2
    q_lo, q_hi = np.quantile(paths, [tail, 1 - tail], axis=1)
    sd = paths.std(axis=1)
    if not (np.all(np.isfinite(q_lo)) and np.all(np.isfinite(q_hi))):
        raise _Unstable("Holt-Winters simulated paths not finite")
    z = config.z
    return np.fmin(expected - z * sd, q_lo), np.fmax(expected + z * sd, q_hi)


def _day_level_sd(y: np.ndarray, season: int) -> float:
    """Standard deviation of the log of the window's daily means (whole days counted back
    from its end; after any day-of-week factors are divided out): how far one day's level
    moves from another's. 0 with fewer than three days or a value that is not positive."""
    n_days = len(y) // season
    if n_days < 3 or not np.all(y > 0):
        return 0.0
    daily = y[len(y) - n_days * season:].reshape(n_days, season).mean(axis=1)
    return float(np.std(np.log(daily), ddof=1))


def _impute_odd_days(y: np.ndarray, clipped: np.ndarray, observed: np.ndarray, season: int,
                     days: np.ndarray | None, config: BaselineConfig
                     ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, float]]]:
    """A single whole day (counted back from the window's end) whose level is an outlier
    (``odd_day_ratio`` and ``odd_day_spreads``, see :class:`BaselineConfig`) against the
    other days is replaced by its nearest normal day (the day before where there is one,
    the ``_impute`` choice), scaled by their day-of-week factors: a holiday neither drags
    the level the forecast starts from nor the daily profile. Two or more odd days in a
    row in the same direction are a level shift the model must follow, and are kept.
    Needs four complete (gap-free) days besides the odd one. Returns (values, clipped
    mask, [(days back from the end, level ratio)])."""
    n_days = len(y) // season
    if n_days < 5 or not math.isfinite(config.odd_day_ratio):
        return y, clipped, []
    off = len(y) - n_days * season
    factor = _day_factor(days, len(y), -len(y), season)
    level = (y[off:] / factor[off:]).reshape(n_days, season).mean(axis=1)
    complete = observed[off:].reshape(n_days, season).all(axis=1) & (level > 0)
    if complete.sum() < 5:
        return y, clipped, []
    logs = np.log(np.where(level > 0, level, 1.0))
    dev = np.zeros(n_days)
    for d in np.flatnonzero(complete):
        ref = logs[complete & (np.arange(n_days) != d)]
        center = float(np.median(ref))
        dev[d] = logs[d] - center
        if not (abs(dev[d]) > math.log(config.odd_day_ratio)
                and abs(dev[d]) > config.odd_day_spreads * _robust_sd(ref - center)):
            dev[d] = 0.0
    side = np.sign(dev)
    odd: list[int] = []
    for day in np.flatnonzero(side).tolist():
        near = [e for e in (day - 1, day + 1) if 0 <= e < n_days]
        # A neighbour with gaps might be the other half of a level shift: keep the day.
        if all(complete[e] and side[e] != side[day] for e in near):
            odd.append(day)
    if not odd:
        return y, clipped, []
    y, clipped = y.copy(), clipped.copy()
    normal = complete & (side == 0)
    done = []
    for day in odd:
        # The nearest normal day, the earlier one first.
        src = next((e for k in range(1, n_days) for e in (day - k, day + k)
                    if 0 <= e < n_days and normal[e]), None)
        if src is None:
            continue
        done.append(day)
        to = slice(off + day * season, off + (day + 1) * season)
        frm = slice(off + src * season, off + (src + 1) * season)
        y[to] = y[frm] / factor[frm] * factor[to]
        clipped[to] = clipped[frm]
    return y, clipped, [(n_days - d, float(math.exp(dev[d]))) for d in done]


def _widen_relative(expected: np.ndarray, lower: np.ndarray, upper: np.ndarray, width: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The band widened by a relative (log-scale) half-width ``width`` in quadrature with its
    own, on each side where expected and that side are positive."""
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.log(upper / expected)
        down = np.log(expected / lower)
    ok_up = (expected > 0) & (upper >= expected)
    ok_down = ok_up & (lower > 0) & (lower <= expected)
    new_upper = np.where(ok_up, expected * np.exp(np.hypot(np.where(ok_up, up, 0), width)),
                         upper)
    new_lower = np.where(ok_down, expected * np.exp(-np.hypot(np.where(ok_down, down, 0), width)),
                         lower)
    return new_lower, new_upper


def _robust_rms(errors: np.ndarray) -> float:
    """The errors' RMS with each error capped at 5 robust deviations, so the one error at a
    level shift in the window does not set the noise, while a quantised series whose
    MAD is 0 still gets the RMS of what it has."""
    if len(errors) == 0:
        return math.nan
    robust = MAD_TO_SD * float(np.median(np.abs(errors - np.median(errors))))
    if robust > 0:
        errors = np.clip(errors, -5 * robust, 5 * robust)
    return float(np.sqrt(np.mean(errors ** 2)))


def _weekday_factors(y: np.ndarray, season: int) -> np.ndarray | None:
    """Day-of-week factors from the window's whole weeks (counted back from its end), or
    None when there are fewer than two weeks, a value is not positive, or the weekly
    pattern is not clear: the factors must differ from 1 by at least 10% somewhere, and the
    spread between weekdays must be four times what the weeks' disagreement explains.
    Index 0 is the day after the window."""
    weeks = len(y) // (7 * season)
    if weeks < 2 or not np.all(y > 0):
        return None
    daily = y[len(y) - weeks * 7 * season:].reshape(weeks, 7, season).mean(axis=2)
    logs = np.log(daily / daily.mean(axis=1, keepdims=True))
    effect = logs.mean(axis=0)
    effect -= effect.mean()
    between = float(np.var(effect, ddof=1))
    within = float(np.mean(np.var(logs, axis=0, ddof=1))) / weeks
    if np.max(np.abs(effect)) < math.log(1.1) or between < 4 * within:
        return None
    return np.exp(effect)


def _day_factor(days: np.ndarray | None, n: int, count: int, season: int) -> np.ndarray:
    """The day-of-week factor of ``count`` points from index ``n`` on (a negative count:
    the ``-count`` points before ``n``), for a window of ``n`` points ending a day."""
    idx = np.arange(n, n + count) if count >= 0 else np.arange(n + count, n)
    if days is None:
        return np.ones(len(idx))
    return days[((idx - n) // season) % 7]


def _check_stable(y: np.ndarray, expected: np.ndarray, sd: np.ndarray, sigma: float) -> None:
    if not (np.all(np.isfinite(expected)) and np.all(np.isfinite(sd)) and math.isfinite(sigma)
            and sigma >= 0):
        raise _Unstable("Holt-Winters forecast not finite")
    lo, hi = float(np.min(y)), float(np.max(y))
    reach = 5 * (hi - lo)
    if np.any(expected < lo - reach) or np.any(expected > hi + reach):
        raise _Unstable(f"Holt-Winters forecast unstable: {float(np.min(expected)):g} to "
                        f"{float(np.max(expected)):g} against a history of {lo:g} to {hi:g}")


def _median_mad(y: np.ndarray, season: int, horizon: int, config: BaselineConfig,
                bounds: tuple[float, float], reason: str) -> SeriesModel:
    n = len(y)
    observed = y[np.isfinite(y)]
    if len(observed) == 0:
        center = spread = np.full(season, np.nan)
    else:
        med, mad, counts = _phase_profile(y, season)
        center = _fill_phases(med, counts)
        pooled = _pooled_sd(y, season, center, counts)
        own = (counts >= 5) & (mad > 0)
        spread = np.where(own, mad, pooled)
        # A prediction, not a description: the center itself rests on few values.
        spread = spread * np.sqrt(1 + 1 / np.maximum(counts, 1))
    z = config.z
    phases = (n + np.arange(horizon)) % season
    expected = center[phases]
    lo, hi = bounds
    params = {"season": season, "points": int(len(observed)), "z": z}
    return SeriesModel(
        method=MEDIAN_MAD, reason=reason, params=params, expected=np.clip(expected, lo, hi),
        lower=np.clip(expected - z * spread[phases], lo, hi),
        upper=np.clip(expected + z * spread[phases], lo, hi), n=n, season=season,
        bounds=bounds, _center=center, _spread=spread)


def _pooled_sd(y: np.ndarray, season: int, center: np.ndarray, counts: np.ndarray
               ) -> np.ndarray:
    """Per phase, the robust spread of values around their phase's median pooled over the
    phases with two or more values (at least ``_MIN_POOLED`` of them; each residual scaled by sqrt(c / (c - 1)) for a phase
    of c values, undoing the shrink of measuring against the phase's own median). For a
    positive series the pooled spread is relative and scales with each phase's level, as a
    busy hour varies more than a quiet one. Without such phases: the spread of all values
    (the seasonality is unknown, so wide)."""
    finite = np.isfinite(y)
    phases = np.arange(len(y)) % season
    c = counts[phases]
    use = finite & (c >= 2)
    if use.sum() >= _MIN_POOLED:
        shrink = np.sqrt(c[use] / (c[use] - 1))
        base = center[phases][use]
        if np.all(y[finite] > 0) and np.all(center > 0):
            rel = (y[use] / base - 1) * shrink
            return _robust_sd(rel) * center
        resid = (y[use] - base) * shrink
        return np.full(season, _robust_sd(resid))
    values = y[finite]
    if len(values) == 0:
        return np.full(season, np.nan)
    return np.full(season, MAD_TO_SD * float(np.median(np.abs(values - np.median(values)))))


def _robust_sd(resid: np.ndarray) -> float:
    """1.4826 x the median |residual|; where most residuals are exactly 0 (a quantised
    series), 1.2533 x their mean |residual| instead, so the spread is never 0 while the
    values vary."""
    mad = MAD_TO_SD * float(np.median(np.abs(resid)))
    return mad if mad > 0 else 1.2533 * float(np.mean(np.abs(resid)))


def _impute(window: np.ndarray, block: np.ndarray, season: int) -> np.ndarray:
    """Missing block values for the filter's state update: the value one season earlier
    (else the previous one). Uses only earlier values, so scoring stays causal."""
    out = block.copy()
    history = np.concatenate([window, out])
    start = len(window)
    for i in np.flatnonzero(~np.isfinite(out)):
        j = start + i
        back = j - season if season > 1 and j - season >= 0 else j - 1
        history[j] = history[back]
        out[i] = history[j]
    return out


def _num(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None
