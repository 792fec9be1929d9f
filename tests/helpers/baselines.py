"""Synthetic hourly series and metric tables for the baseline tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from promptops.contracts.metric_table import METRICS_SCHEMA

#: The day the bands are for; history runs up to its midnight.
DAY = datetime(2026, 11, 20, tzinfo=UTC)


def seasonal(days: int, *, level: float = 1000.0, amplitude: float = 0.6, noise: float = 0.04,
             seed: int = 1, start_hour: int = 0) -> np.ndarray:
    """Hourly values with a daily cycle (peak mid-afternoon) and multiplicative noise."""
    rng = np.random.default_rng(seed)
    hours = start_hour + np.arange(days * 24)
    shape = 1 + amplitude * np.sin(2 * np.pi * (hours % 24 - 8) / 24)
    return level * shape * (1 + noise * rng.standard_normal(len(hours)))


def hours_before(day: datetime, n: int) -> list[datetime]:
    return [day - timedelta(hours=n - i) for i in range(n)]


def metric_table(series: dict[tuple[str, str, str], np.ndarray], end: datetime = DAY, *,
                 samples: int = 1000, skip_hours: set[int] = frozenset()) -> pa.Table:
    """One row per (series, hour) for the hours before ``end`` (NaN value = null value).
    ``skip_hours``: positions (0 = first hour) with no rows at all, i.e. no partition."""
    hour_col, metric, dim, slc, value = [], [], [], [], []
    for (m, d, s), values in series.items():
        for i, (hour, v) in enumerate(zip(hours_before(end, len(values)), values, strict=True)):
            if i in skip_hours:
                continue
            hour_col.append(hour)
            metric.append(m)
            dim.append(d)
            slc.append(s)
            value.append(None if np.isnan(v) else float(v))
    n = len(hour_col)
    return pa.table({"hour": hour_col, "metric": metric, "dimension": dim, "slice": slc,
                     "value": value, "samples": [samples] * n, "lower": [None] * n,
                     "upper": [None] * n}, schema=METRICS_SCHEMA)

