"""Hourly metrics: one hour of call records in, the tidy metric table out.

For the hour overall and for every slice of model, provider, app, team, user, prompt
template (``"<template>@<version>"``), region and GPU node, the table holds requests,
errors, success and error rate, latency mean, 10%-trimmed mean (``latency_trimmed_mean_ms``,
robust to a few very slow calls) and exact p50/p95/p99, token counts, cost,
intent accuracy with its Wilson interval, relevance mean and coverage; per user and overall
the peak calls in one minute; and on the labelled records of the hour per-intent precision,
recall, F1 and the confusion matrix (scikit-learn). Layout and naming:
:mod:`promptops.contracts.metric_table`.

Choices worth knowing (also what the tests pin down):

- Success is ``status == "success"``; ``errors`` are all other requests.
- Users are cut to the union of the top ``top_n_users`` by cost and the top ``top_n_users``
  by calls (ties broken by name); everybody else is the slice ``other``.
- A template slice is ``"<template>@<version>"``; a record without a template is ``(none)``
  whatever its version, one without a version ``"<template>@(none)"``.
- Rows exist only for slices that have requests. Rates, means and percentiles are left out
  where they would rest on nothing: an empty hour has only the overall counts (requests,
  errors, tokens, cost and unpriced all 0, peak calls 0); a slice with no labelled records
  has no ``intent_accuracy`` row; one with no scored records no ``relevance_mean`` row.
- Cost is the priced part: a slice with priced records gets their cost (``samples`` = priced
  requests); one whose records are all unpriced gets a null cost. ``unpriced_requests`` and
  ``unpriced_tokens`` (prompt + completion) are always given overall, and for every other
  slice that has unpriced records.
- Every estimate carries its two-sided 95% sampling interval in ``lower``/``upper``
  (:mod:`promptops.stats`), so rules and baselines judge it with its sampling error: Wilson
  for rates (success, error, intent accuracy, relevance coverage, per-intent precision and
  recall), Student-t for means (latency, relevance; Tukey-McLaughlin for the trimmed mean),
  distribution-free order statistics for
  p50/p95/p99, exact Poisson for counts (requests, errors, unpriced requests, peak calls per
  minute) and compound Poisson (sum of squared sizes) for token and cost sums. F1,
  confusion cells and an empty hour's zeros have none.
- Per-intent precision with no prediction of that intent is null with ``samples`` 0 (recall
  and F1 rest on the intent's labelled records). Confusion cells (dimension ``intent_pair``,
  slice ``"<expected>|<predicted>"``) are counts, ``samples`` = the expected intent's
  labelled records; a label without a prediction is predicted ``(none)``.

Work is columnar on numpy: dimensions are dictionary-encoded in the partition, so their
dictionary indices are the group codes, ``np.bincount`` does every sum and count, and exact
percentiles come from one global sort of latency plus, per dimension, a stable (radix) sort
of the group codes taken in latency order, which leaves each group's latencies contiguous
and sorted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import DTypeLike

from promptops.contracts import metric_table as mt
from promptops.contracts.datasets import CALLS
from promptops.errors import InvalidInput, MissingData
from promptops.lake.store import Lake, PartitionInfo
from promptops.metrics.pricing import PriceTable
from promptops.stats import (
    INTERVAL_ALPHA,
    mean_interval,
    poisson_interval,
    quantile_ranks,
    sum_interval,
    wilson_interval,
)
from promptops.timeutil import hour_floor

log = logging.getLogger(__name__)

#: The call-record columns the metrics read (read only these from the lake).
INPUT_COLUMNS = ("ts", "user_id", "team", "app", "prompt_template", "prompt_version", "model",
                 "provider", "region", "status", "latency_ms", "prompt_tokens",
                 "completion_tokens", "cached_tokens", "predicted_intent", "expected_intent",
                 "relevance_score", "gpu_node", "cache_creation_tokens", "source_cost_usd")
_REQUIRED = ("ts", "user_id", "app", "model", "status", "latency_ms", "prompt_tokens",
             "completion_tokens")

#: Dimensions in output order, with the record column each one is cut by.
DIMENSION_COLUMNS = {"model": "model", "provider": "provider", "app": "app", "team": "team",
                     "user": "user_id", "template": None, "region": "region",
                     "gpu_node": "gpu_node"}
#: A robust latency location: the mean of the middle 80% of calls, with its interval.
LATENCY_TRIMMED_MEAN_MS = "latency_trimmed_mean_ms"
#: Share of calls cut from each end for the trimmed mean (scipy's ``proportiontocut``).
TRIM = 0.1
QUANTILES = ((mt.LATENCY_P50_MS, 0.50), (mt.LATENCY_P95_MS, 0.95), (mt.LATENCY_P99_MS, 0.99))
SUCCESS_STATUS = "success"
#: A source's own cost figure (LiteLLM's spend), summed per slice, and how far promptops'
#: price of the same calls is from it: ``|ours - theirs| / theirs`` in percent (100 when
#: theirs is 0 and ours is not), on the calls both priced (``samples``). Overall, per model
#: and per provider, on successful calls; only where the hour has source costs. Exact sums
#: of the same calls, so no sampling interval.
SOURCE_COST_USD = "source_cost_usd"
COST_SOURCE_GAP_PCT = "cost_source_gap_pct"
#: Level of every row's sampling interval (``lower``/``upper``): two-sided 95%.
ACCURACY_ALPHA = INTERVAL_ALPHA


class MissingCallsPartition(MissingData):
    """The hour has no ``calls`` partition: ingest has not run for it (or failed)."""


@dataclass(frozen=True)
class _Dim:
    """One dimension's cut: a group code per record and the sorted slice labels."""

    name: str
    #: Group code per record: ``intp`` for ``np.bincount`` (which would convert anything
    #: else on every call) and the smallest unsigned type for radix sorting.
    codes: np.ndarray
    small_codes: np.ndarray
    labels: np.ndarray  # object array of str, sorted


