"""The day's bands: every configured series fitted on its history, 24 hourly bands each,
stored in the lake for the hourly evaluation.

A series is (metric, dimension, slice) over the hours of the fit window
``[day - history_days, day)``. An hour with no metrics partition is a gap (NaN, filled or
fallen back on by the fit, never zero). In an hour that has a partition, a slice without a
row had no traffic: zero for counts and sums (requests, tokens, cost), unknown for rates,
latencies and quality. A null value stays unknown.

Slices: ``overall``; every slice of the other configured dimensions up to ``max_slices``
(most requests in the window first); for ``team`` the ``top_teams`` busiest teams.

Lake layout: dataset ``baselines``, one partition per day the bands are *for*, stored as
hour 00 of that day (``baselines/date=YYYY-MM-DD/hour=00/part-00000.parquet``); its rows
cover the 24 hours of the day. Refitting a day replaces its partition.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from promptops.contracts import metric_table as mt
from promptops.contracts.datasets import BASELINES as BANDS
from promptops.detection.baselines.config import VOLUME_METRICS, BaselineConfig
from promptops.detection.baselines.holt_winters import BaselineFit, fit_series
from promptops.errors import InvalidInput
from promptops.timeutil import as_utc, hour_floor

if TYPE_CHECKING:
    from promptops.lake.store import Lake, PartitionInfo

log = logging.getLogger(__name__)

#: Rows of the BANDS dataset: a day's bands, in the partition of hour 00 of that day.
BANDS_SCHEMA = pa.schema([
    pa.field("metric", pa.string(), nullable=False),
    pa.field("dimension", pa.string(), nullable=False),
    pa.field("slice", pa.string(), nullable=False),
    pa.field("hour", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("expected", pa.float64()),
    pa.field("lower", pa.float64()),
    pa.field("upper", pa.float64()),
    pa.field("method", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("fitted_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("params", pa.string(), nullable=False),
])

_HISTORY_COLUMNS = ["hour", "metric", "dimension", "slice", "value", "samples"]
_KEY = ["metric", "dimension", "slice"]
_HOUR_US = 3_600_000_000


def day_start(day: date | datetime) -> datetime:
    """Midnight UTC of a date, or of the day a datetime falls in (naive = UTC)."""
    if not isinstance(day, datetime):
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    return as_utc(day).replace(hour=0, minute=0, second=0, microsecond=0)


# -- the series ------------------------------------------------------------------------------


def history_series(table: pa.Table | None, day: date | datetime, config: BaselineConfig
                   ) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """The configured series over the fit window before ``day``: keys (metric, dimension,
    slice) and a matrix of one row per key, one column per hour (NaN = gap/unknown)."""
    start = day_start(day) - timedelta(days=config.history_days)
    n_hours = config.history_days * 24
    if table is None or table.num_rows == 0:
        return [], np.empty((0, n_hours))
    missing = [c for c in _HISTORY_COLUMNS if c not in table.column_names]
    if missing:
        raise InvalidInput(f"metric history: missing column(s) {', '.join(missing)}; expected "
                         "the layout of promptops.contracts.metric_table.METRICS_SCHEMA")
    df = table.select(_HISTORY_COLUMNS[1:]).to_pandas()
    micros = table.column("hour").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    start_us = int(start.timestamp()) * 1_000_000
    pos = (micros.to_numpy() - start_us) // _HOUR_US
    inside = (pos >= 0) & (pos < n_hours)
    df, pos = df[inside], pos[inside]
    observed = np.zeros(n_hours, dtype=bool)
    observed[np.unique(pos)] = True  # an hour with any row has a partition

    keep = df["metric"].isin(config.metrics).to_numpy() & _chosen_slices(df, config)
    df, pos = df[keep], pos[keep]
    if df.empty:
        return [], np.empty((0, n_hours))
    codes, uniques = pd.MultiIndex.from_frame(df[_KEY]).factorize(sort=True)
    values = np.full((len(uniques), n_hours), np.nan)
    has_row = np.zeros((len(uniques), n_hours), dtype=bool)
    values[codes, pos] = df["value"].to_numpy(dtype="float64", na_value=np.nan)
    has_row[codes, pos] = True
    keys = [tuple(map(str, k)) for k in uniques]
    volume = np.array([k[0] in VOLUME_METRICS for k in keys])
    # Observed hour, no row, a count or sum: the slice had no traffic -> 0.
    fill = volume[:, None] & observed[None, :] & ~has_row
    values[fill] = 0.0
    return keys, values  # type: ignore[return-value]


def _chosen_slices(df: pd.DataFrame, config: BaselineConfig) -> np.ndarray:
    """Mask of rows in a configured dimension and a chosen slice of it."""
    mask = np.zeros(len(df), dtype=bool)
    dims = df["dimension"].to_numpy()
    volume = df[df["metric"] == mt.REQUESTS]
    if volume.empty:  # no request counts: rank by the samples behind any metric
        volume = df
    weight = volume.groupby(["dimension", "slice"], sort=False)[
        "value" if volume is not df else "samples"].sum()
    for dim in config.dimensions:
        in_dim = dims == dim
        if dim == mt.OVERALL:
            mask |= in_dim
            continue
        limit = config.top_teams if dim == "team" else config.max_slices
        if limit == 0:
            continue
        ranked = weight[weight.index.get_level_values(0) == dim]
        # Most traffic first, ties by name, so a rerun picks the same slices.
        order = sorted(ranked.items(), key=lambda kv: (-float(kv[1]), str(kv[0][1])))
        chosen = {slc for (_, slc), _ in order[:limit]}
        mask |= in_dim & df["slice"].isin(chosen).to_numpy()
    return mask


# -- fitting ---------------------------------------------------------------------------------


def _fit_chunk(rows: list[tuple[np.ndarray, str | None]], last_ts: datetime,
               config: BaselineConfig) -> list[BaselineFit]:
    """Worker entry point (top level so a process pool can pickle it)."""
    return [fit_series(values, last_ts, config, metric=metric) for values, metric in rows]


def fit_many(series: Sequence[np.ndarray], metrics: Sequence[str | None], last_ts: datetime,
             config: BaselineConfig) -> list[BaselineFit]:
    """:func:`fit_series` over many series, across ``config.workers`` processes (joblib's
    loky pool, reused between calls) when there are at least ``parallel_min_series``."""
    rows = list(zip(series, metrics, strict=True))
    workers = min(config.workers, len(rows))
    if workers <= 1 or len(rows) < config.parallel_min_series:
        return _fit_chunk(rows, last_ts, config)
    from joblib import Parallel, delayed

    # A few chunks per worker: even load without a round trip per series.
    n_chunks = min(len(rows), workers * 4)
    bounds = np.linspace(0, len(rows), n_chunks + 1).astype(int)
    chunks = [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    results = Parallel(n_jobs=workers, backend="loky")(
        delayed(_fit_chunk)(chunk, last_ts, config) for chunk in chunks)
    return [fit for chunk in results for fit in chunk]


def fit_all(table: pa.Table | None, day: date | datetime, config: BaselineConfig | None = None,
            *, fitted_at: datetime | None = None) -> pa.Table:
    """Bands for the 24 hours of ``day`` for every configured series, fitted on the metric
    rows of ``table`` in ``[day - history_days, day)`` (other rows are ignored).

    Returns a table in :data:`BANDS_SCHEMA`: 24 rows per series with at least one known
    value in the window."""
    config = config if config is not None else BaselineConfig()
    start = day_start(day)
    keys, matrix = history_series(table, start, config)
    known = np.isfinite(matrix).any(axis=1) if len(keys) else np.zeros(0, dtype=bool)
    keys = [k for k, ok in zip(keys, known, strict=True) if ok]
    matrix = matrix[known]
    fits = fit_many(list(matrix), [k[0] for k in keys], start - timedelta(hours=1), config)
    return bands_table(keys, fits, fitted_at or datetime.now(UTC))


def bands_table(keys: Sequence[tuple[str, str, str]], fits: Sequence[BaselineFit],
                fitted_at: datetime) -> pa.Table:
    """The band rows of fitted series (24 per series) in :data:`BANDS_SCHEMA`."""
    cols: dict[str, list] = {name: [] for name in BANDS_SCHEMA.names}
    for (metric, dim, slc), fit in zip(keys, fits, strict=True):
        n = len(fit.hours)
        params = json.dumps(fit.params, sort_keys=True, allow_nan=False, default=_jsonable)
        for name, value in (("metric", metric), ("dimension", dim), ("slice", slc),
                            ("method", fit.method), ("reason", fit.reason),
                            ("fitted_at", as_utc(fitted_at)), ("params", params)):
            cols[name].extend([value] * n)
        cols["hour"].extend(fit.hours)
        for name in ("expected", "lower", "upper"):
            cols[name].extend(_nullable(getattr(fit, name)))
    return pa.table(cols, schema=BANDS_SCHEMA)


def _nullable(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- the lake --------------------------------------------------------------------------------


def write_bands(lake: Lake, day: date | datetime, table: pa.Table) -> PartitionInfo:
    """Store the bands for ``day`` (replaces that day's partition). Every row's hour must
    fall inside the day."""
    start = day_start(day)
    missing = [c for c in BANDS_SCHEMA.names if c not in table.column_names]
    if missing:
        raise InvalidInput(f"bands for {start:%Y-%m-%d}: missing column(s) {', '.join(missing)}; "
                         "build them with promptops.detection.baselines.fit_all")
    table = table.select(BANDS_SCHEMA.names).cast(BANDS_SCHEMA)
    if table.num_rows:
        first, last = pc.min_max(table.column("hour")).values()
        lo, hi = as_utc(first.as_py()), as_utc(last.as_py())
        if lo < start or hi >= start + timedelta(days=1):
            raise InvalidInput(f"bands for {start:%Y-%m-%d} hold hours {lo:%Y-%m-%d %H:%M} to "
                             f"{hi:%Y-%m-%d %H:%M}; a day's partition takes that day's hours "
                             "only (fit with the same day)")
    return lake.write_partition(BANDS, start, table)


def read_bands(lake: Lake, hour: datetime, *, whole_day: bool = False) -> pa.Table | None:
    """The bands for ``hour`` (or for its whole day); None when that day was not fitted."""
    hour = hour_floor(hour)
    table = lake.read_partition(BANDS, day_start(hour))
    if table is None or whole_day:
        return table
    hours = table.column("hour")
    return table.filter(pc.equal(hours, pa.scalar(hour, hours.type)))


def read_history(lake: Lake, day: date | datetime, config: BaselineConfig) -> pa.Table | None:
    """The metric rows a fit for ``day`` needs: the configured metrics (and request counts,
    which pick the slices) in the configured dimensions, over the fit window."""
    start = day_start(day)
    wanted = pa.array(sorted(set(config.metrics) | {mt.REQUESTS}), pa.string())
    dims = pa.array(config.dimensions, pa.string())
    tables = []
    for i in range(config.history_days * 24, 0, -1):
        part = lake.read_partition(mt.METRICS, start - timedelta(hours=i), columns=_HISTORY_COLUMNS)
        if part is None:
            continue
        keep = pc.and_(pc.is_in(part.column("metric"), value_set=wanted),
                       pc.is_in(part.column("dimension"), value_set=dims))
        tables.append(part.filter(keep))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def refit_baselines(lake: Lake, day: date | datetime, config: BaselineConfig | None = None
                    ) -> dict:
    """The daily refit: read the window's metrics, fit every series, store the day's bands.
    Returns a small summary for XCom (counts by method, partition URI, seconds)."""
    config = config if config is not None else BaselineConfig()
    start = day_start(day)
    began = time.perf_counter()
    history = read_history(lake, start, config)
    bands = fit_all(history, start, config)
    info = write_bands(lake, start, bands)
    methods = pc.value_counts(bands.column("method")).to_pylist() if bands.num_rows else []
    by_method = {m["values"]: m["counts"] // 24 for m in methods}
    hours = 0 if history is None else len(pc.unique(history.column("hour")))
    summary = {"day": f"{start:%Y-%m-%d}", "series": bands.num_rows // 24,
               "by_method": by_method, "history_hours": hours,
               "history_hours_expected": config.history_days * 24, "uri": info.uri,
               "seconds": round(time.perf_counter() - began, 2)}
    log.info("baselines for %s: %s", summary["day"], summary)
    return summary
