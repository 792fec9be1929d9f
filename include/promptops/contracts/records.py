"""The call record: its schema in the lake and the validation of raw API pages.

A page is validated on one of two paths with the same outcome:

- :func:`validate_page` takes the records as Python objects (parsed JSON). Each field is
  pulled out once as a list, its value types are checked with one C-level pass, and the
  column becomes an Arrow array (strings, or float64 for numbers). Only a column that holds
  an unexpected type falls back to a per-value check, and only for that column.
- :func:`validate_columns` takes a page the client read straight into Arrow
  (:data:`RAW_RECORD_TYPE`); that reader refuses values of the wrong JSON type, so such pages
  always go the first way.

From the Arrow columns on, both run the same code (:func:`_check_field`, :func:`_finish`),
field by field in contract order, so the first rule a record breaks, and so its reason, is
the same. Each rejected record keeps its raw JSON, that rule and the field, so nothing is
lost and the reason can be acted on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    pa.field("user_id", _DIM),  # required from the platform API, may be null elsewhere
    pa.field("team", _DIM),
    pa.field("app", _DIM),  # required from the platform API, may be null elsewhere
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
    # Sources other than the platform API (issue 14): cache writes (billed by Anthropic),
    # the source's own cost figure (LiteLLM's spend) and the hashed API key (never in clear).
    pa.field("cache_creation_tokens", pa.int64()),
    pa.field("source_cost_usd", pa.float64()),
    pa.field("api_key_hash", _DIM),
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
    FieldRule("cache_creation_tokens", _INT, non_negative=True),
    FieldRule("source_cost_usd", _NUM, non_negative=True),
    FieldRule("api_key_hash", _STR),
)
#: Fields the platform API must send but another source may not have (no mapping gives
#: them): null there, never invented.
SOURCE_OPTIONAL = frozenset({"user_id", "app"})


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


#: The largest integer a float64 holds exactly (I-JSON, RFC 7493). Integer fields are read
#: through float64 (JSON has one number type), so a count beyond it could not be kept exact.
MAX_EXACT_INT = 2**53 - 1

#: How a record is read from JSON before validation, when a page is decoded straight into
#: Arrow: text fields as strings and every number as float64 (an int64 column would silently
#: truncate 12.5 to 12; the integer rules are checked on the float values instead).
RAW_RECORD_TYPE = pa.struct([
    pa.field(rule.name, pa.string() if rule.kind == _STR else pa.float64())
    for rule in FIELD_RULES
])


class _Verdict:
    """Per record: the first rule it broke (the one reported) and the field, or none yet."""

    def __init__(self, n: int) -> None:
        self.open = np.ones(n, dtype=bool)  # True while a record has broken no rule
        self.reason = np.full(n, None, dtype=object)
        self.field = np.full(n, None, dtype=object)

    def reject(self, mask: np.ndarray, why: str, name: str | None) -> None:
        new = mask & self.open
        if new.any():
            self.reason[new] = why
            self.field[new] = name
            self.open &= ~new


def _type_mask(values: list, accepted: tuple[type, ...]) -> np.ndarray:
    """True where a present value has an accepted type. bool is never a number in JSON."""
    return np.fromiter(
        (v is None or (type(v) in accepted) for v in values), dtype=bool, count=len(values)
    )


def _numbers(values: list) -> pa.Array:
    """JSON numbers as float64 (None -> null). Integers beyond 2**53 do not convert exactly,
    which pyarrow refuses; they go through Python's float() and are rejected as out of range
    by :func:`_check_field`."""
    try:
        return pa.array(values, type=pa.float64())
    except (pa.ArrowInvalid, OverflowError):
        return pa.array([float(v) if type(v) is int else v for v in values], type=pa.float64())


def _check_field(rule: FieldRule, arr: pa.Array, is_obj: np.ndarray, verdict: _Verdict) -> None:
    """The value rules of one field on its Arrow column (strings, or float64 for numbers).
    Both validation paths run exactly this, in field order, so the first rule a record
    breaks is the same whichever path read it."""
    if rule.kind != _STR:
        num = arr.to_numpy(zero_copy_only=False)  # nulls become NaN
        valid = ~np.isnan(num)
        if rule.kind == _INT:
            verdict.reject(valid & (np.floor(num) != num), WRONG_TYPE, rule.name)
        if rule.non_negative:
            verdict.reject(valid & (num < 0), NEGATIVE_VALUE, rule.name)
        value_range = rule.value_range
        if value_range is None and rule.kind == _INT:
            value_range = (-MAX_EXACT_INT, MAX_EXACT_INT)
        if value_range is not None:
            lo, hi = value_range
            verdict.reject(valid & ((num < lo) | (num > hi)), OUT_OF_RANGE, rule.name)
    if rule.required or rule.choices is not None:
        present = arr.is_valid().to_numpy(zero_copy_only=False)
        if rule.required:
            verdict.reject(~present & is_obj, MISSING_FIELD, rule.name)
        if rule.choices is not None:
            choice_ok = pc.is_in(arr, value_set=pa.array(rule.choices)).to_numpy(
                zero_copy_only=False)
            verdict.reject(present & ~choice_ok, INVALID_VALUE, rule.name)


def validate_page(records: list, window_start: datetime, window_end: datetime, *,
                  optional: frozenset[str] = frozenset()) -> ValidatedPage:
    """Validate raw records against the contract and the requested ``[start, end)`` window.

    Returns the good records as a table in :data:`CALLS_SCHEMA` (in page order, duplicates
    still in) and the rejects, each ``{"reason", "field", "call_id", "raw"}``. Required
    fields named in ``optional`` may be missing (a source without them:
    :data:`SOURCE_OPTIONAL`).
    """
    n = len(records)
    verdict = _Verdict(n)
    is_obj = np.fromiter((type(r) is dict for r in records), dtype=bool, count=n)
    verdict.reject(~is_obj, NOT_AN_OBJECT, None)
    rows = records if is_obj.all() else [r if type(r) is dict else {} for r in records]

    columns: dict[str, pa.Array] = {}
    for rule in FIELD_RULES:
        if rule.name in optional:
            rule = replace(rule, required=False)
        values = [r.get(rule.name) for r in rows]
        accepted = _ACCEPTED[rule.kind]
        seen_types = set(map(type, values))
        seen_types.discard(type(None))
        if not seen_types <= set(accepted):
            ok = _type_mask(values, accepted)
            verdict.reject(~ok, WRONG_TYPE, rule.name)
            # Wrong-typed values become None; their record is rejected already.
            values = [v if o else None for v, o in zip(values, ok, strict=True)]
        arr = pa.array(values, type=pa.string()) if rule.kind == _STR else _numbers(values)
        _check_field(rule, arr, is_obj, verdict)
        columns[rule.name] = arr
    return _finish(columns, is_obj, verdict, window_start, window_end, lambda: records)


def validate_columns(data: pa.StructArray, window_start: datetime, window_end: datetime,
                     records: Callable[[], list]) -> ValidatedPage:
    """:func:`validate_page` for a page already read into Arrow as :data:`RAW_RECORD_TYPE`
    (``PlatformClient.iter_call_record_page_bodies`` does that for well-formed pages).

    The reader has already refused every value of the wrong JSON type (such a page is
    validated by :func:`validate_page` instead), so only the value rules remain, and they are
    the same code as on the dict path. ``records`` returns the page's records as Python
    objects; it is called only when some record is rejected, for the raw JSON kept in the
    quarantine. A null in the page's ``data`` list is ``not_an_object``, as on the dict path.
    """
    if data.type != RAW_RECORD_TYPE:
        raise TypeError(f"validate_columns needs a struct array of RAW_RECORD_TYPE, got "
                        f"{data.type}")
    verdict = _Verdict(len(data))
    is_obj = data.is_valid().to_numpy(zero_copy_only=False)
    verdict.reject(~is_obj, NOT_AN_OBJECT, None)
    columns: dict[str, pa.Array] = {}
    # flatten() applies the struct's own nulls to its children: a null record has no fields.
    for rule, arr in zip(FIELD_RULES, data.flatten(), strict=True):
        _check_field(rule, arr, is_obj, verdict)
        columns[rule.name] = arr
    return _finish(columns, is_obj, verdict, window_start, window_end, records)


def _finish(columns: dict[str, pa.Array], is_obj: np.ndarray, verdict: _Verdict,
            window_start: datetime, window_end: datetime,
            records: Callable[[], list]) -> ValidatedPage:
    """The timestamp rules, then the good rows in the lake schema and the rejects."""
    # Timestamps: RFC 3339, any offset accepted and converted to UTC (tolerant client).
    ts_text = columns["ts"].to_pandas()
    ts = pd.to_datetime(ts_text, format="ISO8601", utc=True, errors="coerce")
    has_time = ts_text.str.len().fillna(0).to_numpy() >= 19
    parsed = ts.notna().to_numpy() & has_time
    verdict.reject(ts_text.notna().to_numpy() & ~parsed, BAD_TIMESTAMP, "ts")
    start, end = pd.Timestamp(window_start), pd.Timestamp(window_end)
    inside = ((ts >= start) & (ts < end)).fillna(False).to_numpy(dtype=bool)
    verdict.reject(parsed & ~inside, TS_OUTSIDE_WINDOW, "ts")

    good = verdict.open
    rejects = []
    bad_idx = np.flatnonzero(~good)
    if len(bad_idx):
        raw_records = records()
        call_ids = columns["call_id"].take(pa.array(bad_idx)).to_pylist()
        for i, cid in zip(bad_idx.tolist(), call_ids, strict=True):
            rejects.append({"reason": verdict.reason[i], "field": verdict.field[i],
                            "call_id": cid if isinstance(cid, str) else None,
                            "raw": orjson.dumps(raw_records[i]).decode()})

    keep = None if not len(bad_idx) else pa.array(np.flatnonzero(good))
    out = {}
    for f in CALLS_SCHEMA:
        arr = pa.Array.from_pandas(ts) if f.name == "ts" else columns[f.name]
        if keep is not None:
            arr = arr.take(keep)
        if f.name == "ts":
            out[f.name] = arr.cast(f.type, safe=False)  # ns -> us drops sub-microsecond digits
        elif f.type == _DIM:
            out[f.name] = pc.dictionary_encode(arr)
        else:
            out[f.name] = arr.cast(f.type)
    return ValidatedPage(good=pa.table(out, schema=CALLS_SCHEMA), rejects=rejects)


def empty_calls_table() -> pa.Table:
    return CALLS_SCHEMA.empty_table()
