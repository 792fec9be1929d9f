"""The hourly check against the day's bands: a value outside its band, far enough from
what was expected, on enough samples, becomes a :class:`~promptops.contracts.findings.Finding`.

A row fires when all hold:

- it is outside ``[lower, upper]`` on the metric's bad side (``direction``: a high error rate,
  a low success rate; ``both`` for request counts);
- ``|value - expected|`` is at least ``min_change`` (metric unit) and at least
  ``min_relative_change x |expected|``, so a narrow band around a quiet slice does not page;
- ``samples >= min_samples`` (counts and sums need none: a drop to nothing is the point).

The band is the model's prediction interval widened by this hour's sampling error, in
quadrature at the band's z: ``sqrt(pred_half^2 + (z * sample_se)^2)`` on each side, where
``sample_se`` comes from the metric table's ``lower``/``upper`` (the 95% sampling interval of
the hour's value; for a high value its low end, for a low value its high end) and, where
those are null, for rates from the Wilson interval of the observed rate at ``samples``
(else no widening). A rate's band is also never narrower than the Wilson interval of the
expected rate at the hour's sample count, so binomial noise on a small slice does not fire.

Severity is ``critical`` when the value is also outside the band widened ``critical_factor``
times around expected (``|value - expected| >= critical_factor x`` the half-width on that
side; a zero-width band, from a constant history, makes every finding critical), else
``warning``. A band that may not page is capped at ``warning`` and its summary says so: a
median/MAD fallback band, and any band fitted on less than ``min_page_history_days`` (7) of
history; below ``min_warn_history_days`` (2) there is no finding at all. Rule name
``baseline_<metric>``, kind ``baseline``.

A slice's volume (``VOLUME_METRICS``: requests, tokens, cost...) is judged against the
platform as well: when the rest of the platform (the metric's overall row less the slice)
is at ``r`` times its expected value this hour, a slice outside its band but inside that
band rescaled by ``r`` (``lower x r`` to ``upper x r`` around ``expected x r``, widened by
the slice's own sampling error as above) moved with everything else and is not a finding
-- also when the overall row fires, for then the overall finding is the incident. So on a
holiday at 0.4x a quiet model at 0.4x stays silent, while one app at 0.2x in a steady
platform, or one user's flood, still fires. This holds only for ``1/platform_move_max <=
r <= platform_move_max`` (0.25x-4x): beyond that the platform is in an outage or a flood
and each slice is judged alone, as it is when ``judge_slices_against_platform`` is off,
the overall row is missing, or the rest is expected to carry under 10% of the traffic.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from promptops.contracts.findings import Finding
from promptops.contracts.metric_table import METRICS, OVERALL
from promptops.detection.baselines.bands import read_bands, refit_baselines
from promptops.detection.baselines.config import (
    METRIC_UNITS,
    VOLUME_METRICS,
    BaselineConfig,
    metric_bounds,
)
from promptops.detection.baselines.holt_winters import HOLT_WINTERS
from promptops.detection.rules import SAMPLE_NOUNS, format_value, metric_label
from promptops.errors import InvalidInput, MissingData
from promptops.stats import wilson_interval
from promptops.timeutil import as_utc, hour_floor

if TYPE_CHECKING:
    from promptops.lake.store import Lake

log = logging.getLogger(__name__)

_KEY = ["metric", "dimension", "slice"]
_METHOD_WORDS: dict[str, str] = {HOLT_WINTERS: "Holt-Winters", "median_mad": "median/MAD fallback"}
_SUFFIXES = ("%", " ms", " tokens", "/5", " calls/min")
#: The rest of the platform (overall less a slice) must be expected to carry at least this
#: share of the traffic for its move to be measured: below it the ratio is the noise of two
#: separately fitted bands that nearly cancel.
_MIN_REST_SHARE = 0.1


def band_findings(current: pa.Table | None, bands: pa.Table | None, hour: datetime,
                  config: BaselineConfig | None = None) -> list[Finding]:
    """Findings for the metric rows of ``hour`` in ``current`` (METRICS_SCHEMA) that breach
    their band for that hour in ``bands`` (BANDS_SCHEMA), sorted by rule, dimension, slice."""
    config = config if config is not None else BaselineConfig()
    hour = hour_floor(hour)
    if current is None or bands is None or current.num_rows == 0 or bands.num_rows == 0:
        return []
    df = _joined(current, bands, hour)
    if df.empty:
        return []
    judged = _judge(df, config)
    out = [_finding(df.iloc[i], int(i), judged, config)
           for i in np.flatnonzero(judged["fires"])]
    return sorted(out, key=lambda f: (f.rule, f.labels["dimension"], f.labels["slice"]))


def _joined(current: pa.Table, bands: pa.Table, hour: datetime) -> pd.DataFrame:
    """The hour's metric rows with their band (rows without a value or band dropped)."""
    now = _rows_of_hour(current, hour, ["metric", "dimension", "slice", "value", "samples",
                                        "lower", "upper"])
    now = now.rename(columns={"lower": "sample_lower", "upper": "sample_upper"})
    band = _rows_of_hour(bands, hour, ["metric", "dimension", "slice", "expected", "lower",
                                       "upper", "method", "reason", "fitted_at", "params"])
    try:
        df = now.merge(band, on=_KEY, how="inner", validate="one_to_one")
    except pd.errors.MergeError:
        dup = now[now.duplicated(_KEY)] if now.duplicated(_KEY).any() else band[
            band.duplicated(_KEY)]
        first = dup.iloc[0]
        raise InvalidInput(f"baseline check for {hour:%Y-%m-%d %H:%M} UTC: duplicate rows for "
                         f"metric={first.metric} {first.dimension}={first.slice}; pass one "
                         "hour's metrics and one day's bands") from None
    keep = (df["value"].notna() & df["expected"].notna() & df["lower"].notna()
            & df["upper"].notna())
    return df[keep].reset_index(drop=True)


