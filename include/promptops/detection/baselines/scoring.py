"""Causal, calibrated anomaly scores for any ``timestamp,value`` series, with the DAG's own
fitting code.

Placing the points: rows are taken in time order (the input order is kept for the output),
the sampling interval is the median step between distinct timestamps (a step within 10% of a
common interval, such as 5 minutes or 1 hour, is taken as that interval), and every row is
placed on the nearest slot of that grid. Jittered stamps land on their slot; rows that share a
slot (a DST repeat, a duplicated row, jitter) are merged for the fit (their mean) and each
still gets its own score. Where the stamps have no usable interval (the grid would be mostly
empty) the rows are scored in time order as a sequence.

Forecasts: :func:`score_series` walks the grid once. Every ``season`` slots it refits the
baseline (:func:`~promptops.detection.baselines.holt_winters.fit_values`, the function the
daily bands use, without their simulated paths) on the trailing ``history_days`` seasons
*before* the current slot; in between it runs the Holt-Winters filter forward with those
parameters fixed, so each forecast is made from earlier values only. While the history is
too short for Holt-Winters the median/MAD fallback is refitted more often. When the season is
one day (sub-daily data), a day-of-week factor is estimated as for the hourly bands.

Score: the one-step error is standardized by the model's spread, then recalibrated against
the recent errors themselves (their robust scale over the last :data:`RECENT_WINDOW` slots
before this one), and its two-sided tail probability ``p`` is read from a Student t with
:data:`TAIL_DF` degrees of freedom (real errors have heavier tails than the normal). The
score is ``1 - sqrt(p)`` (0.9 at p = 1%, 0.99 at p = 1e-4, 0.999 at p = 1e-6), continued on a
log scale below p = 1e-24, so it is rare for normal points, grows with surprise and never
saturates: the most surprising point is never tied at 1.

Causal by construction: the score of a point depends only on values at earlier timestamps
(and, for a merged slot, on its own value); changing a later value never changes it. The
first 10 observed slots score 0 (nothing to compare with yet), and so does a missing value.

:func:`score_csv` reads ``timestamp,value`` CSV files (ISO 8601 date-times, or Unix seconds or
milliseconds; any order; CRLF or LF) and writes ``timestamp,value,anomaly_score``, one line
per input line, in input order.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from promptops.detection.baselines.config import BaselineConfig
from promptops.detection.baselines.holt_winters import fit_values, min_points
from promptops.errors import InvalidInput

#: Points of history before anything is scored.
MIN_SCORED_HISTORY = 10
#: Longest season derived from the interval (one day of minutes); finer data: pass --season.
MAX_DERIVED_SEASON = 1440
#: Degrees of freedom of the Student t the recalibrated errors are read against.
TAIL_DF = 5
#: Slots of recent errors the recalibration looks at (at least; two seasons if longer).
RECENT_WINDOW = 500
#: Where the score switches from ``1 - sqrt(p)`` to its log-scale continuation.
_LOG_TAIL = 1e-12
#: A grid with more empty slots than this many per row has no usable interval.
_MAX_EMPTY_PER_ROW = 20
_DAY = 86_400
#: Value texts that mean a missing sample (besides an empty field).
_MISSING = frozenset({"nan", "null", "na", "n/a", "#n/a", "none", "-"})
#: Intervals a jittered median step is snapped to (seconds).
_COMMON_INTERVALS = (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200,
                     10_800, 14_400, 21_600, 43_200, 86_400, 604_800)


class CsvError(InvalidInput):
    """A CSV the scorer cannot read; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Series:
    """A parsed ``timestamp,value`` file: the raw texts (echoed back) and parsed columns."""

    raw_timestamps: list[str]
    raw_values: list[str]
    #: Nanoseconds since the epoch (UTC).
    times: np.ndarray
    values: np.ndarray
    lines: list[int]