@dataclass
class _Rows:
    """Output columns collected as arrays, one block per (metric, dimension)."""

    metric: list[np.ndarray]
    dimension: list[np.ndarray]
    slice: list[np.ndarray]
    value: list[np.ndarray]
    samples: list[np.ndarray]
    lower: list[np.ndarray]
    upper: list[np.ndarray]

    @classmethod
    def empty(cls) -> _Rows:
        return cls([], [], [], [], [], [], [])

    def add(self, metric: str, dimension: str, labels: np.ndarray, value: np.ndarray,
            samples: np.ndarray, lower: np.ndarray | None = None,
            upper: np.ndarray | None = None, keep: np.ndarray | None = None) -> None:
        value = np.asarray(value, dtype=np.float64)
        samples = np.asarray(samples)
        nan = np.full(len(labels), np.nan)
        lower = nan if lower is None else lower
        upper = nan if upper is None else upper
        if keep is not None:
            labels, value, samples, lower, upper = (a[keep] for a in
                                                    (labels, value, samples, lower, upper))
        n = len(labels)
        if n == 0:
            return
        self.metric.append(np.full(n, metric, dtype=object))
        self.dimension.append(np.full(n, dimension, dtype=object))
        self.slice.append(np.asarray(labels, dtype=object))
        self.value.append(value)
        self.samples.append(np.rint(samples).astype(np.int64))
        self.lower.append(np.asarray(lower, dtype=np.float64))
        self.upper.append(np.asarray(upper, dtype=np.float64))

    def table(self, hour: datetime) -> pa.Table:
        def cat(parts: list[np.ndarray], dtype: DTypeLike) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

        n = sum(len(p) for p in self.metric)
        floats = {k: cat(getattr(self, k), np.float64) for k in ("value", "lower", "upper")}
        return pa.table({
            "hour": pa.array(np.full(n, np.datetime64(hour.replace(tzinfo=None), "us")),
                             type=mt.METRICS_SCHEMA.field("hour").type),
            "metric": pa.array(cat(self.metric, object), type=pa.string()),
            "dimension": pa.array(cat(self.dimension, object), type=pa.string()),
            "slice": pa.array(cat(self.slice, object), type=pa.string()),
            # NaN is how the arrays spell "unknown"; in the table it is null.
            **{k: pa.array(v, type=pa.float64(), mask=np.isnan(v)) for k, v in floats.items()},
            "samples": pa.array(cat(self.samples, np.int64), type=pa.int64()),
        }).select(mt.METRICS_SCHEMA.names).cast(mt.METRICS_SCHEMA)


# -- columns to numpy -----------------------------------------------------------------------