def _sampling_interval(df: pd.DataFrame, rate: np.ndarray, config: BaselineConfig
                       ) -> tuple[np.ndarray, np.ndarray]:
    """This hour's sampling interval of each value: the metric table's ``lower``/``upper``,
    else for a rate the Wilson interval of the observed rate at its samples (same
    coverage), else the value itself (no sampling error known)."""
    value = df["value"].to_numpy(dtype="float64")
    samples = df["samples"].to_numpy(dtype="float64")
    lo = df["sample_lower"].to_numpy(dtype="float64", na_value=np.nan)
    hi = df["sample_upper"].to_numpy(dtype="float64", na_value=np.nan)
    w_lo, w_hi = wilson_interval(np.clip(value, 0, 1) * samples, samples,
                                 alpha=1 - config.sampling_coverage)
    lo = np.where(np.isfinite(lo), lo, np.where(rate, w_lo, value))
    hi = np.where(np.isfinite(hi), hi, np.where(rate, w_hi, value))
    return np.fmin(lo, value), np.fmax(hi, value)


def _judge(df: pd.DataFrame, config: BaselineConfig) -> dict[str, np.ndarray]:
    """Per row: the widened band, whether it fires, and its severity (see the module doc)."""
    from scipy.stats import norm

    metrics = df["metric"].to_numpy()
    lookup = {m: {f: config.for_metric(f, m) for f in ("direction", "min_change",
                                                       "min_relative_change", "min_samples")}
              for m in set(metrics)}
    value = df["value"].to_numpy(dtype="float64")
    expected = df["expected"].to_numpy(dtype="float64")
    lower, upper = df["lower"].to_numpy(dtype="float64"), df["upper"].to_numpy(dtype="float64")
    samples = df["samples"].to_numpy(dtype="float64")
    rate = np.array([metric_bounds(m) == (0.0, 1.0) for m in metrics])
    # This hour's sampling error on top of the model's prediction error (in quadrature, at
    # the band's z): for a high value the question is whether the low end of its interval
    # is still above the band, and the other way round.
    s_lo, s_hi = _sampling_interval(df, rate, config)
    ratio = config.z / float(norm.ppf(0.5 + config.sampling_coverage / 2))
    up = expected + np.hypot(np.fmax(upper - expected, 0), (value - s_lo) * ratio)
    down = expected - np.hypot(np.fmax(expected - lower, 0), (s_hi - value) * ratio)
    # A rate is also never judged finer than the binomial noise of the expected rate at
    # this hour's n (a quiet slice whose usual error rate is 0 has 2 errors in 69 calls).
    w_lo, w_hi = wilson_interval(np.clip(expected, 0, 1) * samples, samples,
                                 alpha=1 - config.coverage)
    up = np.where(rate, np.fmax(up, w_hi), up)
    down = np.where(rate, np.fmin(down, w_lo), down)
    bounds = np.array([metric_bounds(m) for m in metrics]).reshape(-1, 2)
    up, down = np.fmin(up, bounds[:, 1]), np.fmax(down, bounds[:, 0])
    widened = (up > upper + 1e-12) | (down < lower - 1e-12)
    direction = np.array([lookup[m]["direction"] for m in metrics])
    needed = np.maximum([lookup[m]["min_change"] for m in metrics],
                        np.array([lookup[m]["min_relative_change"] for m in metrics])
                        * np.abs(expected))
    enough = samples >= np.array([lookup[m]["min_samples"] for m in metrics])
    high = (value > up) & (direction != "below")
    low = (value < down) & (direction != "above")
    change = np.abs(value - expected)
    history = _history_days(df)
    volume = np.isin(metrics, sorted(VOLUME_METRICS))
    fires = ((high | low) & (change >= needed) & (change > 0) & enough
             & ~(history < config.min_warn_history_days)
             & ~(volume & (history < config.min_volume_history_days)))
    # A slice that moved with the rest of the platform (a holiday) is no news of its own.
    move = _platform_move(df, volume, config)
    scaled = expected * move
    up_m = np.fmin(scaled + np.hypot(np.fmax((upper - expected) * move, 0),
                                     (value - s_lo) * ratio), bounds[:, 1])
    down_m = np.fmax(scaled - np.hypot(np.fmax((expected - lower) * move, 0),
                                       (s_hi - value) * ratio), bounds[:, 0])
    with_platform = np.isfinite(move) & (value <= up_m) & (value >= down_m)
    fires &= ~with_platform
    half = np.where(high, up - expected, expected - down)
    critical = (change >= config.critical_factor * half) & ~np.isin(metrics, config.warning_only)
    cap = np.array([_severity_cap(m, d, config) for m, d in
                    zip(df["method"].to_numpy(), history, strict=True)], dtype=object)
    return {"value": value, "expected": expected, "lower": down, "upper": up,
            "samples": samples, "high": high, "fires": fires, "needed": needed,
            "widened": widened, "critical": critical & (cap == None),  # noqa: E711
            "cap": cap, "s_lo": s_lo, "s_hi": s_hi, "move": move, "move_lo": down_m,
            "move_hi": up_m}


