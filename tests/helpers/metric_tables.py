"""Hand-built metric tables: rows of one hour in the lake's METRICS_SCHEMA (rules, baselines,
anomaly model)."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from promptops.contracts.metric_table import METRICS_SCHEMA


def metric_rows(rows: list[tuple], hour: datetime) -> pa.Table:
    """Rows ``(metric, dimension, slice, value, samples[, lower, upper])`` -> METRICS_SCHEMA."""
    full = [(*r, None, None)[:7] for r in rows]
    return pa.table({
        "hour": pa.array([hour] * len(full), METRICS_SCHEMA.field("hour").type),
        "metric": [r[0] for r in full], "dimension": [r[1] for r in full],
        "slice": [r[2] for r in full], "value": [r[3] for r in full],
        "samples": [r[4] for r in full], "lower": [r[5] for r in full],
        "upper": [r[6] for r in full],
    }, schema=METRICS_SCHEMA)
