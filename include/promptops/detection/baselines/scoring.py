"""Causal anomaly scores for any regular series, with the DAG's own fitting code.

:func:`score_series` walks the series once. Every ``season`` points it refits the baseline
(:func:`~promptops.detection.baselines.holt_winters.fit_values`, the function the daily bands use) on
the trailing ``history_days`` seasons *before* the current point; in between it runs the
Holt-Winters filter forward with those parameters fixed, so each forecast is made from
earlier values only. While the history is too short for Holt-Winters the median/MAD
fallback is refitted more often. When the season is one day (sub-daily data), a day-of-week factor is estimated as for the
hourly bands. The score of a point is ``1 - p`` for the two-sided
normal p-value of its standardized one-step error ``(value - forecast) / sd``, i.e.
``erf(|z| / sqrt 2)``: 0 on the forecast, 0.95 at |z| = 1.96, 1 far out.

Causal by construction: the score of point ``t`` depends only on values up to ``t``; changing
a later value never changes it. The first 10 observed points score 0 (nothing to compare
with yet), and so does a missing value.

:func:`score_csv` reads ``timestamp,value`` CSV files (ISO 8601 date-times or Unix seconds,
any regular interval; missing samples allowed where the step is a whole multiple of the
interval) and writes ``timestamp,value,anomaly_score``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
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
_DAY = 86_400


class CsvError(InvalidInput):
    """A CSV the scorer cannot read; the message names the file, the line and the fix."""


class IrregularSeries(InvalidInput):
    """Timestamps that are not increasing on a regular grid; ``index`` is the first point
    (0-based) that breaks it."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"point {index}: {problem}")
        self.index = index
        self.problem = problem


@dataclass(frozen=True)
class Series:
    """A parsed ``timestamp,value`` file: the raw texts (echoed back) and parsed columns."""

    raw_timestamps: list[str]
    raw_values: list[str]
    #: Nanoseconds since the epoch (UTC).
    times: np.ndarray
    values: np.ndarray
    lines: list[int]


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


def regular_grid(times: np.ndarray) -> tuple[int, np.ndarray]:
    """The sampling interval (ns; the most common step) and each point's slot on the
    regular grid. Raises ValueError naming the first point (0-based) that breaks it."""
    times = np.asarray(times, dtype="int64")
    if len(times) < 2:
        return 0, np.zeros(len(times), dtype="int64")
    steps = np.diff(times)
    bad = np.flatnonzero(steps <= 0)
    if len(bad):
        raise IrregularSeries(int(bad[0]) + 1, "timestamp is not after the previous one; "
                              "sort by time and drop duplicates")
    uniq, counts = np.unique(steps, return_counts=True)
    interval = int(uniq[np.argmax(counts)])
    off = np.flatnonzero(steps % interval != 0)
    if len(off):
        i = int(off[0]) + 1
        raise IrregularSeries(i, f"step of {_fmt_ns(int(steps[i - 1]))} is not a whole multiple "
                              f"of the sampling interval {_fmt_ns(interval)}; the series must "
                              "be regular (missing samples are fine)")
    return interval, (times - times[0]) // interval


def score_series(timestamps: Sequence[Any] | np.ndarray, values: Sequence[float] | np.ndarray,
                 season: int | None = None, config: BaselineConfig | None = None) -> np.ndarray:
    """Anomaly scores in [0, 1], one per point, each from earlier points only.

    ``timestamps``: date-times (anything pandas reads, naive = UTC) or numbers (seconds),
    strictly increasing at a regular interval (gaps of whole intervals allowed).
    ``season``: points per season; default from the interval (:func:`season_for_interval`).
    """
    config = config if config is not None else BaselineConfig()
    values = np.asarray(values, dtype="float64")
    times = _as_ns(timestamps)
    if len(times) != len(values):
        raise InvalidInput(f"{len(times)} timestamps but {len(values)} values")
    if len(values) == 0:
        return np.zeros(0)
    interval, slots = regular_grid(times)
    daily = season_for_interval(interval / 1e9) if 0 < interval < _DAY * 1e9 else 1
    if season is None:
        season = daily if daily > 1 else (season_for_interval(interval / 1e9) if interval else 1)
    if season < 1:
        raise InvalidInput(f"season must be >= 1 (1 = no seasonality), got {season}")
    grid = np.full(int(slots[-1]) + 1, np.nan)
    grid[slots] = np.where(np.isfinite(values), values, np.nan)
    # A season of one day: the weekday effect is estimated too, as for the hourly bands.
    week_cycles = 7 if season > 1 and season == daily else 0
    return _score_grid(grid, season, config, week_cycles)[slots]