def _platform_move(df: pd.DataFrame, volume: np.ndarray, config: BaselineConfig
                   ) -> np.ndarray:
    """Per row, how far the rest of the platform moved this hour (actual / expected of the
    metric's overall row less this slice), for the volume slice rows it is judged against;
    NaN where it is not (knob off, not a volume slice, no overall row, the rest too small a
    share to measure, or a move beyond ``platform_move_max``: an outage or a flood)."""
    move = np.full(len(df), np.nan)
    if not config.judge_slices_against_platform:
        return move
    dims = df["dimension"].to_numpy()
    overall = df[dims == OVERALL].set_index("metric")
    sliced = volume & (dims != OVERALL) & df["metric"].isin(overall.index).to_numpy()
    if not sliced.any():
        return move
    rows = df[sliced]
    total = overall.loc[rows["metric"], ["value", "expected"]].to_numpy(dtype="float64")
    # Less the slice's own share, so a slice that is most of the traffic (one model
    # serving 90% of calls) is not excused by the overall move it caused itself.
    rest_value = total[:, 0] - rows["value"].to_numpy(dtype="float64")
    rest_expected = total[:, 1] - rows["expected"].to_numpy(dtype="float64")
    measurable = rest_expected >= _MIN_REST_SHARE * total[:, 1]
    r = np.divide(rest_value, rest_expected, out=np.full(len(rows), np.nan),
                  where=measurable & (rest_expected > 0))
    within = (r >= 1 / config.platform_move_max) & (r <= config.platform_move_max)
    move[np.flatnonzero(sliced)] = np.where(within, r, np.nan)
    return move


def _history_days(df: pd.DataFrame) -> np.ndarray:
    """Days of history each band rests on (``history_hours`` in its params; NaN for bands
    fitted before that was recorded)."""
    out = np.full(len(df), np.nan)
    for i, text in enumerate(df["params"].to_numpy()):
        try:
            hours = json.loads(text).get("history_hours") if text else None
        except (TypeError, ValueError, AttributeError):
            hours = None
        if isinstance(hours, int | float):
            out[i] = float(hours) / 24
    return out


def _severity_cap(method: str, days: float, config: BaselineConfig) -> str | None:
    """Why a band's finding is a warning at most (None: it may page)."""
    if method != HOLT_WINTERS:
        return f"{_METHOD_WORDS.get(method, method)} band"
    if days < config.min_page_history_days:
        return f"{days:.1f} days of history, pages from {config.min_page_history_days:g}"
    return None