@dataclass(frozen=True)
class Grid:
    """Where each row (input order) lies on the regular grid of the series."""

    #: Sampling interval in nanoseconds (0: a single timestamp, or rows scored in order).
    interval_ns: int
    #: Slot of each row (0 = the earliest).
    slots: np.ndarray
    #: Rows whose stamp was not exactly on the grid (jitter), and rows sharing a slot.
    snapped: int
    merged: int
    #: Rows not in time order in the input.
    unordered: int
    #: True when the stamps had no usable interval and the rows are scored in time order.
    sequence: bool = False


def season_for_interval(interval_s: float) -> int:
    """Points per day for sub-daily data (24 hourly, 288 at 5 minutes), 7 for daily data,
    else 1 (no seasonality)."""
    if interval_s <= 0:
        return 1
    if interval_s < _DAY and _DAY % interval_s == 0:
        season = int(_DAY // interval_s)
        return season if season <= MAX_DERIVED_SEASON else 1
    if interval_s == _DAY:
        return 7
    return 1


def place_on_grid(times: np.ndarray) -> Grid:
    """Each row's slot on the series' regular grid (see the module doc); any order, repeats
    and jitter allowed."""
    times = np.asarray(times, dtype="int64")
    n = len(times)
    unordered = int(np.sum(np.diff(times) < 0)) if n > 1 else 0
    distinct = np.unique(times)
    if len(distinct) < 2:
        return Grid(0, np.zeros(n, dtype="int64"), 0, n - 1 if n else 0, unordered)
    interval = _interval_ns(np.diff(distinct))
    # The grid's origin: the circular mean of the stamps' phase within the interval, so
    # jitter around the true grid does not push whole runs of points into one slot.
    rel = (times - distinct[0]).astype("float64") / interval
    angle = 2 * np.pi * (rel - np.floor(rel))
    shift = math.atan2(float(np.mean(np.sin(angle))), float(np.mean(np.cos(angle))))
    slots = np.round(rel - shift / (2 * np.pi)).astype("int64")
    slots -= slots.min()
    if slots.max() + 1 > _MAX_EMPTY_PER_ROW * n + 1000:
        # No usable interval: the distinct stamps in order are the slots.
        seq = np.searchsorted(distinct, times).astype("int64")
        return Grid(0, seq, 0, n - len(distinct), unordered, sequence=True)
    snapped = int(np.sum(np.abs(rel - shift / (2 * np.pi) - np.round(rel - shift / (2 * np.pi)))
                         > 1e-6))
    merged = n - len(np.unique(slots))
    return Grid(int(interval), slots, snapped, merged, unordered)


def _interval_ns(steps: np.ndarray) -> int:
    """The sampling interval: the median step between distinct stamps, snapped to a common
    interval within 10%, else to whole seconds (when at least one)."""
    step = float(np.median(steps))
    for common in _COMMON_INTERVALS:
        if abs(step - common * 1e9) <= 0.1 * common * 1e9:
            return int(common * 1e9)
    return int(round(step / 1e9) * 1e9) if step >= 1e9 else max(1, int(round(step)))


def score_series(timestamps: Sequence[Any] | np.ndarray, values: Sequence[float] | np.ndarray,
                 season: int | None = None, config: BaselineConfig | None = None) -> np.ndarray:
    """Anomaly scores in [0, 1), one per point in the given order, each from earlier points.

    ``timestamps``: date-times (anything pandas reads, naive = UTC) or numbers (seconds), in
    any order, repeats and jitter allowed (see the module doc).
    ``season``: points per season; default from the interval (:func:`season_for_interval`).
    """
    return _score_rows(_as_ns(timestamps), values, season, config)[0]


def _score_rows(times: np.ndarray, values: Sequence[float] | np.ndarray, season: int | None,
                config: BaselineConfig | None) -> tuple[np.ndarray, Grid, int]:
    config = config if config is not None else BaselineConfig()
    values = np.asarray(values, dtype="float64")
    if len(times) != len(values):
        raise InvalidInput(f"{len(times)} timestamps but {len(values)} values")
    grid = place_on_grid(times)
    if len(values) == 0:
        return np.zeros(0), grid, season or 1
    interval_s = grid.interval_ns / 1e9
    daily = season_for_interval(interval_s) if 0 < interval_s < _DAY else 1
    if season is None:
        season = season_for_interval(interval_s) if interval_s else 1
    if season < 1:
        raise InvalidInput(f"season must be >= 1 (1 = no seasonality), got {season}")
    finite = np.isfinite(values)
    size = int(grid.slots.max()) + 1
    total = np.bincount(grid.slots[finite], weights=values[finite], minlength=size)
    count = np.bincount(grid.slots[finite], minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        merged = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    # A season of one day: the weekday effect is estimated too, as for the hourly bands.
    week_cycles = 7 if season > 1 and season == daily else 0
    forecast, sd = _forecast_grid(merged, season, config, week_cycles)
    scale = _recent_scale(merged, forecast, sd, season)
    slots = grid.slots
    scores = tail_score(values, forecast[slots], sd[slots] * scale[slots])
    return scores, grid, season


def _forecast_grid(grid: np.ndarray, season: int, config: BaselineConfig,
                   week_cycles: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One-step forecast and its standard deviation per slot, each from earlier slots only
    (NaN before there is enough history)."""
    n = len(grid)
    forecast, sd = np.full(n, np.nan), np.full(n, np.nan)
    seen = np.concatenate([[0], np.cumsum(np.isfinite(grid))])  # observed before index i
    period = season if season >= 2 else 24
    window = config.history_days * period
    need = min_points(season, config)
    warm_block = max(1, math.ceil(period / 24))
    pos = max(int(np.searchsorted(seen, MIN_SCORED_HISTORY)), 1)
    while pos < n:
        start = max(0, pos - window)
        ready = seen[pos] - seen[start] >= need
        end = min(n, pos + (period if ready else warm_block))
        history = grid[start:pos]
        model = fit_values(history, season, end - pos, config, week_cycles=week_cycles,
                           simulate=False)
        forecast[pos:end], sd[pos:end] = model.one_step(grid[pos:end])
        # Never finer than the data's own resolution (a counter, values rounded to 0.1):
        # the rounding error of a uniform quantum q has sd q / sqrt(12).
        sd[pos:end] = np.fmax(sd[pos:end], _resolution(history) / math.sqrt(12))
        pos = end
    return forecast, sd


def _resolution(history: np.ndarray) -> float:
    """The smallest step between distinct observed values (0 with fewer than two)."""
    distinct = np.unique(history[np.isfinite(history)])
    return float(np.min(np.diff(distinct))) if len(distinct) > 1 else 0.0


def _recent_scale(grid: np.ndarray, forecast: np.ndarray, sd: np.ndarray, season: int
                  ) -> np.ndarray:
    """Per slot, how much wider the recent standardized errors are than the model says (at
    least 1): the larger of their median and 80th percentile of |z|, each over its value
    for the t, from the slots before this one (1 while fewer than 10 are known). The 80th
    percentile sees a quantised series whose forecast is often exact and otherwise a whole
    step off; neither moves much for a short burst of anomalies in the window."""
    from scipy.stats import t as student

    with np.errstate(divide="ignore", invalid="ignore"):
        z = pd.Series(np.abs(grid - forecast) / np.fmax(sd, _floor(forecast)))
    window = max(RECENT_WINDOW, 2 * season)
    rolling = z.rolling(window, min_periods=10)
    q50 = rolling.quantile(0.5).shift(1).to_numpy() / student.ppf(0.75, TAIL_DF)
    q80 = rolling.quantile(0.8).shift(1).to_numpy() / student.ppf(0.9, TAIL_DF)
    scale = np.fmax(q50, q80)
    # Only ever wider: a model that just moved from a wide fallback to a fitted band would
    # otherwise be sharpened by the fallback's small z's.
    return np.where(np.isfinite(scale), np.fmax(scale, 1.0), 1.0)


def tail_score(x: np.ndarray, forecast: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """The score of values ``x`` against forecasts with standard deviation ``sd`` (see the
    module doc): ``1 - sqrt(p)`` for the two-sided Student-t tail probability ``p``, on a
    log scale below p = 1e-24; 0 where the forecast or the value is missing."""
    from scipy.stats import t as student

    resid = np.abs(np.asarray(x, dtype="float64") - forecast)
    floor = _floor(forecast)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(resid <= floor, 0.0, resid / np.fmax(sd, floor))
    known = np.isfinite(z)
    log10_p = np.full(len(z), 0.0)
    log10_p[known] = (student.logsf(z[known], TAIL_DF) + math.log(2)) / math.log(10)
    log10_p = np.minimum(log10_p, 0.0)
    return score_from_log10_p(log10_p)


def score_from_log10_p(log10_p: np.ndarray) -> np.ndarray:
    """``1 - sqrt(p)`` down to ``1 - _LOG_TAIL``, then ``1 - _LOG_TAIL * L0 / L`` for
    ``L = -log10 p`` (continuous, strictly increasing, below 1 for any finite p)."""
    level = -np.asarray(log10_p, dtype="float64")
    l0 = -2 * math.log10(_LOG_TAIL)
    with np.errstate(divide="ignore", over="ignore"):
        body = 1 - np.power(10.0, -level / 2)
        tail = 1 - _LOG_TAIL * l0 / np.maximum(level, l0)
    return np.where(level <= l0, body, tail)


def _floor(forecast: np.ndarray) -> np.ndarray:
    """Errors below this are exact hits (floating-point noise, not surprise); from the
    forecast, so it stays causal."""
    return 1e-9 * np.fmax(1.0, np.nan_to_num(np.abs(forecast), nan=1.0))


def _as_ns(timestamps: Sequence[Any] | np.ndarray) -> np.ndarray:
    arr = np.asarray(timestamps)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").astype("int64")
    if arr.dtype.kind in "iuf":
        return np.round(arr.astype("float64") * 1e9).astype("int64")
    parsed = pd.to_datetime(pd.Series(arr), utc=True, format="mixed")
    return parsed.astype("datetime64[ns, UTC]").to_numpy("int64", copy=False)


# -- CSV -------------------------------------------------------------------------------------


def read_series_csv(path: str | Path) -> Series:
    """Read ``timestamp,value`` (header required; other columns are ignored; any order,
    CRLF or LF). An empty value is a missing sample. Raises :class:`CsvError` naming the
    line and the problem when a line cannot be read."""
    path = Path(path)
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CsvError(f"{path}: cannot open: {exc.strerror or exc}") from None
    raw_ts: list[str] = []
    raw_v: list[str] = []
    lines: list[int] = []
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            while header is not None and not any(h.strip() for h in header):
                header = next(reader, None)
            if header is None:
                raise CsvError(f"{path}: empty file; expected a header line 'timestamp,value' "
                               "and one line per sample")
            names = [h.strip().lower() for h in header]
            if "timestamp" not in names or "value" not in names:
                raise CsvError(f"{path} line {reader.line_num}: header must name the columns "
                               f"'timestamp' and 'value', got {','.join(header)!r}")
            ti, vi = names.index("timestamp"), names.index("value")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(ti, vi):
                    raise CsvError(f"{path} line {reader.line_num}: {len(row)} field(s), "
                                   f"expected {len(names)} as in the header")
                raw_ts.append(row[ti].strip())
                raw_v.append(row[vi].strip())
                lines.append(reader.line_num)
        except csv.Error as exc:
            raise CsvError(f"{path} line {reader.line_num}: not valid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise CsvError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from None
    if not raw_ts:
        raise CsvError(f"{path}: no data lines after the header")
    times = _parse_times(path, raw_ts, lines)
    values = _parse_values(path, raw_v, lines)
    return Series(raw_ts, raw_v, times, values, lines)


def _parse_times(path: Path, raw: list[str], lines: list[int]) -> np.ndarray:
    numeric = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(dtype="float64",
                                                                      na_value=np.nan)
    if np.isfinite(numeric[0]):  # the first line decides: Unix seconds ...
        bad = np.flatnonzero(~np.isfinite(numeric))
        if len(bad):
            i = int(bad[0])
            raise CsvError(f"{path} line {lines[i]}: timestamp {raw[i]!r} is not a number like "
                           f"the first one ({raw[0]!r}); use Unix seconds or ISO 8601 "
                           "date-times throughout")
        return np.round(numeric * _epoch_unit(numeric)).astype("int64")
    # ... or date-times.
    parsed = pd.to_datetime(pd.Series(raw), utc=True, format="ISO8601", errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise CsvError(f"{path} line {lines[i]}: timestamp {raw[i]!r} is not a date-time; use "
                       "ISO 8601 (2024-05-01T13:00:00Z, or '2024-05-01 13:00:00' for UTC) or "
                       "Unix seconds")
    return parsed.astype("datetime64[ns, UTC]").to_numpy("int64", copy=False)


def _epoch_unit(numbers: np.ndarray) -> float:
    """Nanoseconds per unit of numeric stamps: seconds, or milliseconds / microseconds /
    nanoseconds where the numbers are too large for seconds (past the year 5000)."""
    top = float(np.max(np.abs(numbers)))
    for limit, unit in ((1e17, 1.0), (1e14, 1e3), (1e11, 1e6)):
        if top >= limit:
            return unit
    return 1e9


def _parse_values(path: Path, raw: list[str], lines: list[int]) -> np.ndarray:
    empty = np.array([v == "" or v.lower() in _MISSING for v in raw])
    numbers = pd.to_numeric(pd.Series(raw).where(~empty, None), errors="coerce").to_numpy(
        dtype="float64", na_value=np.nan)
    bad = np.flatnonzero(~empty & ~np.isfinite(numbers))
    if len(bad):
        i = int(bad[0])
        raise CsvError(f"{path} line {lines[i]}: value {raw[i]!r} is not a finite number "
                       "(leave it empty for a missing sample)")
    return numbers


def write_scores_csv(path: str | Path | None, series: Series, scores: np.ndarray) -> None:
    """``timestamp,value,anomaly_score`` with the input's own timestamp and value texts;
    ``path`` None or ``-`` writes to stdout."""
    import sys

    rows = zip(series.raw_timestamps, series.raw_values, scores, strict=True)
    if path is None or str(path) == "-":
        _write(sys.stdout, rows)
        return
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        _write(fh, rows)


def _write(fh: IO[str], rows: Iterable[tuple[Any, Any, float]]) -> None:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(["timestamp", "value", "anomaly_score"])
    for ts, value, score in rows:
        # Full precision (shortest exact form): the tail must not be rounded into ties.
        writer.writerow([ts, value, repr(float(score))])


def score_csv(in_path: str | Path, out_path: str | Path | None, season: int | None = None,
              config: BaselineConfig | None = None) -> dict:
    """Score a CSV file into another, one line per input line in input order; returns
    what was done (points, interval, season, and how many rows were out of order, placed
    on the grid from a jittered stamp, or merged into a shared slot)."""
    series = read_series_csv(in_path)
    scores, grid, used = _score_rows(series.times, series.values, season, config)
    write_scores_csv(out_path, series, scores)
    return {"points": len(scores), "interval_s": grid.interval_ns / 1e9, "season": used,
            "max_score": float(scores.max()) if len(scores) else 0.0,
            "missing": int(np.sum(~np.isfinite(series.values))),
            "unordered": grid.unordered, "snapped": grid.snapped, "merged": grid.merged,
            "sequence": grid.sequence}
