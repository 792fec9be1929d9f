"""The 5-minute health sensor's API and abuse checks, and where their rows are stored.

Every function takes data and returns metric rows (:data:`promptops.contracts.metric_table.METRICS_SCHEMA`)
whose ``hour`` column holds the 5-minute evaluation time, so the same rules and alert engine
as the hourly DAG evaluate them:

- :func:`api_health_rows`: ``/health`` as ``api_up`` (1/0) and ``api_health_latency_ms``.
- :func:`recent_call_rows`: over the last ``minutes`` of call records, overall ``requests``,
  ``success_rate``, ``error_rate``, ``latency_mean_ms`` and ``latency_p95_ms`` (numpy's
  linear interpolation, as hourly); per user the abuse signals ``peak_calls_per_minute``
  and ``tokens_per_minute_peak`` (prompt + completion tokens in the user's busiest minute).
  Every row but an empty window's carries its 95% sampling interval, as the hourly metrics
  do: Wilson for rates, Student-t for the mean, order statistics for p95, exact Poisson for
  counts and peaks (a token peak: its minute's call-count interval times tokens per call).
- :func:`fetch_recent_calls`: the window's records from the platform, validated, de-duplicated.
- :func:`write_health_metrics`: the rows into the lake dataset ``health_metrics``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from promptops.contracts import metric_table as mt
from promptops.contracts.datasets import HEALTH_METRICS
from promptops.contracts.records import empty_calls_table, validate_page
from promptops.errors import InvalidInput, PromptOpsError
from promptops.lake.store import Lake, PartitionInfo
from promptops.metrics.gpu import metric_rows
from promptops.metrics.hourly import ACCURACY_ALPHA, SUCCESS_STATUS
from promptops.stats import mean_interval, poisson_interval, quantile_interval, wilson_interval
from promptops.timeutil import as_utc

log = logging.getLogger(__name__)

API_UP = "api_up"
API_HEALTH_LATENCY_MS = "api_health_latency_ms"
TOKENS_PER_MINUTE_PEAK = "tokens_per_minute_peak"
USER_DIMENSION = "user"

_Row = tuple[str, str, str, float | None, int]
_Bounds = tuple[float | None, float | None]


def api_health_rows(client: Any, now: datetime) -> pa.Table:
    """``GET /health`` once: ``api_up`` 1 when the platform says ok, else 0, and the
    answer's latency. A platform that does not answer at all is down with no latency."""
    try:
        status = client.health()
    except PromptOpsError as exc:
        log.warning("GET /health got no answer: %s", exc)
        return metric_rows([(API_UP, mt.OVERALL, mt.ALL, 0.0, 1),
                            (API_HEALTH_LATENCY_MS, mt.OVERALL, mt.ALL, None, 0)], now)
    if not status.ok:
        log.warning("GET /health: %s (HTTP %s)", status.reason or status.status,
                    status.http_status)
    return metric_rows([(API_UP, mt.OVERALL, mt.ALL, 1.0 if status.ok else 0.0, 1),
                        (API_HEALTH_LATENCY_MS, mt.OVERALL, mt.ALL, status.latency_ms, 1)], now)


def _window(calls: pa.Table, start: datetime, end: datetime) -> pa.Table:
    ts = calls.column("ts")
    keep = pc.and_(pc.greater_equal(ts, pa.scalar(start, ts.type)),
                   pc.less(ts, pa.scalar(end, ts.type)))
    return calls.filter(keep)