def _score_grid(grid: np.ndarray, season: int, config: BaselineConfig,
                week_cycles: int = 0) -> np.ndarray:
    n = len(grid)
    scores = np.zeros(n)
    seen = np.concatenate([[0], np.cumsum(np.isfinite(grid))])  # observed before index i
    period = season if season >= 2 else 24
    window = config.history_days * period
    need = min_points(season, config)
    warm_block = max(1, math.ceil(period / 24))
    pos = int(np.searchsorted(seen, MIN_SCORED_HISTORY))  # first index with enough history
    pos = max(pos, 1)
    while pos < n:
        start = max(0, pos - window)
        ready = seen[pos] - seen[start] >= need
        end = min(n, pos + (period if ready else warm_block))
        model = fit_values(grid[start:pos], season, end - pos, config, week_cycles=week_cycles)
        forecast, sd = model.one_step(grid[pos:end])
        scores[pos:end] = _score(grid[pos:end], forecast, sd, grid[start:pos])
        pos = end
    return scores


def _score(x: np.ndarray, forecast: np.ndarray, sd: np.ndarray, history: np.ndarray
           ) -> np.ndarray:
    from scipy.special import erf

    scale = np.nanmedian(np.abs(history)) if np.isfinite(history).any() else 1.0
    floor = 1e-9 * max(1.0, float(scale))
    resid = np.abs(x - forecast)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(resid <= floor, 0.0, resid / np.fmax(sd, floor))
    out = erf(z / math.sqrt(2))
    return np.where(np.isfinite(out), out, 0.0)


def _as_ns(timestamps: Sequence[Any] | np.ndarray) -> np.ndarray:
    arr = np.asarray(timestamps)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").astype("int64")
    if arr.dtype.kind in "iuf":
        return np.round(arr.astype("float64") * 1e9).astype("int64")
    parsed = pd.to_datetime(pd.Series(arr), utc=True, format="mixed")
    return parsed.astype("datetime64[ns, UTC]").to_numpy("int64", copy=False)


def _fmt_ns(ns: int) -> str:
    return str(timedelta(microseconds=ns / 1000))


# -- CSV -------------------------------------------------------------------------------------


def read_series_csv(path: str | Path) -> Series:
    """Read ``timestamp,value`` (header required; other columns are ignored). An empty
    value is a missing sample. Raises :class:`CsvError` naming the line and the problem."""
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
    try:
        regular_grid(times)
    except IrregularSeries as exc:
        i = exc.index
        raise CsvError(f"{path} line {lines[i]}: timestamp {raw_ts[i]!r} after "
                       f"{raw_ts[i - 1]!r}: {exc.problem}") from None
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
        return np.round(numeric * 1e9).astype("int64")
    # ... or date-times.
    parsed = pd.to_datetime(pd.Series(raw), utc=True, format="ISO8601", errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise CsvError(f"{path} line {lines[i]}: timestamp {raw[i]!r} is not a date-time; use "
                       "ISO 8601 (2024-05-01T13:00:00Z, or '2024-05-01 13:00:00' for UTC) or "
                       "Unix seconds")
    return parsed.astype("datetime64[ns, UTC]").to_numpy("int64", copy=False)


def _parse_values(path: Path, raw: list[str], lines: list[int]) -> np.ndarray:
    empty = np.array([v == "" or v.lower() in ("nan", "null", "na") for v in raw])
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
        writer.writerow([ts, value, f"{score:.8f}"])


def score_csv(in_path: str | Path, out_path: str | Path | None, season: int | None = None,
              config: BaselineConfig | None = None) -> dict:
    """Score a CSV file into another; returns what was done (points, interval, season)."""
    series = read_series_csv(in_path)
    interval, _ = regular_grid(series.times)
    used = season if season is not None else (
        season_for_interval(interval / 1e9) if interval else 1)
    scores = score_series(series.times.astype("datetime64[ns]"), series.values, season=used,
                          config=config)
    write_scores_csv(out_path, series, scores)
    return {"points": len(scores), "interval_s": interval / 1e9, "season": used,
            "max_score": float(scores.max()) if len(scores) else 0.0,
            "missing": int(np.sum(~np.isfinite(series.values)))}
