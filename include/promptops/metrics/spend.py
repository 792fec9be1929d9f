"""Exact spend per scope, hour by hour: what budgets are judged on.

The hourly metric table keeps only the top users (everybody else is ``other``), so it
cannot say what any one of thousands of users spent. This module keeps, for every UTC hour,
one row per value of every budget dimension (the whole platform, and every user, team,
app and API key that made a call), with the exact priced cost, the tokens and the calls,
in the ``spend`` dataset (:data:`SPEND`, hourly partitions like ``calls``). Sums over any
whole-hour window are then a read of a few small partitions and one group-by.

Contract:

- Rows (:data:`SPEND_SCHEMA`): ``hour``, ``dimension`` (:data:`SPEND_DIMENSIONS`),
  ``value`` (:data:`ALL` for ``overall``; a call without the field counts for
  :data:`NONE_VALUE`), ``cost_usd`` (the priced calls only: an unpriced call adds nothing
  and is counted in ``unpriced_calls`` instead, never priced at 0 silently), ``tokens``
  (prompt + completion), ``calls``. A value has a row only in hours it made calls; the
  ``overall`` row is always there, with zeros for an hour without calls, so an hour that was
  computed is told apart from one that was not.
- Calls are priced by :meth:`promptops.metrics.pricing.PriceTable.cost` with the same
  inputs as :func:`promptops.metrics.hourly.compute_hourly_metrics`, so the overall row's
  cost is the metric table's overall ``cost_usd``.
- Every partition is written whole and replaces the hour's earlier one (the lake's
  contract): a rerun never adds to a figure.
- Readers take windows of whole UTC hours ``[start, end)``. An hour of the window without a
  spend partition is *missing*, reported beside the sums (:class:`SpendSums`) or as NaN
  (:func:`hourly_series`), never read as zero spend.

Work is columnar: pyarrow's hash group-by does every per-value sum, so thousands of users
cost one pass, not one per user. A window's partitions are folded into running sums as
they are read, so a month of every user's rows is never held at once. The floor is one
partition read per hour of the window (about 1.2 s for a 31-day month on the 2-core
development machine, ``bench/budgets.py``), whether one value is asked for or all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from promptops.contracts.datasets import CALLS, SPEND
from promptops.errors import InvalidInput
from promptops.lake.store import Lake, PartitionInfo
from promptops.metrics.pricing import PriceTable
from promptops.timeutil import as_utc, hour_floor

OVERALL = "overall"
#: The ``value`` of the ``overall`` row.
ALL = "*"
#: The ``value`` that counts calls without the dimension's field (a source that has no
#: user, a call without an API key hash), as the metric table's ``(none)`` slice.
NONE_VALUE = "(none)"
#: Budget dimensions, in row order, and the call-record column each one is cut by.
SPEND_DIMENSIONS: dict[str, str | None] = {
    OVERALL: None, "user": "user_id", "team": "team", "app": "app", "key": "api_key_hash"}
#: What a window can be measured in, and the spend column that holds it.
SPEND_METRICS = {"cost": "cost_usd", "tokens": "tokens"}

SPEND_SCHEMA = pa.schema([
    pa.field("hour", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("dimension", pa.string(), nullable=False),
    pa.field("value", pa.string(), nullable=False),
    pa.field("cost_usd", pa.float64(), nullable=False),
    pa.field("unpriced_calls", pa.int64(), nullable=False),
    pa.field("tokens", pa.int64(), nullable=False),
    pa.field("calls", pa.int64(), nullable=False),
])

#: The call-record columns the spend reads (read only these from the lake).
INPUT_COLUMNS = ("user_id", "team", "app", "api_key_hash", "model", "provider", "latency_ms",
                 "prompt_tokens", "completion_tokens", "cached_tokens", "cache_creation_tokens")
_REQUIRED = ("model", "prompt_tokens", "completion_tokens")
_SUMS = ("cost_usd", "unpriced_calls", "tokens", "calls")
#: Rows of hourly partitions held before they are folded into the running sums (a few
#: days of 5,000 users' rows; bounds the memory of a month's sums).
_FOLD_ROWS = 500_000
_EMPTY_SLOTS = pa.schema([*(SPEND_SCHEMA.field(c) for c in ("dimension", "value", *_SUMS)),
                          pa.field("slot", pa.int64())]).empty_table()
#: Sums per (dimension, value) over hours, and how many hours have a row.
_SUMMED_SCHEMA = pa.schema([*(SPEND_SCHEMA.field(c) for c in ("dimension", "value", *_SUMS)),
                            pa.field("hours", pa.int64(), nullable=False)])


# -- one hour ----------------------------------------------------------------------------

def _floats(col: pa.ChunkedArray, fill: float | None = None) -> np.ndarray:
    if fill is not None:
        col = pc.fill_null(col, fill)
    return np.asarray(col.cast(pa.float64()).to_numpy(), dtype=np.float64)


def _priced(calls: pa.Table, prices: PriceTable) -> tuple[np.ndarray, np.ndarray]:
    """Per call: the priced cost (0 where unpriced) and 1 where the call is unpriced.

    The same inputs as the hourly metrics give PriceTable.cost (cached tokens null -> 0 and
    clipped to the prompt), so both price a call alike."""
    names = calls.column_names
    prompt = _floats(calls.column("prompt_tokens"))
    completion = _floats(calls.column("completion_tokens"))
    cached = (np.minimum(_floats(calls.column("cached_tokens"), fill=0), prompt)
              if "cached_tokens" in names else None)
    costs = prices.cost(
        calls.column("model"), prompt, completion, cached,
        provider=calls.column("provider") if "provider" in names else None,
        latency_ms=calls.column("latency_ms") if "latency_ms" in names else None,
        cache_creation_tokens=(calls.column("cache_creation_tokens")
                               if "cache_creation_tokens" in names else None))
    return (np.where(costs.priced, costs.cost, 0.0),
            (~costs.priced).astype(np.int64))


def _values(calls: pa.Table, column: str) -> pa.ChunkedArray | pa.Array:
    """The column as plain strings with nulls as :data:`NONE_VALUE` (a column the table
    lacks, e.g. ``api_key_hash`` before issue 14's sources, is all nulls)."""
    if column not in calls.column_names:
        return pa.array(np.full(calls.num_rows, NONE_VALUE, dtype=object), type=pa.string())
    return pc.fill_null(calls.column(column).cast(pa.string()), NONE_VALUE)


def _sorted(table: pa.Table) -> pa.Table:
    """Dimensions in :data:`SPEND_DIMENSIONS` order, values by name: a rerun writes the
    same file."""
    rank = pc.index_in(table.column("dimension"), value_set=pa.array(list(SPEND_DIMENSIONS)))
    order = pc.sort_indices(table.append_column("_rank", rank),
                            sort_keys=[("_rank", "ascending"), ("value", "ascending")])
    return table.take(order)


def hour_spend(calls: pa.Table, hour: datetime, prices: PriceTable) -> pa.Table:
    """The hour's spend rows (:data:`SPEND_SCHEMA`): every value of every dimension.

    ``calls``: the hour's ``calls`` partition (at least ``model``, ``prompt_tokens`` and
    ``completion_tokens``; the other :data:`INPUT_COLUMNS` are used when present);
    ``hour``: its start (UTC).
    """
    missing = [c for c in _REQUIRED if c not in calls.column_names]
    if missing:
        raise InvalidInput(f"hour_spend: the calls table lacks the column(s) "
                           f"{', '.join(missing)}; pass the hour's calls partition "
                           f"(promptops.contracts.records.CALLS_SCHEMA)")
    hour = hour_floor(hour)
    n = calls.num_rows
    cost, unpriced = _priced(calls, prices)
    # Tokens stay integers end to end: exact however many calls an hour has.
    tokens = pc.add(pc.fill_null(calls.column("prompt_tokens").cast(pa.int64()), 0),
                    pc.fill_null(calls.column("completion_tokens").cast(pa.int64()), 0))
    sums = pa.table({"cost_usd": pa.array(cost, type=pa.float64()),
                     "unpriced_calls": pa.array(unpriced, type=pa.int64()),
                     "tokens": tokens})
    parts = [pa.table({
        "dimension": [OVERALL], "value": [ALL],
        "cost_usd": pa.array([float(cost.sum())], type=pa.float64()),
        "unpriced_calls": pa.array([int(unpriced.sum())], type=pa.int64()),
        "tokens": pa.array([pc.sum(tokens).as_py() or 0], type=pa.int64()),
        "calls": pa.array([n], type=pa.int64())})]
    for dimension, column in SPEND_DIMENSIONS.items():
        if column is None:
            continue
        # use_threads=False: one summation order, so a rerun gives the same bits.
        grouped = (sums.append_column("value", _values(calls, column))
                   .group_by("value", use_threads=False)
                   .aggregate([("cost_usd", "sum"), ("unpriced_calls", "sum"),
                               ("tokens", "sum"), ([], "count_all")]))
        parts.append(pa.table({
            "dimension": pa.array(np.full(grouped.num_rows, dimension, dtype=object),
                                  type=pa.string()),
            "value": grouped.column("value"),
            "cost_usd": grouped.column("cost_usd_sum"),
            "unpriced_calls": grouped.column("unpriced_calls_sum"),
            "tokens": grouped.column("tokens_sum"),
            "calls": grouped.column("count_all")}))
    table = pa.concat_tables(parts)
    hours = pa.array(np.full(table.num_rows, np.datetime64(hour.replace(tzinfo=None), "us")),
                     type=SPEND_SCHEMA.field("hour").type)
    return _sorted(table.add_column(0, "hour", hours)).cast(SPEND_SCHEMA)


def write_hour_spend(lake: Lake, hour: datetime, table: pa.Table) -> PartitionInfo:
    """Store the hour's spend as its ``spend`` partition, replacing an earlier one."""
    hour = hour_floor(hour)
    if table.schema != SPEND_SCHEMA:
        raise InvalidInput("write_hour_spend: the table is not in SPEND_SCHEMA; build it with "
                           "hour_spend")
    stamps = pc.unique(table.column("hour")).to_pylist()
    if any(as_utc(s) != hour for s in stamps):
        raise InvalidInput(f"write_hour_spend: the table holds rows of "
                           f"{', '.join(as_utc(s).isoformat() for s in stamps)}, not only of "
                           f"{hour.isoformat()}; write each hour's hour_spend to its own hour")
    return lake.write_partition(SPEND, hour, table)


def compute_and_write_hour_spend(lake: Lake, hour: datetime,
                                 prices: PriceTable) -> PartitionInfo | None:
    """Read the hour's ``calls`` partition, write its spend; None (and nothing written)
    when the hour has no calls partition yet."""
    hour = hour_floor(hour)
    # A partition written before a later column existed reads it as nulls (Lake).
    calls = lake.read_partition(CALLS, hour, columns=list(INPUT_COLUMNS))
    if calls is None:
        return None
    return write_hour_spend(lake, hour, hour_spend(calls, hour, prices))


# -- windows -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SpendSums:
    """Sums over a window, and the window's hours that had no spend partition."""

    #: One row per value: ``value``, ``cost_usd``, ``unpriced_calls``, ``tokens``,
    #: ``calls`` and ``hours`` (hours in which the value has a row).
    table: pa.Table
    #: Hours of the window without a spend partition, ascending: the sums leave them out.
    missing_hours: tuple[datetime, ...]

    @property
    def complete(self) -> bool:
        """True when every hour of the window had a spend partition."""
        return not self.missing_hours


def _window(start: datetime, end: datetime) -> list[datetime]:
    """The hours of ``[start, end)``; both must be aware and on whole UTC hours."""
    for name, ts in (("start", start), ("end", end)):
        if ts.tzinfo is None:
            raise InvalidInput(f"{name} {ts.isoformat()} has no time zone; pass an aware "
                               f"datetime (a period start in the budget's zone, or UTC)")
        utc = as_utc(ts)
        if utc != hour_floor(utc):
            raise InvalidInput(
                f"{name} {ts.isoformat()} is {utc.isoformat()} in UTC, not a whole UTC hour; "
                f"spend is kept per UTC hour, so a window must start and end on one (a time "
                f"zone with a part-hour offset cannot be summed exactly)")
    first, stop = as_utc(start), as_utc(end)
    if stop < first:
        raise InvalidInput(f"the window ends ({stop.isoformat()}) before it starts "
                           f"({first.isoformat()})")
    return [first + timedelta(hours=i) for i in range((stop - first) // timedelta(hours=1))]


def _check_dimension(dimension: str) -> None:
    if dimension not in SPEND_DIMENSIONS:
        raise InvalidInput(f"unknown spend dimension {dimension!r}; use one of "
                           f"{', '.join(SPEND_DIMENSIONS)}")


def _metric_column(metric: str) -> str:
    if metric not in SPEND_METRICS:
        raise InvalidInput(f"unknown spend metric {metric!r}; use one of "
                           f"{', '.join(SPEND_METRICS)}")
    return SPEND_METRICS[metric]


def _partitions(lake: Lake, hours: list[datetime], dimensions: Sequence[str],
                values: Sequence[str] | None, missing: list[datetime]) -> Iterator[pa.Table]:
    """Each hour's rows of ``dimensions`` (and ``values``, if given), with ``slot`` = the
    hour's index in ``hours``; the hours without a partition are appended to ``missing``."""
    columns = ["dimension", "value", *_SUMS]
    wanted = pa.array(list(dimensions), type=pa.string())
    chosen = None if values is None else pa.array(list(values), type=pa.string())
    for slot, hour in enumerate(hours):
        table = lake.read_partition(SPEND, hour, columns=columns)
        if table is None:
            missing.append(hour)
            continue
        keep = pc.is_in(table.column("dimension"), value_set=wanted)
        if chosen is not None:
            keep = pc.and_(keep, pc.is_in(table.column("value"), value_set=chosen))
        table = table.filter(keep)
        yield table.append_column(
            "slot", pa.array(np.full(table.num_rows, slot, dtype=np.int64)))


def _summed(lake: Lake, hours: list[datetime], dimensions: Sequence[str],
            values: Sequence[str] | None = None) -> tuple[pa.Table, tuple[datetime, ...]]:
    """Per (dimension, value) over ``hours``: the sums of :data:`_SUMS` and ``hours`` (hours
    with a row); and the hours without a partition.

    Partitions are folded into the running sums every :data:`_FOLD_ROWS` rows, so memory
    holds a few days of rows, not a month of every user's."""
    keys = ["dimension", "value"]
    measures = [*_SUMS, "hours"]

    def fold(parts: list[pa.Table]) -> pa.Table:
        # use_threads=False: one summation order, so the same window gives the same bits.
        grouped = pa.concat_tables(parts).group_by(keys, use_threads=False).aggregate(
            [(c, "sum") for c in measures])
        return grouped.rename_columns({f"{c}_sum": c for c in measures}).select(
            [*keys, *measures]).cast(_SUMMED_SCHEMA)

    missing: list[datetime] = []
    pending: list[pa.Table] = []
    rows = 0
    for table in _partitions(lake, hours, dimensions, values, missing):
        # One row per value per hour: a row counts one hour.
        pending.append(table.drop_columns(["slot"]).append_column(
            _SUMMED_SCHEMA.field("hours"), pa.array(np.ones(table.num_rows, dtype=np.int64))))
        rows += table.num_rows
        if rows >= _FOLD_ROWS:
            pending = [fold(pending)]
            rows = pending[0].num_rows
    if not pending:
        return _SUMMED_SCHEMA.empty_table(), tuple(missing)
    return fold(pending), tuple(missing)


def spend_between(lake: Lake, start: datetime, end: datetime, dimension: str,
                  values: Sequence[str] | None = None) -> SpendSums:
    """Sums per value of ``dimension`` over the hours ``[start, end)`` (whole UTC hours).

    ``values=None``: every value with calls in the window; else those values only, each
    with a row (zeros and ``hours`` 0 when it made no call). ``missing_hours`` says which
    hours the sums could not include.
    """
    _check_dimension(dimension)
    hours = _window(start, end)
    wanted = None if values is None else sorted(set(values))
    summed, missing = _summed(lake, hours, [dimension], wanted)
    table = summed.drop_columns(["dimension"])
    if wanted is not None:
        present = set(table.column("value").to_pylist())
        absent = [v for v in wanted if v not in present]
        if absent:
            k = len(absent)
            zeros = pa.table({"value": pa.array(absent, type=pa.string()),
                              "cost_usd": pa.array(np.zeros(k), type=pa.float64()),
                              **{c: pa.array(np.zeros(k, dtype=np.int64), type=pa.int64())
                                 for c in (*_SUMS[1:], "hours")}})
            table = pa.concat_tables([table, zeros.cast(table.schema)])
    return SpendSums(table.sort_by("value"), missing)


def hourly_series(lake: Lake, start: datetime, end: datetime, dimension: str, value: str,
                  metric: str = "cost") -> np.ndarray:
    """One value's hourly ``metric`` (``"cost"``: USD of priced calls, or ``"tokens"``) over
    ``[start, end)``: 0 for an hour it made no call, NaN for an hour without a spend
    partition (unknown, for a forecast to treat as missing)."""
    return hourly_series_of(lake, start, end, dimension, [value], metric)[value]


def hourly_series_of(lake: Lake, start: datetime, end: datetime, dimension: str,
                     values: Sequence[str], metric: str = "cost") -> dict[str, np.ndarray]:
    """:func:`hourly_series` of several values of one dimension, reading each hour's
    partition once."""
    _check_dimension(dimension)
    column = _metric_column(metric)
    hours = _window(start, end)
    missing: list[datetime] = []
    rows = pa.concat_tables(list(_partitions(lake, hours, [dimension], values, missing))
                            or [_EMPTY_SLOTS])
    base = np.zeros(len(hours), dtype=np.float64)
    if missing:
        base[[(h - hours[0]) // timedelta(hours=1) for h in missing]] = np.nan
    out = {v: base.copy() for v in values}
    # One row per value per hour, so each slot of a value is written at most once.
    slots = rows.column("slot").to_numpy()
    amounts = rows.column(column).to_numpy().astype(np.float64)
    for i, v in enumerate(rows.column("value").to_pylist()):
        out[v][slots[i]] = amounts[i]
    return out


def shares(lake: Lake, start: datetime, end: datetime, dimension: str,
           metric: str = "cost") -> pa.Table:
    """Each value's share of the platform's total ``metric`` over ``[start, end)``.

    Columns ``value``, the metric's column (``cost_usd`` or ``tokens``: the value's sum) and
    ``share`` (its sum over the ``overall`` sum; null when that is 0). The values of a
    dimension share out the overall total, since every call has exactly one value of each
    (:data:`NONE_VALUE` included). Hours without a partition are in neither sum; use
    :func:`spend_between` to learn which they are.
    """
    _check_dimension(dimension)
    column = _metric_column(metric)
    summed, _ = _summed(lake, _window(start, end), [dimension, OVERALL])
    total = pc.sum(summed.filter(pc.equal(summed.column("dimension"), OVERALL))
                   .column(column)).as_py() or 0
    per_value = summed.filter(pc.equal(summed.column("dimension"), dimension))
    sums = per_value.column(column)
    share = (pc.divide(sums.cast(pa.float64()), float(total)) if total
             else pa.nulls(per_value.num_rows, pa.float64()))
    return pa.table({"value": per_value.column("value"), column: sums,
                     "share": share}).sort_by("value")
