"""The tidy metric table: one row per (hour, metric, dimension, slice).

Every hourly metric promptops computes lands in this one long layout, so a new metric or a
new dimension needs no schema change. Producers (hourly metrics, the health sensor, the
judge) and consumers (rules, baselines, reports) agree on nothing but this module.

Conventions:

- ``dimension`` names what the slice is cut by: ``overall`` (slice ``*``), ``model``,
  ``provider``, ``app``, ``team``, ``user``, ``template`` (slice ``"<template>@<version>"``),
  ``region``, ``gpu_node``, and for per-class quality ``intent`` and ``intent_pair`` (slice
  ``"<expected>|<predicted>"``, one confusion-matrix cell).
- A record with no value for a dimension falls in the slice ``(none)``; users outside the
  top N fall in ``other``.
- ``value`` is null when the metric is unknown (the cost of an unpriced model), never 0.
- ``samples`` is how many observations the value rests on (requests for rates and latency,
  labelled records for intent accuracy, scored records for relevance); rules use it for
  their minimum sample size.
- ``lower`` / ``upper`` are the two-sided 95% sampling interval of ``value`` for this hour or
  window (:data:`promptops.stats.INTERVAL_CONFIDENCE`), null where the value has none (an
  exact observation such as ``api_up``, an F1 score, an empty hour). Rates: Wilson; means:
  Student-t; percentiles: order statistics; counts and peaks: exact Poisson; token and cost
  sums: compound Poisson. Rules judge the bound nearest their level (re-derived at the
  rule's ``confidence``); baselines widen their bands by ``(upper - lower) / (2 * 1.96)``
  as this hour's standard error.
"""

from __future__ import annotations

import pyarrow as pa

# The lake dataset of hourly metric partitions, still reachable as mt.METRICS.
from promptops.contracts.datasets import METRICS  # noqa: F401

OVERALL = "overall"
ALL = "*"
NONE_SLICE = "(none)"
OTHER_SLICE = "other"

METRICS_SCHEMA = pa.schema([
    pa.field("hour", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("dimension", pa.string(), nullable=False),
    pa.field("slice", pa.string(), nullable=False),
    pa.field("value", pa.float64()),
    pa.field("samples", pa.int64(), nullable=False),
    pa.field("lower", pa.float64()),
    pa.field("upper", pa.float64()),
])

# Metric names (units in the name where there is one). Rates are fractions in [0, 1].
REQUESTS = "requests"
ERRORS = "errors"
SUCCESS_RATE = "success_rate"
ERROR_RATE = "error_rate"
LATENCY_MEAN_MS = "latency_mean_ms"
LATENCY_P50_MS = "latency_p50_ms"
LATENCY_P95_MS = "latency_p95_ms"
LATENCY_P99_MS = "latency_p99_ms"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
CACHED_TOKENS = "cached_tokens"
TOTAL_TOKENS = "total_tokens"
COST_USD = "cost_usd"
UNPRICED_REQUESTS = "unpriced_requests"
UNPRICED_TOKENS = "unpriced_tokens"
INTENT_ACCURACY = "intent_accuracy"
INTENT_PRECISION = "intent_precision"
INTENT_RECALL = "intent_recall"
INTENT_F1 = "intent_f1"
INTENT_CONFUSION = "intent_confusion"
RELEVANCE_MEAN = "relevance_mean"
RELEVANCE_COVERAGE = "relevance_coverage"
PEAK_CALLS_PER_MINUTE = "peak_calls_per_minute"
