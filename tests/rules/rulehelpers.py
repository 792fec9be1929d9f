"""Hand-built metric tables and small configs for the rule tests (a module of its own:
``from conftest import ...`` is ambiguous with several conftest.py files in the suite)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from promptops.contracts.metric_table import METRICS_SCHEMA
from promptops.detection.thresholds import ThresholdsConfig

HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)


def metrics(rows: list[tuple], hour: datetime = HOUR) -> pa.Table:
    """Rows ``(metric, dimension, slice, value, samples[, lower, upper])`` -> METRICS_SCHEMA."""
    full = [(*r, None, None)[:7] for r in rows]
    return pa.table({
        "hour": pa.array([hour] * len(full), METRICS_SCHEMA.field("hour").type),
        "metric": [r[0] for r in full], "dimension": [r[1] for r in full],
        "slice": [r[2] for r in full], "value": [r[3] for r in full],
        "samples": [r[4] for r in full], "lower": [r[5] for r in full],
        "upper": [r[6] for r in full],
    }, schema=METRICS_SCHEMA)


def config(**rules: dict[str, Any]) -> ThresholdsConfig:
    return ThresholdsConfig.model_validate({"version": 1, "rules": rules})
