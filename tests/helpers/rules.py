"""Hand-built metric tables and small configs for the rule tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from promptops.detection.thresholds import ThresholdsConfig
from tests.helpers.metric_tables import metric_rows

HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)


def metrics(rows: list[tuple], hour: datetime = HOUR) -> pa.Table:
    """Rows ``(metric, dimension, slice, value, samples[, lower, upper])`` of ``HOUR``."""
    return metric_rows(rows, hour)


def config(**rules: dict[str, Any]) -> ThresholdsConfig:
    return ThresholdsConfig.model_validate({"version": 1, "rules": rules})