def recent_call_rows(calls_table: pa.Table, window_end: datetime, minutes: int = 5) -> pa.Table:
    """Overall API rows and per-user abuse rows for the records with ``ts`` in
    ``[window_end - minutes, window_end)``; the rows carry ``window_end`` as their time.

    An empty window gives ``requests`` 0 only (rates and latency would rest on nothing).
    """
    if minutes < 1:
        raise InvalidInput(f"minutes must be at least 1, got {minutes}")
    missing = [c for c in ("ts", "user_id", "status", "latency_ms", "prompt_tokens",
                           "completion_tokens") if c not in calls_table.column_names]
    if missing:
        raise InvalidInput(f"the calls table lacks the column(s) {', '.join(missing)}; pass a "
                         "table in promptops.contracts.records.CALLS_SCHEMA")
    window_end = as_utc(window_end)
    calls = _window(calls_table, window_end - timedelta(minutes=minutes), window_end)
    n = calls.num_rows
    rows: list[_Row] = [(mt.REQUESTS, mt.OVERALL, mt.ALL, float(n), n)]
    bounds: list[_Bounds] = [(None, None)]
    if n == 0:
        return metric_rows(rows, window_end, bounds)
    bounds = [poisson_interval(n, ACCURACY_ALPHA)]

    status = calls.column("status").cast(pa.string())
    ok = int(pc.sum(pc.equal(status, SUCCESS_STATUS)).as_py() or 0)
    latency = np.asarray(pc.fill_null(calls.column("latency_ms"), np.nan).to_numpy(),
                         dtype=np.float64)
    latency = latency[~np.isnan(latency)]
    rows += [(mt.ERRORS, mt.OVERALL, mt.ALL, float(n - ok), n),
             (mt.SUCCESS_RATE, mt.OVERALL, mt.ALL, ok / n, n),
             (mt.ERROR_RATE, mt.OVERALL, mt.ALL, (n - ok) / n, n)]
    lo, hi = wilson_interval(ok, n, ACCURACY_ALPHA)
    bounds += [poisson_interval(n - ok, ACCURACY_ALPHA), (lo, hi), (1 - hi, 1 - lo)]
    if len(latency):
        mean = float(latency.mean())
        sd = float(latency.std(ddof=1)) if len(latency) > 1 else float("nan")
        rows += [(mt.LATENCY_MEAN_MS, mt.OVERALL, mt.ALL, mean, len(latency)),
                 (mt.LATENCY_P95_MS, mt.OVERALL, mt.ALL,
                  float(np.percentile(latency, 95)), len(latency))]
        bounds += [_known(mean_interval(mean, sd, len(latency), ACCURACY_ALPHA)),
                   quantile_interval(latency, 0.95, ACCURACY_ALPHA)]
    abuse, abuse_bounds = _abuse_rows(calls)
    return metric_rows(rows + abuse, window_end, bounds + abuse_bounds)


def _known(bounds: tuple[float, float]) -> _Bounds:
    """NaN bounds (no interval) as nulls."""
    return (None, None) if any(np.isnan(b) for b in bounds) else bounds


def _abuse_rows(calls: pa.Table) -> tuple[list[_Row], list[_Bounds]]:
    """Per user: the most calls and the most tokens in one calendar minute of the window,
    with ``samples`` = the user's calls in the window, and their 95% intervals: the minute's
    calls are a Poisson count (exact interval), its tokens that interval times the tokens
    per call of that minute."""
    ts_us = calls.column("ts").cast(pa.int64()).to_numpy()
    tokens = (pc.fill_null(calls.column("prompt_tokens"), 0).cast(pa.int64()).to_numpy()
              + pc.fill_null(calls.column("completion_tokens"), 0).cast(pa.int64()).to_numpy())
    users = pc.fill_null(calls.column("user_id").cast(pa.string()), mt.NONE_SLICE)
    names, codes = np.unique(np.asarray(users.to_pylist(), dtype=object), return_inverse=True)
    minute = ts_us // 60_000_000
    minute = minute - minute.min()
    span = int(minute.max()) + 1
    key = codes.astype(np.int64) * span + minute
    calls_per = np.bincount(key, minlength=len(names) * span).reshape(len(names), span)
    tokens_per = np.bincount(key, weights=tokens,
                             minlength=len(names) * span).reshape(len(names), span)
    per_user = calls_per.sum(axis=1)
    rows: list[_Row] = []
    bounds: list[_Bounds] = []
    for metric, table in ((mt.PEAK_CALLS_PER_MINUTE, calls_per),
                          (TOKENS_PER_MINUTE_PEAK, tokens_per)):
        at = table.argmax(axis=1)
        peaks = table[np.arange(len(names)), at].astype(np.float64)
        k = calls_per[np.arange(len(names)), at].astype(np.float64)
        c_lo, c_hi = poisson_interval(k, ACCURACY_ALPHA)
        scale = np.divide(peaks, k, out=np.zeros_like(peaks), where=k > 0)
        rows += [(metric, USER_DIMENSION, str(name), float(peak), int(n))
                 for name, peak, n in zip(names, peaks, per_user, strict=True)]
        bounds += list(zip((c_lo * scale).tolist(), (c_hi * scale).tolist(), strict=True))
    return rows, bounds