def _finding(row: pd.Series, i: int, j: dict[str, np.ndarray], config: BaselineConfig
             ) -> Finding:
    """One band finding from row ``i`` of the joined table and its judgement ``j``."""
    unit = METRIC_UNITS.get(row.metric, "count")
    fmt = lambda v: format_value(float(v), unit)  # noqa: E731
    band_text = _range(fmt(j["lower"][i]), fmt(j["upper"][i]))
    method = _METHOD_WORDS.get(row.method, row.method)
    cap = j["cap"][i]
    summary = (f"{metric_label(row.metric)} {fmt(j['value'][i])} outside expected {band_text} "
               f"({method}, same hour's band) {_where(row.dimension, row.slice)} "
               f"({_samples(row.metric, row.samples)}"
               + (f"; warning only: {cap})" if cap else ")"))
    fitted = as_utc(pd.Timestamp(row.fitted_at).to_pydatetime())
    rel = config.for_metric("min_relative_change", row.metric)
    levels = (f"outside the band and at least {fmt(j['needed'][i])} from expected"
              + (f" (the larger of {fmt(config.for_metric('min_change', row.metric))} and "
                 f"{rel:.0%} of expected)" if rel else "")
              + f"; critical beyond {config.critical_factor:g}x the band's half-width")
    labels = {"metric": row.metric, "dimension": row.dimension, "slice": row.slice,
              "service": config.service}
    if row.dimension != OVERALL:
        labels.setdefault(row.dimension, row.slice)
    annotations = {
        "window": "1h",
        "band": f"{band_text}, expected {fmt(j['expected'][i])} ({method}, fitted "
                f"{fitted:%Y-%m-%d %H:%M} UTC)",
        "baseline_method": str(row.method),
        "baseline_reason": str(row.reason),
        "levels": levels,
    }
    if j["widened"][i]:
        annotations["band"] += (f"; widened by this hour's sampling error (value "
                                f"{_range(fmt(j['s_lo'][i]), fmt(j['s_hi'][i]))} at "
                                f"{config.sampling_coverage:.0%}, {int(j['samples'][i]):,} "
                                "samples)")
    if cap:
        annotations["severity_cap"] = f"warning only: {cap}"
    if np.isfinite(j["move"][i]):
        annotations["platform_move"] = (
            f"the rest of the platform is at {j['move'][i]:.2f}x expected this hour; this "
            f"slice is also outside its band rescaled by that "
            f"({_range(fmt(j['move_lo'][i]), fmt(j['move_hi'][i]))})")
    high = bool(j["high"][i])
    return Finding(
        rule=f"baseline_{row.metric}", severity="critical" if j["critical"][i] else "warning",
        kind="baseline", labels=labels, summary=summary, value=float(j["value"][i]),
        threshold=float(j["upper"][i] if high else j["lower"][i]),
        pending_for=config.pending_for, keep_firing_for=config.keep_firing_for,
        annotations=annotations)


def baseline_findings_for_hour(lake: Lake, hour: datetime, config: BaselineConfig | None = None,
                               *, fit_missing: bool = True) -> list[Finding]:
    """The hourly evaluation's baseline half: the hour's metrics partition against the
    bands stored for its day. When the day has no bands yet (the daily refit has not run,
    or a backfill reaches back before it), ``fit_missing`` fits and stores them first
    (a few seconds, once per day); otherwise there are no findings."""
    config = config if config is not None else BaselineConfig()
    hour = hour_floor(hour)
    current = lake.read_partition(METRICS, hour)
    if current is None:
        raise MissingData(f"no metrics partition for {hour.isoformat()} in "
                          f"{lake.partition_dir(METRICS, hour)}; run the metrics task first")
    bands = read_bands(lake, hour)
    if bands is None and fit_missing:
        log.info("no baselines for %s yet: fitting them now", f"{hour:%Y-%m-%d}")
        refit_baselines(lake, hour, config)
        bands = read_bands(lake, hour)
    elif bands is None:
        log.info("no baselines for %s: baseline check skipped", f"{hour:%Y-%m-%d}")
    return band_findings(current, bands, hour, config)


def _rows_of_hour(table: pa.Table, hour: datetime, columns: list[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InvalidInput(f"baseline check: table lacks column(s) {', '.join(missing)}")
    if "hour" in table.column_names:
        hours = table.column("hour")
        table = table.filter(pc.equal(hours, pa.scalar(hour, hours.type)))
    return table.select(columns).to_pandas()


def _range(lo: str, hi: str) -> str:
    """``0.3-0.9%`` rather than ``0.3%-0.9%`` when both ends share a unit suffix."""
    for suffix in _SUFFIXES:
        if lo.endswith(suffix) and hi.endswith(suffix):
            return f"{lo[: -len(suffix)]}-{hi}"
    return f"{lo}-{hi}"


def _where(dim: str, slc: str) -> str:
    return "overall" if dim == OVERALL else f"on {dim}={slc}"


def _samples(metric: str, n: float) -> str:
    count = 0 if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)
    return f"{count:,} {SAMPLE_NOUNS.get(metric, 'calls')}"