def _dictionary(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Dictionary codes of a string column (nulls -> ``len(names)``) and the names."""
    if col.num_chunks == 0:
        col = pa.chunked_array([pa.array([], type=col.type)])
    if not pa.types.is_dictionary(col.type):
        arr = pc.dictionary_encode(col.combine_chunks())
        names = arr.dictionary.to_pylist()
        indices = arr.indices
    else:
        # The caller unified the chunks' dictionaries, so chunk 0's is everybody's.
        names = col.chunk(0).dictionary.to_pylist()
        indices = pa.chunked_array([c.indices for c in col.chunks],
                                   type=col.type.index_type).combine_chunks()
    codes = pc.fill_null(indices, len(names)).to_numpy(zero_copy_only=False)
    return codes.astype(np.int32, copy=False), names


def _floats(col: pa.ChunkedArray, fill: float | None = None) -> np.ndarray:
    if fill is not None:
        col = pc.fill_null(col, fill)
    return np.asarray(col.cast(pa.float64()).to_numpy(), dtype=np.float64)


def _make_dim(name: str, codes: np.ndarray, labels: list[str]) -> _Dim:
    """Drop labels no record has, merge equal labels, sort them; codes follow."""
    counts = np.bincount(codes, minlength=len(labels))
    used = np.flatnonzero(counts)
    sorted_labels, inverse = np.unique(np.asarray(labels, dtype=object)[used],
                                       return_inverse=True)
    lookup = np.zeros(len(labels), dtype=np.int64)
    lookup[used] = inverse
    if not (len(used) == len(labels) and np.array_equal(inverse, np.arange(len(labels)))):
        codes = lookup[codes]
    return _dim(name, codes, sorted_labels)


def _dim(name: str, codes: np.ndarray, labels: np.ndarray) -> _Dim:
    # Small unsigned codes let numpy's stable argsort use radix sort.
    small = np.uint8 if len(labels) <= 256 else (
        np.uint16 if len(labels) <= 65536 else np.intp)
    return _Dim(name, codes.astype(np.intp, copy=False), codes.astype(small, copy=False),
                labels)


def _labels(names: list[str]) -> list[str]:
    return [*names, mt.NONE_SLICE]


# -- the dimensions -------------------------------------------------------------------------

def _top_users(codes: np.ndarray, names: list[str], cost: np.ndarray,
               top_n: int) -> tuple[np.ndarray, list[str]]:
    """Group per user code: the top users by cost and by calls keep their name, the rest
    become ``other`` (and a missing user ``(none)``)."""
    u = len(names)
    calls = np.bincount(codes, minlength=u + 1)[:u]
    spend = np.bincount(codes, weights=cost, minlength=u + 1)[:u]
    name_arr = np.asarray(names, dtype=object)
    present = np.flatnonzero(calls > 0)
    by_calls = present[np.lexsort((name_arr[present], -calls[present]))][:top_n]
    spenders = present[spend[present] > 0]
    by_cost = spenders[np.lexsort((name_arr[spenders], -spend[spenders]))][:top_n]
    top = np.union1d(by_calls, by_cost)
    group = np.full(u + 1, len(top), dtype=np.int32)  # other
    group[top] = np.arange(len(top), dtype=np.int32)
    group[u] = len(top) + 1  # (none)
    return group, [*name_arr[top].tolist(), mt.OTHER_SLICE, mt.NONE_SLICE]


def _template_dim(calls: pa.Table) -> _Dim:
    t_codes, t_names = _dictionary(calls.column("prompt_template"))
    v_codes, v_names = _dictionary(calls.column("prompt_version"))
    nv = len(v_names) + 1
    combined = t_codes.astype(np.intp) * nv + v_codes
    # Label only the (template, version) pairs that occur, not every combination.
    used = np.flatnonzero(np.bincount(combined, minlength=(len(t_names) + 1) * nv))
    versions = _labels(v_names)
    labels = [mt.NONE_SLICE if c // nv == len(t_names) else f"{t_names[c // nv]}@{versions[c % nv]}"
              for c in used.tolist()]
    lookup = np.zeros((len(t_names) + 1) * nv, dtype=np.intp)
    lookup[used] = np.arange(len(used))
    return _make_dim("template", lookup[combined], labels)


# -- per-dimension aggregates ---------------------------------------------------------------

@dataclass(frozen=True)
class _Inputs:
    """Per-record arrays every dimension aggregates. Sparse facts (failures, unpriced,
    labelled and scored records) are kept as row indices plus their values, so each
    dimension sums them over a fraction of the rows."""

    latency: np.ndarray
    latency_sq: np.ndarray
    latency_order: np.ndarray
    latency_sorted: np.ndarray
    prompt: np.ndarray
    completion: np.ndarray
    cached: np.ndarray
    cost: np.ndarray  # 0 where unpriced
    failed: np.ndarray  # row indices
    unpriced: np.ndarray  # row indices
    unpriced_tokens: np.ndarray  # prompt + completion of those rows
    labelled: np.ndarray  # row indices
    correct: np.ndarray  # 1.0 / 0.0 per labelled row
    scored: np.ndarray  # row indices
    relevance: np.ndarray  # score per scored row
    #: Per-record sizes summed per slice (tokens, cost) and their squares, for the
    #: compound-Poisson interval of each sum.
    sums: dict[str, tuple[np.ndarray, np.ndarray]]


def _by_group(dim: _Dim, x: _Inputs) -> np.ndarray:
    """Latencies grouped by slice (in label order), sorted within each slice."""
    if len(dim.labels) == 1:
        return x.latency_sorted  # one group: the global order is the group's order
    return x.latency_sorted[np.argsort(dim.small_codes[x.latency_order], kind="stable")]


def _quantiles(ordered: np.ndarray, requests: np.ndarray
               ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Exact per-group quantiles (linear interpolation, numpy's default method), each with
    its distribution-free order-statistic 95% interval (:func:`promptops.stats.quantile_ranks`)."""
    starts = np.concatenate(([0], np.cumsum(requests)[:-1]))
    out = []
    for _, q in QUANTILES:
        pos = q * (requests - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, requests - 1)
        t = pos - lo
        a, b = ordered[starts + lo], ordered[starts + hi]
        # numpy's lerp: the same formula gives the same last bit as np.percentile.
        diff = b - a
        value = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
        r_lo, r_hi = quantile_ranks(requests, q, ACCURACY_ALPHA)
        out.append((value, ordered[starts + r_lo], ordered[starts + r_hi]))
    return out


def _trimmed_means(ordered: np.ndarray, requests: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: the mean without the fastest and slowest :data:`TRIM` of calls (as
    ``scipy.stats.trim_mean``) and its 95% Tukey-McLaughlin interval (winsorised variance,
    Student-t on ``n - 2k - 1`` degrees of freedom). Latency is heavy-tailed: a few very slow
    calls move the mean far more than the typical call changed."""
    from scipy.stats import t as student_t

    n = requests.astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(n)[:-1]))
    k = np.floor(TRIM * n).astype(np.int64)
    c1 = np.concatenate(([0.0], np.cumsum(ordered)))
    c2 = np.concatenate(([0.0], np.cumsum(ordered * ordered)))
    lo_i, hi_i = starts + k, starts + n - k  # the kept calls: [lo_i, hi_i)
    kept = (n - 2 * k).astype(np.float64)
    mean = (c1[hi_i] - c1[lo_i]) / kept
    # Winsorised: the k trimmed at each end count as the nearest kept value.
    low, high = ordered[lo_i], ordered[hi_i - 1]
    w1 = c1[hi_i] - c1[lo_i] + k * (low + high)
    w2 = c2[hi_i] - c2[lo_i] + k * (low * low + high * high)
    with np.errstate(invalid="ignore", divide="ignore"):
        w_var = np.maximum(w2 - w1 * w1 / n, 0.0) / (n - 1)
        se = np.sqrt(w_var) * n / kept / np.sqrt(n)
        half = student_t.ppf(1 - ACCURACY_ALPHA / 2, np.maximum(kept - 1, 1)) * se
    half = np.where(kept >= 2, half, np.nan)
    return mean, mean - half, mean + half


def _dimension_rows(rows: _Rows, dim: _Dim, x: _Inputs) -> np.ndarray:
    """Every per-slice metric of one dimension; returns the slices' request counts."""
    g, c, name, labels = len(dim.labels), dim.codes, dim.name, dim.labels

    def total(weights: np.ndarray) -> np.ndarray:
        return np.bincount(c, weights=weights, minlength=g)

    def subset(rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(c[rows], weights=weights, minlength=g).astype(np.float64)

    req = np.bincount(c, minlength=g).astype(np.float64)
    errors = subset(x.failed)
    ok = req - errors
    # Counts: exact Poisson intervals; sums of sizes (tokens, cost): compound Poisson.
    rows.add(mt.REQUESTS, name, labels, req, req, *poisson_interval(req, ACCURACY_ALPHA))
    rows.add(mt.ERRORS, name, labels, errors, req, *poisson_interval(errors, ACCURACY_ALPHA))
    # Wilson intervals, so rules can judge "confidently below 99%" on small slices.
    lo, hi = _rate_interval(ok, req)
    rows.add(mt.SUCCESS_RATE, name, labels, ok / req, req, lo, hi)
    rows.add(mt.ERROR_RATE, name, labels, errors / req, req, 1.0 - hi, 1.0 - lo)
    mean = total(x.latency) / req
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (total(x.latency_sq) - req * mean ** 2) / (req - 1)
    rows.add(mt.LATENCY_MEAN_MS, name, labels, mean, req,
             *mean_interval(mean, np.sqrt(np.maximum(var, 0.0)), req, ACCURACY_ALPHA))
    ordered = _by_group(dim, x)
    for (metric, _), (values, lo_q, hi_q) in zip(
            QUANTILES, _quantiles(ordered, req.astype(np.int64)), strict=True):
        rows.add(metric, name, labels, values, req, lo_q, hi_q)
    trimmed, lo_t, hi_t = _trimmed_means(ordered, req)
    rows.add(LATENCY_TRIMMED_MEAN_MS, name, labels, trimmed, req, lo_t, hi_t)

    def add_sum(metric: str, samples: np.ndarray, rows_idx: np.ndarray | None = None,
                keep: np.ndarray | None = None) -> None:
        weights, squares = x.sums[metric]
        if rows_idx is None:
            s, q = total(weights), total(squares)
        else:
            s, q = subset(rows_idx, weights), subset(rows_idx, squares)
        value = np.where(samples > 0, s, np.nan) if metric == mt.COST_USD else s
        rows.add(metric, name, labels, value, samples, *sum_interval(value, q, ACCURACY_ALPHA),
                 keep=keep)

    for metric in (mt.PROMPT_TOKENS, mt.COMPLETION_TOKENS, mt.CACHED_TOKENS, mt.TOTAL_TOKENS):
        add_sum(metric, req)
    unpriced = subset(x.unpriced)
    add_sum(mt.COST_USD, req - unpriced)
    with_unpriced = unpriced > 0 if name != mt.OVERALL else None
    rows.add(mt.UNPRICED_REQUESTS, name, labels, unpriced, req,
             *poisson_interval(unpriced, ACCURACY_ALPHA), keep=with_unpriced)
    add_sum(mt.UNPRICED_TOKENS, unpriced, x.unpriced, keep=with_unpriced)

    labelled = subset(x.labelled)
    has_labels = labelled > 0
    if has_labels.any():
        correct = subset(x.labelled, x.correct)
        lower, upper = _rate_interval(correct, labelled)
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = correct / labelled
        rows.add(mt.INTENT_ACCURACY, name, labels, accuracy, labelled, lower, upper,
                 keep=has_labels)

    scored = subset(x.scored)
    with np.errstate(invalid="ignore", divide="ignore"):
        relevance = subset(x.scored, x.relevance) / scored
    # Student-t 95% interval of the mean (scores are bounded, n is tens or more per slice).
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = (subset(x.scored, x.relevance * x.relevance) - scored * relevance ** 2) / (
            scored - 1)
    rows.add(mt.RELEVANCE_MEAN, name, labels, relevance, scored,
             *mean_interval(relevance, np.sqrt(np.maximum(spread, 0.0)), scored, ACCURACY_ALPHA),
             keep=scored > 0)
    rows.add(mt.RELEVANCE_COVERAGE, name, labels, scored / req, req,
             *_rate_interval(scored, req))
    return req


def _rate_interval(successes: np.ndarray, trials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wilson 95% intervals where there are trials, NaN (no interval) elsewhere."""
    some = trials > 0
    lo, hi = np.full(len(trials), np.nan), np.full(len(trials), np.nan)
    if some.any():
        lo[some], hi[some] = wilson_interval(successes[some], trials[some], ACCURACY_ALPHA)
    return lo, hi


def _intent_rows(rows: _Rows, expected: np.ndarray, predicted: np.ndarray,
                 vocabulary: list[str]) -> None:
    """Per-intent precision, recall, F1 and the confusion matrix on the labelled records."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    none = len(vocabulary)  # code of a missing prediction
    y_true, y_pred = expected, np.where(predicted < 0, none, predicted)
    names = np.asarray([*vocabulary, mt.NONE_SLICE], dtype=object)
    classes = np.union1d(y_true, y_pred[y_pred != none])
    classes = classes[np.argsort(names[classes])]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=np.nan)
    predicted_n = np.bincount(y_pred, minlength=none + 1)[classes]
    labels = names[classes]
    predicted_f, support_f = predicted_n.astype(np.float64), support.astype(np.float64)
    rows.add(mt.INTENT_PRECISION, "intent", labels, precision, predicted_n,
             *_rate_interval(np.nan_to_num(precision) * predicted_f, predicted_f))
    rows.add(mt.INTENT_RECALL, "intent", labels, recall, support,
             *_rate_interval(np.nan_to_num(recall) * support_f, support_f))
    rows.add(mt.INTENT_F1, "intent", labels, f1, support)

    columns = classes if not (y_pred == none).any() else np.append(classes, none)
    cells = confusion_matrix(y_true, y_pred, labels=columns)
    true_rows = np.flatnonzero(np.isin(classes, y_true))
    exp_names = np.repeat(names[classes[true_rows]], len(columns))
    pred_names = np.tile(names[columns], len(true_rows))
    rows.add(mt.INTENT_CONFUSION, "intent_pair", exp_names + "|" + pred_names,
             cells[true_rows].ravel(), np.repeat(cells[true_rows].sum(axis=1), len(columns)))


def _peak_per_minute(user: np.ndarray, n_users: int, minute: np.ndarray) -> np.ndarray:
    """Each user's most calls within one clock minute (length ``n_users``)."""
    if len(user) == 0:
        return np.zeros(n_users, dtype=np.int64)
    minute = minute - minute.min()
    span = int(minute.max()) + 1
    key = user.astype(np.int64) * span + minute
    if n_users * span <= 8_000_000:
        return np.bincount(key, minlength=n_users * span).reshape(n_users, span).max(axis=1)
    # Many users: count only the (user, minute) pairs that occur.
    keys, counts = np.unique(key, return_counts=True)
    peak = np.zeros(n_users, dtype=np.int64)
    np.maximum.at(peak, keys // span, counts)
    return peak


def _intent_codes(calls: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Expected and predicted intent as codes into one shared vocabulary (-1 = missing)."""
    e_codes, e_names = _dictionary(calls.column("expected_intent"))
    p_codes, p_names = _dictionary(calls.column("predicted_intent"))
    vocabulary = sorted(set(e_names) | set(p_names))
    index = {name: i for i, name in enumerate(vocabulary)}
    e_map = np.array([index[v] for v in e_names] + [-1], dtype=np.int64)
    p_map = np.array([index[v] for v in p_names] + [-1], dtype=np.int64)
    return e_map[e_codes], p_map[p_codes], vocabulary


def _with_all_columns(calls: pa.Table) -> pa.Table:
    missing = [c for c in _REQUIRED if c not in calls.column_names]
    if missing:
        raise InvalidInput(f"compute_hourly_metrics: the calls table lacks the required "
                         f"column(s) {', '.join(missing)}; pass a table in "
                         f"promptops.contracts.records.CALLS_SCHEMA (read with columns=INPUT_COLUMNS)")
    n = calls.num_rows
    for name in INPUT_COLUMNS:
        if name not in calls.column_names:  # an optional field nobody sent
            typ = pa.float64() if name in ("relevance_score", "source_cost_usd") else (
                pa.int64() if name in ("cached_tokens", "cache_creation_tokens")
                else pa.string())
            calls = calls.append_column(name, pa.nulls(n, type=typ))
    return calls.select(list(INPUT_COLUMNS)).unify_dictionaries()


def compute_hourly_metrics(calls: pa.Table, hour: datetime, prices: PriceTable,
                           top_n_users: int = 20) -> pa.Table:
    """The hour's metrics in :data:`promptops.contracts.metric_table.METRICS_SCHEMA`.

    ``calls`` is the hour's ``calls`` partition (at least :data:`INPUT_COLUMNS`); ``hour``
    its start. See the module docstring for the metrics and their conventions.
    """
    if top_n_users < 0:
        raise InvalidInput(f"top_n_users must be >= 0, got {top_n_users}")
    hour = hour_floor(hour)
    # Cache writes (issue 14 sources) when the partition has them.
    writes = (calls.column("cache_creation_tokens")
              if "cache_creation_tokens" in calls.column_names else None)
    source_calls = calls
    calls = _with_all_columns(calls)
    n = calls.num_rows

    model_codes, model_names = _dictionary(calls.column("model"))
    prompt = _floats(calls.column("prompt_tokens"))
    completion = _floats(calls.column("completion_tokens"))
    cached = np.minimum(_floats(calls.column("cached_tokens"), fill=0), prompt)
    costs = prices.cost(calls.column("model"), prompt, completion, cached,
                        provider=calls.column("provider"),
                        latency_ms=calls.column("latency_ms"),
                        cache_creation_tokens=writes)
    if costs.unpriced_models:
        log.warning("hour %s: %d of %d calls use models missing from the price table (%s); "
                    "their cost is reported as unknown. Add them to the price table or to "
                    "the override file.", hour.isoformat(), int((~costs.priced).sum()), n,
                    ", ".join(costs.unpriced_models))

    status_codes, status_names = _dictionary(calls.column("status"))
    ok = np.array([s == SUCCESS_STATUS for s in status_names] + [False])[status_codes]
    latency = _floats(calls.column("latency_ms"))
    latency_order = np.argsort(latency)
    expected, predicted, vocabulary = _intent_codes(calls)
    labelled = np.flatnonzero(expected >= 0)
    relevance = _floats(calls.column("relevance_score"))
    scored = np.flatnonzero(~np.isnan(relevance))
    unpriced = np.flatnonzero(~costs.priced)
    cost = np.where(costs.priced, costs.cost, 0.0)
    unpriced_tokens = prompt[unpriced] + completion[unpriced]
    sizes = {mt.PROMPT_TOKENS: prompt, mt.COMPLETION_TOKENS: completion, mt.CACHED_TOKENS: cached,
             mt.TOTAL_TOKENS: prompt + completion, mt.COST_USD: cost,
             mt.UNPRICED_TOKENS: unpriced_tokens}
    x = _Inputs(
        latency=latency, latency_sq=latency * latency, latency_order=latency_order, latency_sorted=latency[latency_order],
        prompt=prompt, completion=completion, cached=cached,
        cost=cost, failed=np.flatnonzero(~ok),
        unpriced=unpriced, unpriced_tokens=unpriced_tokens,
        labelled=labelled,
        correct=(predicted[labelled] == expected[labelled]).astype(np.float64),
        scored=scored, relevance=relevance[scored],
        sums={k: (v, v * v) for k, v in sizes.items()})

    rows = _Rows.empty()
    overall = _dim(mt.OVERALL, np.zeros(n, dtype=np.intp), np.array([mt.ALL], dtype=object))
    if n == 0:
        _empty_hour_rows(rows)
        return rows.table(hour)
    overall_requests = _dimension_rows(rows, overall, x)

    user_codes, user_names = _dictionary(calls.column("user_id"))
    user_group, user_labels = _top_users(user_codes, user_names, x.cost, top_n_users)
    user_dim = None
    for name, column in DIMENSION_COLUMNS.items():
        if name == "template":
            dim = _template_dim(calls)
        elif name == "user":
            dim = user_dim = _make_dim(name, user_group[user_codes], user_labels)
        elif name == "model":
            dim = _make_dim(name, model_codes, _labels(model_names))
        else:
            dim = _make_dim(name, *_dictionary_labels(calls.column(column)))
        requests = _dimension_rows(rows, dim, x)
        if dim is user_dim:
            user_requests = requests

    if len(labelled):
        _intent_rows(rows, expected[labelled], predicted[labelled], vocabulary)
    if SOURCE_COST_USD in source_calls.column_names:  # null everywhere: no rows
        _cost_source_gap_rows(rows, source_calls.column(SOURCE_COST_USD),
                              calls.column("provider"), overall, model_codes, model_names, cost,
                              costs.priced & ok)

    # Abuse: the most calls one user made in one clock minute.
    ts = calls.column("ts").cast(pa.int64()).to_numpy()
    peak = _peak_per_minute(user_codes, len(user_names) + 1, ts // 60_000_000)
    assert user_dim is not None  # DIMENSION_COLUMNS has "user"
    per_group = np.zeros(len(user_dim.labels), dtype=np.int64)
    # user code -> group code: the user dim's codes are user_group's groups, relabelled.
    group_of_user = np.zeros(len(user_names) + 1, dtype=np.int64)
    group_of_user[user_codes] = user_dim.codes
    np.maximum.at(per_group, group_of_user, peak)
    # A peak is a count in one minute: its Poisson interval says what rate it shows.
    top = np.array([peak.max()], dtype=np.float64)
    rows.add(mt.PEAK_CALLS_PER_MINUTE, mt.OVERALL, overall.labels, top, overall_requests,
             *poisson_interval(top, ACCURACY_ALPHA))
    rows.add(mt.PEAK_CALLS_PER_MINUTE, "user", user_dim.labels, per_group, user_requests,
             *poisson_interval(per_group.astype(np.float64), ACCURACY_ALPHA))
    return _sorted(rows.table(hour))


def _cost_source_gap_rows(rows: _Rows, source_cost: pa.ChunkedArray, provider: pa.ChunkedArray,
                          overall: _Dim, model_codes: np.ndarray, model_names: list[str],
                          cost: np.ndarray, comparable: np.ndarray) -> None:
    """:data:`SOURCE_COST_USD` and :data:`COST_SOURCE_GAP_PCT` overall, per model and per
    provider (see their definitions). ``comparable``: calls promptops priced that
    succeeded (a failed call is billed nothing by LiteLLM, whatever its tokens)."""
    theirs = _floats(source_cost)
    has = ~np.isnan(theirs)
    if not has.any():
        return
    both = has & comparable
    theirs0 = np.where(has, theirs, 0.0)
    dims = [overall, _make_dim("model", model_codes, _labels(model_names)),
            _make_dim("provider", *_dictionary_labels(provider))]
    for dim in dims:
        k = len(dim.labels)
        with_cost = np.bincount(dim.codes, weights=has, minlength=k)
        rows.add(SOURCE_COST_USD, dim.name, dim.labels,
                 np.bincount(dim.codes, weights=theirs0, minlength=k), with_cost,
                 keep=with_cost > 0)
        compared = np.bincount(dim.codes, weights=both, minlength=k)
        ours_sum = np.bincount(dim.codes, weights=np.where(both, cost, 0.0), minlength=k)
        theirs_sum = np.bincount(dim.codes, weights=np.where(both, theirs0, 0.0), minlength=k)
        base = np.where(theirs_sum > 0, theirs_sum, ours_sum)
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.where(base > 0, np.abs(ours_sum - theirs_sum) / base * 100.0, 0.0)
        rows.add(COST_SOURCE_GAP_PCT, dim.name, dim.labels, gap, compared, keep=compared > 0)


def _dictionary_labels(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    codes, names = _dictionary(col)
    return codes, _labels(names)


def _empty_hour_rows(rows: _Rows) -> None:
    """An hour without records: counts that are truly 0, nothing that would be a guess."""
    labels = np.array([mt.ALL], dtype=object)
    zero = np.zeros(1)
    for metric in (mt.REQUESTS, mt.ERRORS, mt.PROMPT_TOKENS, mt.COMPLETION_TOKENS,
                   mt.CACHED_TOKENS, mt.TOTAL_TOKENS, mt.COST_USD, mt.UNPRICED_REQUESTS,
                   mt.UNPRICED_TOKENS, mt.PEAK_CALLS_PER_MINUTE):
        rows.add(metric, mt.OVERALL, labels, zero, zero)


_DIMENSION_ORDER = [mt.OVERALL, *DIMENSION_COLUMNS, "intent", "intent_pair"]


def _sorted(table: pa.Table) -> pa.Table:
    """A stable row order (dimension, metric, slice), so a rerun writes the same file."""
    rank = pc.index_in(table.column("dimension"), value_set=pa.array(_DIMENSION_ORDER))
    order = pc.sort_indices(
        table.append_column("_rank", rank),
        sort_keys=[("_rank", "ascending"), ("metric", "ascending"), ("slice", "ascending")])
    return table.take(order)


# -- lake and XCom --------------------------------------------------------------------------

def write_hourly_metrics(lake: Lake, hour: datetime, table: pa.Table) -> PartitionInfo:
    """Store the hour's metrics as the ``metrics`` partition (replacing an earlier one)."""
    if table.schema != mt.METRICS_SCHEMA:
        raise InvalidInput("write_hourly_metrics: the table is not in METRICS_SCHEMA; build it "
                         "with compute_hourly_metrics")
    return lake.write_partition(mt.METRICS, hour, table)


def metrics_summary(table: pa.Table) -> dict:
    """A small JSON-safe summary for XCom: row count, overall requests and cost, and the
    models that had no price."""
    overall = table.filter(pc.equal(table.column("dimension"), mt.OVERALL))
    values = dict(zip(overall.column("metric").to_pylist(), overall.column("value").to_pylist(),
                      strict=True))
    by_model = table.filter(pc.and_(pc.equal(table.column("dimension"), "model"),
                                    pc.equal(table.column("metric"), mt.UNPRICED_REQUESTS)))
    hours = table.column("hour").to_pylist()
    return {
        "hour": hours[0].isoformat() if hours else None,
        "rows": table.num_rows,
        "requests": int(values.get(mt.REQUESTS) or 0),
        "cost_usd": values.get(mt.COST_USD),
        "unpriced_requests": int(values.get(mt.UNPRICED_REQUESTS) or 0),
        "unpriced_models": sorted(by_model.column("slice").to_pylist()),
    }


def hourly_metrics_for_lake(lake: Lake, hour: datetime, prices: PriceTable,
                            top_n_users: int = 20) -> dict:
    """Read the hour's calls, compute its metrics, write them; return the XCom summary."""
    hour = hour_floor(hour)
    # A partition written before a later column existed reads it as nulls (Lake).
    calls = lake.read_partition(CALLS, hour, columns=list(INPUT_COLUMNS))
    if calls is None:
        raise MissingCallsPartition(
            f"no calls partition for {hour.isoformat()} in {lake.partition_dir(CALLS, hour)}; "
            f"run the ingest for [{hour.isoformat()}, {(hour + timedelta(hours=1)).isoformat()}) "
            f"first")
    table = compute_hourly_metrics(calls, hour, prices, top_n_users)
    info = write_hourly_metrics(lake, hour, table)
    return {**metrics_summary(table), "uri": info.uri}