def fetch_recent_calls(client: Any, window_end: datetime, minutes: int = 5) -> pa.Table:
    """The platform's records (or a record source's, :mod:`promptops.ingest.sources`) with
    ``ts`` in ``[window_end - minutes, window_end)``, validated against the record contract
    (rejects are logged and dropped) and with one record per ``call_id``."""
    end = as_utc(window_end)
    start = end - timedelta(minutes=minutes)
    tables, rejected = [], 0
    if hasattr(client, "iter_call_record_pages"):
        checked_pages = (validate_page(page, start, end)
                         for page in client.iter_call_record_pages(start, end))
    else:  # a source of promptops.ingest.sources (spans, spend logs): its own pages
        from promptops.ingest.pull import validate_call_page

        checked_pages = (validate_call_page(page, start, end)
                         for page in client.iter_call_record_page_bodies(start, end))
    for checked in checked_pages:
        rejected += len(checked.rejects)
        tables.append(checked.good)
    if rejected:
        log.warning("%d call record(s) of %s..%s failed validation and were dropped",
                    rejected, start.isoformat(), end.isoformat())
    if not tables:
        return empty_calls_table()
    calls = pa.concat_tables(tables, promote_options="permissive").unify_dictionaries()
    # The platform may send one call twice (its own retried writes): keep the first.
    ids = calls.column("call_id").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    if len(first) < calls.num_rows:
        calls = calls.take(pa.array(np.sort(first)))
    return calls


def write_health_metrics(lake: Lake, at: datetime, table: pa.Table) -> PartitionInfo:
    """Store one evaluation's rows in ``health_metrics``, as its own record file in the
    folder of ``at``'s hour (``evaluation-<time>.parquet``).

    The rows' natural key is the evaluation time (the ``hour`` column): a rerun replaces
    its own file, and overlapping runs writing other evaluations of the hour (a backfill
    beside the schedule) never read and rewrite each other's rows. Every row of ``table``
    must carry ``at`` as its time.
    """
    at = as_utc(at)
    missing = [c for c in mt.METRICS_SCHEMA.names if c not in table.column_names]
    if missing:
        raise InvalidInput(f"the health rows lack the column(s) {', '.join(missing)}; build "
                         "them in promptops.contracts.metric_table.METRICS_SCHEMA")
    new = table.select(mt.METRICS_SCHEMA.names).cast(mt.METRICS_SCHEMA)
    at_scalar = pa.scalar(at, mt.METRICS_SCHEMA.field("hour").type)
    if new.num_rows and not pc.all(pc.equal(new.column("hour"), at_scalar)).as_py():
        raise InvalidInput(f"every health row must have hour = the evaluation time {at.isoformat()}"
                         "; found rows of other times (write each evaluation on its own)")
    return lake.write_record(HEALTH_METRICS, at, f"evaluation-{at:%Y%m%dT%H%M%S.%fZ}", new)


def read_health_metrics(lake: Lake, start: datetime, end: datetime) -> pa.Table | None:
    """Every evaluation's rows in the hours of ``[start, end)``, oldest first (files written
    before evaluations had their own, ``part-00000.parquet``, are read too)."""
    table = lake.read_records(HEALTH_METRICS, start, end)
    if table is None:
        return None
    return table.select(mt.METRICS_SCHEMA.names).cast(mt.METRICS_SCHEMA).sort_by(
        [("hour", "ascending")])
