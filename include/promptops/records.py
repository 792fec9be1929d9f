"""The call record: its schema in the lake and the validation of raw API pages.

A page arrives as a list of Python objects (parsed JSON). Validation is columnar: each field
is pulled out once as a list, its value types are checked with one C-level pass, and the
column becomes an Arrow array. Only a column that holds an unexpected type falls back to a
per-value check, and only for that column. Each rejected record keeps its raw JSON, the
first rule it broke and the field, so nothing is lost and the reason can be acted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# -- the lake schema -------------------------------------------------------------------------

_DIM = pa.dictionary(pa.int32(), pa.string())

#: Parquet schema of ``calls`` partitions. Dimensions are dictionary-encoded (few distinct
#: values, many rows); timestamps are UTC microseconds.
CALLS_SCHEMA = pa.schema([
    pa.field("call_id", pa.string(), nullable=False),
    pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("user_id", _DIM, nullable=False),
    pa.field("team", _DIM),
    pa.field("app", _DIM, nullable=False),
    pa.field("prompt_template", _DIM),
    pa.field("prompt_version", _DIM),
    pa.field("model", _DIM, nullable=False),
    pa.field("provider", _DIM),
    pa.field("region", _DIM),
    pa.field("status", _DIM, nullable=False),
    pa.field("error_code", pa.int32()),
    pa.field("http_status", pa.int16()),
    pa.field("latency_ms", pa.float64(), nullable=False),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("completion_tokens", pa.int64(), nullable=False),
    pa.field("cached_tokens", pa.int64()),
    pa.field("predicted_intent", _DIM),
    pa.field("expected_intent", _DIM),
    pa.field("relevance_score", pa.float64()),
    pa.field("prompt_text", pa.string()),
    pa.field("response_text", pa.string()),
    pa.field("gpu_node", _DIM),
])

#: Quarantine rows: the raw record and why it was kept out of the lake.
QUARANTINE_SCHEMA = pa.schema([
    pa.field("reason", pa.string(), nullable=False),
    pa.field("field", pa.string()),
    pa.field("call_id", pa.string()),
    pa.field("raw", pa.string(), nullable=False),
    pa.field("window_start", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("window_end", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("run_id", pa.string()),
    pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
])

# -- reject reasons (the simulator's ground truth uses the same codes) ----------------------

NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NEGATIVE_VALUE = "negative_value"
OUT_OF_RANGE = "out_of_range"
INVALID_VALUE = "invalid_value"
BAD_TIMESTAMP = "bad_timestamp"
TS_OUTSIDE_WINDOW = "ts_outside_window"

REJECT_REASONS = (NOT_AN_OBJECT, MISSING_FIELD, WRONG_TYPE, NEGATIVE_VALUE, OUT_OF_RANGE,
                  INVALID_VALUE, BAD_TIMESTAMP, TS_OUTSIDE_WINDOW)

# -- field rules ----------------------------------------------------------------------------

_STR, _INT, _NUM = "string", "integer", "number"
_ACCEPTED = {_STR: (str,), _INT: (int, float), _NUM: (int, float)}


@dataclass(frozen=True)
class FieldRule:
    name: str
    kind: str  # _STR, _INT or _NUM
    required: bool = False
    non_negative: bool = False
    value_range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None


#: The contract's record table (platform-api.md), in the order rules are checked.
FIELD_RULES: tuple[FieldRule, ...] = (
    FieldRule("call_id", _STR, required=True),
    FieldRule("ts", _STR, required=True),
    FieldRule("user_id", _STR, required=True),
    FieldRule("team", _STR),
    FieldRule("app", _STR, required=True),
    FieldRule("prompt_template", _STR),
    FieldRule("prompt_version", _STR),
    FieldRule("model", _STR, required=True),
    FieldRule("provider", _STR),
    FieldRule("region", _STR),
    FieldRule("status", _STR, required=True, choices=("success", "error")),
    FieldRule("error_code", _INT, value_range=(0, 2**31 - 1)),
    FieldRule("http_status", _INT, value_range=(100, 599)),
    FieldRule("latency_ms", _NUM, required=True, non_negative=True),
    FieldRule("prompt_tokens", _INT, required=True, non_negative=True),
    FieldRule("completion_tokens", _INT, required=True, non_negative=True),
    FieldRule("cached_tokens", _INT, non_negative=True),
    FieldRule("predicted_intent", _STR),
    FieldRule("expected_intent", _STR),
    FieldRule("relevance_score", _NUM, value_range=(1.0, 5.0)),
    FieldRule("prompt_text", _STR),
    FieldRule("response_text", _STR),
    FieldRule("gpu_node", _STR),
)


@dataclass
class ValidatedPage:
    """The outcome of validating one page: good rows as Arrow, rejects with reasons."""

    good: pa.Table
    rejects: list[dict] = field(default_factory=list)

    @property
    def reject_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rej in self.rejects:
            counts[rej["reason"]] = counts.get(rej["reason"], 0) + 1
        return counts


def _type_mask(values: list, accepted: tuple[type, ...]) -> np.ndarray:
    """True where a present value has an accepted type. bool is never a number in JSON."""
    return np.fromiter(
        (v is None or (type(v) in accepted) for v in values), dtype=bool, count=len(values)
    )


def validate_page(records: list, window_start: datetime, window_end: datetime) -> ValidatedPage:
    """Validate raw records against the contract and the requested ``[start, end)`` window.

    Returns the good records as a table in :data:`CALLS_SCHEMA` (in page order, duplicates
    still in) and the rejects, each ``{"reason", "field", "call_id", "raw"}``.
    """
    n = len(records)
    reason = np.full(n, None, dtype=object)
    bad_field = np.full(n, None, dtype=object)

    def reject(mask: np.ndarray, why: str, name: str | None) -> None:
        # The first rule a record breaks is the one reported.
        new = mask & (reason == None)  # noqa: E711 - elementwise comparison on an object array
        reason[new] = why
        bad_field[new] = name

    is_obj = np.fromiter((type(r) is dict for r in records), dtype=bool, count=n)
    reject(~is_obj, NOT_AN_OBJECT, None)
    rows = records if is_obj.all() else [r if type(r) is dict else {} for r in records]

    columns: dict[str, pa.Array] = {}
    for rule in FIELD_RULES:
        values = [r.get(rule.name) for r in rows]
        accepted = _ACCEPTED[rule.kind]
        seen_types = set(map(type, values))
        seen_types.discard(type(None))
        if not seen_types <= set(accepted):
            ok = _type_mask(values, accepted)
            reject(~ok, WRONG_TYPE, rule.name)
            values = [v if o else None for v, o in zip(values, ok, strict=True)]

        if rule.kind == _STR:
            arr = pa.array(values, type=pa.string())
        else:
            # Floats first: pyarrow would silently truncate 12.5 into an int64 column.
            num = np.asarray(pa.array(values, type=pa.float64()).to_numpy(zero_copy_only=False))
            valid = ~np.isnan(num)
            if rule.kind == _INT and float in seen_types:
                reject(valid & (np.floor(num) != num), WRONG_TYPE, rule.name)
            if rule.non_negative:
                reject(valid & (num < 0), NEGATIVE_VALUE, rule.name)
            if rule.value_range is not None:
                lo, hi = rule.value_range
                reject(valid & ((num < lo) | (num > hi)), OUT_OF_RANGE, rule.name)
            arr = pa.array(num, type=pa.float64(), mask=~valid)
        # Wrong-typed values are None by now, but their record was already rejected above.
        present = arr.is_valid().to_numpy(zero_copy_only=False)
        if rule.required:
            reject(~present & is_obj, MISSING_FIELD, rule.name)
        if rule.choices is not None:
            choice_ok = pc.is_in(arr, value_set=pa.array(rule.choices)).to_numpy(
                zero_copy_only=False)
            reject(present & ~choice_ok, INVALID_VALUE, rule.name)
        columns[rule.name] = arr

    # Timestamps: RFC 3339, any offset accepted and converted to UTC (tolerant client).
    ts_text = columns["ts"].to_pandas()
    ts = pd.to_datetime(ts_text, format="ISO8601", utc=True, errors="coerce")
    has_time = ts_text.str.len().fillna(0).to_numpy() >= 19
    parsed = ts.notna().to_numpy() & has_time
    reject(ts_text.notna().to_numpy() & ~parsed, BAD_TIMESTAMP, "ts")
    start, end = pd.Timestamp(window_start), pd.Timestamp(window_end)
    inside = ((ts >= start) & (ts < end)).fillna(False).to_numpy(dtype=bool)
    reject(parsed & ~inside, TS_OUTSIDE_WINDOW, "ts")

    good = reason == None  # noqa: E711
    rejects = []
    if not good.all():
        call_ids = columns["call_id"].to_pylist()
        for i in np.flatnonzero(~good):
            cid = call_ids[i] if isinstance(call_ids[i], str) else None
            rejects.append({"reason": reason[i], "field": bad_field[i], "call_id": cid,
                            "raw": orjson.dumps(records[i]).decode()})

    good_idx = pa.array(np.flatnonzero(good))
    out = {}
    for f in CALLS_SCHEMA:
        if f.name == "ts":
            arr = pa.Array.from_pandas(ts).take(good_idx)
            out[f.name] = arr.cast(f.type, safe=False)  # ns -> us drops sub-microsecond digits
        else:
            out[f.name] = columns[f.name].take(good_idx).cast(f.type)
    return ValidatedPage(good=pa.table(out, schema=CALLS_SCHEMA), rejects=rejects)


def empty_calls_table() -> pa.Table:
    return CALLS_SCHEMA.empty_table()
