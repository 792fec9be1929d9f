"""Validation of raw pages against the record contract."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from promptops.records import CALLS_SCHEMA, validate_page

START = datetime(2026, 11, 20, 13, tzinfo=UTC)
END = datetime(2026, 11, 20, 14, tzinfo=UTC)


def record(call_id: str, **overrides) -> dict:
    base = {
        "call_id": call_id, "ts": "2026-11-20T13:05:00Z", "user_id": "u-1", "team": "search",
        "app": "support-bot", "model": "gpt-4o", "provider": "openai", "region": "us-east",
        "status": "success", "latency_ms": 812.5, "prompt_tokens": 420,
        "completion_tokens": 96, "cached_tokens": 128, "relevance_score": 4.5,
        "extra_field_from_the_future": {"ignored": True},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


# One page holding every kind of bad record the contract names, each with its expected
# (reason, field).
BAD = {
    "missing-call-id": (record(...), ("missing_field", "call_id")),
    "missing-model": (record("m1", model=...), ("missing_field", "model")),
    "null-status": (record("m2", status=None), ("missing_field", "status")),
    "latency-string": (record("t1", latency_ms="fast"), ("wrong_type", "latency_ms")),
    "tokens-float": (record("t2", prompt_tokens=12.5), ("wrong_type", "prompt_tokens")),
    "tokens-string": (record("t3", completion_tokens="12"), ("wrong_type", "completion_tokens")),
    "tokens-bool": (record("t4", prompt_tokens=True), ("wrong_type", "prompt_tokens")),
    "user-int": (record("t5", user_id=123), ("wrong_type", "user_id")),
    "status-int": (record("t6", status=1), ("wrong_type", "status")),
    "negative-latency": (record("n1", latency_ms=-1), ("negative_value", "latency_ms")),
    "negative-cached": (record("n2", cached_tokens=-5), ("negative_value", "cached_tokens")),
    "relevance-high": (record("r1", relevance_score=5.5), ("out_of_range", "relevance_score")),
    "relevance-low": (record("r2", relevance_score=0), ("out_of_range", "relevance_score")),
    "status-value": (record("v1", status="ok"), ("invalid_value", "status")),
    "ts-garbage": (record("d1", ts="yesterday"), ("bad_timestamp", "ts")),
    "ts-date-only": (record("d2", ts="2026-11-20"), ("bad_timestamp", "ts")),
    "ts-before": (record("w1", ts="2026-11-20T12:59:59.999Z"), ("ts_outside_window", "ts")),
    "ts-at-end": (record("w2", ts="2026-11-20T14:00:00Z"), ("ts_outside_window", "ts")),
    "not-object": ("a string, not a record", ("not_an_object", None)),
}


def test_every_bad_kind_is_quarantined_with_its_reason_and_good_ones_kept():
    good = [record("g1"), record("g2", ts="2026-11-20T13:59:59.5+00:00", prompt_tokens=7.0,
                                 relevance_score=None, cached_tokens=None)]
    page = [good[0]] + [bad for bad, _ in BAD.values()] + [good[1]]

    result = validate_page(page, START, END)

    assert result.good.schema == CALLS_SCHEMA
    assert result.good.column("call_id").to_pylist() == ["g1", "g2"]
    got = [(r["reason"], r["field"]) for r in result.rejects]
    assert got == [expected for _, expected in BAD.values()]
    assert sum(result.reject_counts.values()) == len(BAD)
    # The raw record is kept verbatim (as JSON) so nothing is lost.
    raws = {r["call_id"]: r["raw"] for r in result.rejects}
    assert '"latency_ms":"fast"' in raws["t1"]


def test_values_are_typed_and_converted_to_utc():
    page = [record("a", ts="2026-11-20T14:30:00.123456+01:00", prompt_tokens=12.0)]
    table = validate_page(page, START, END).good
    row = table.to_pylist()[0]
    assert row["ts"] == datetime(2026, 11, 20, 13, 30, 0, 123456, tzinfo=UTC)
    assert row["prompt_tokens"] == 12 and isinstance(row["prompt_tokens"], int)
    assert row["cached_tokens"] == 128
    assert pa.types.is_dictionary(table.schema.field("model").type)
    assert "extra_field_from_the_future" not in table.column_names


def test_first_broken_rule_wins_and_duplicates_are_not_validations_business():
    page = [record("x", latency_ms=-3, status="nope"), record("dup"), record("dup")]
    result = validate_page(page, START, END)
    assert [(r["reason"], r["field"]) for r in result.rejects] == [("invalid_value", "status")]
    assert result.good.column("call_id").to_pylist() == ["dup", "dup"]


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_tiny_pages(n):
    result = validate_page([record(f"c{i}") for i in range(n)], START, END)
    assert result.good.num_rows == n and result.rejects == []
