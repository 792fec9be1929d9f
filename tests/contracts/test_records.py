"""Validation of raw pages against the record contract."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pytest

from promptops.contracts.records import (
    CALLS_SCHEMA,
    FIELD_RULES,
    ValidatedPage,
    validate_columns,
    validate_page,
)
from promptops.ingest.pull import validate_call_page
from promptops.platform.paging import CallRecordPage, read_page_columns
from promptops.simulator import Platform, SimConfig

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


# -- the Arrow fast path gives exactly what the dict path gives --------------------------------
# Pages read straight into Arrow (promptops.platform.paging.read_page_columns) are validated by
# validate_columns; anything that reader cannot take is validated on dicts. Either way the
# good rows and the rejects (reason, field, call_id, raw JSON) must be the same.


def body_of(records: list, next_cursor: str | None = None, **dumps) -> bytes:
    return orjson.dumps({"data": records, "next_cursor": next_cursor}, **dumps)


def both_paths(body: bytes, start=START, end=END):
    """(dict path result, fast path result or None when the fast reader stood aside)."""
    expected = validate_page(orjson.loads(body)["data"], start, end)
    fast = read_page_columns(body)
    if fast is None:
        return expected, None
    columns, _ = fast
    return expected, validate_columns(columns, start, end, lambda: orjson.loads(body)["data"])


def assert_same(got: ValidatedPage, expected: ValidatedPage) -> None:
    assert got.good.schema == expected.good.schema == CALLS_SCHEMA
    assert got.good.to_pylist() == expected.good.to_pylist()
    assert got.good.equals(expected.good)
    assert got.rejects == expected.rejects


# Kinds the Arrow reader refuses (a value of the wrong JSON type, a record that is not an
# object): those pages go the dict path, which reports wrong_type / not_an_object.
REFUSED = {"latency-string", "tokens-string", "tokens-bool", "user-int", "status-int",
           "not-object"}


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_kind_same_on_both_paths(kind):
    bad, reason = BAD[kind]
    page = [record("g1"), bad, record("g2", relevance_score=None)]
    expected, got = both_paths(body_of(page))
    assert [(r["reason"], r["field"]) for r in expected.rejects] == [reason]
    if kind in REFUSED:
        assert got is None
        return
    assert got is not None, "the fast reader should take a page of well-typed JSON"
    assert_same(got, expected)


def test_whole_bad_page_through_ingest_dispatch_is_the_dict_result():
    page = [record("g1")] + [bad for bad, _ in BAD.values()] + [record("g2")]
    body = body_of(page)
    fast = read_page_columns(body)
    assert fast is None  # wrong types inside: the dict path decides
    got = validate_call_page(CallRecordPage(body, None, orjson.loads(body)["data"]), START, END)
    assert_same(got, validate_page(page, START, END))


def test_null_record_is_not_an_object_on_both_paths():
    page = [record("g1"), None, record("g2")]
    expected, got = both_paths(body_of(page))
    assert [(r["reason"], r["raw"]) for r in expected.rejects] == [("not_an_object", "null")]
    assert got is not None
    assert_same(got, expected)


@pytest.mark.parametrize("value, reason", [
    (2**53 - 1, None), (2**53, "out_of_range"), (2**63 - 1, "out_of_range"),
    (2**64 - 1, "out_of_range"), (1e300, "out_of_range"), (-(2**60), "negative_value"),
])
def test_integers_beyond_float_precision_are_rejected_not_a_crash(value, reason):
    page = [record("big", prompt_tokens=value)]
    expected, got = both_paths(body_of(page))
    assert [r["reason"] for r in expected.rejects] == ([reason] if reason else [])
    if reason is None:
        assert expected.good.column("prompt_tokens").to_pylist() == [value]
    assert got is not None
    assert_same(got, expected)


def test_huge_latency_is_a_number_like_any_other():
    page = [record("slow", latency_ms=2**60)]
    expected, got = both_paths(body_of(page))
    assert expected.rejects == [] and expected.good.column("latency_ms")[0].as_py() == 2.0**60
    assert_same(got, expected)


@pytest.mark.parametrize("body, why", [
    (b'{"data":[{"call_id":"a","latency_ms":NaN}],"next_cursor":null}', "NaN"),
    (b'{"data":[{"call_id":"a","x":[Infinity]}],"next_cursor":null}', "Infinity"),
    (b'{"data":[{"call_id":"a","latency_ms":-Inf}],"next_cursor":null}', "-Inf"),
    (b'\xef\xbb\xbf{"data":[],"next_cursor":null}', "byte order mark"),
    (b'{"data":[{"call_id":"a\xff"}],"next_cursor":null}', "invalid UTF-8"),
    (b'{"data":[{"call_id":"a","call_id":"b"}],"next_cursor":null}', "repeated key"),
    (b'{"data":[],"next_cursor":null}{"data":[],"next_cursor":null}', "two documents"),
    (b'{"data":[{"call_id":"a"}]}', "next_cursor missing"),
    (b'{"data":[],"next_cursor":null,"x":{"next_cursor":null}}', "null not seen at the end"),
    (b'{"next_cursor":null}', "data missing"),
    (b'{"data":{"call_id":"a"},"next_cursor":null}', "data not a list"),
    (b'[{"call_id":"a"}]', "not an object"),
    (b"", "empty"),
    (b'{"data":[{"call_id":"a"}],"next_cursor":nul', "truncated"),
])
def test_fast_reader_stands_aside_where_it_could_disagree_with_orjson(body, why):
    assert read_page_columns(body) is None, why


def test_fast_reader_reads_the_cursor():
    rows = [record("a"), record("b")]
    columns, nxt = read_page_columns(body_of(rows, "c-2"))
    assert nxt == "c-2" and len(columns) == 2
    assert read_page_columns(body_of(rows))[1] is None
    assert read_page_columns(b'{"data":[] , "next_cursor" : null }\n')[1] is None


# -- property: random mutations of simulator records ---------------------------------------------
# Values of the right JSON type for their field (the fast reader takes them) and of any type
# (it may refuse; then only the dict path runs, which the test still compares).
NUMBERS = [0, -1, 1, 7.0, 12.5, -0.0, 1e-320, 5e-324, 0.1, 4.999999999999999,
           5.000000000000001, 599, 600, 99, 2**31 - 1, 2**31, 2**53 - 1, 2**53, 2**64 - 1,
           1e300, -1e300, 123456.789]
STRINGS = ["", "x", "success", "error", "ok", "12", "é☃𝄞", 'quote " and \\ backslash',
           "},{", '"next_cursor":null}', "NaN", "Infinity", "true", "null", "\u0000\n\t",
           "2026-11-20T13:05:00Z", "2026-11-20T13:05:00.5+01:00", "2026-11-20T12:59:59Z",
           "2026-11-20T14:00:00Z", "2026-11-20T13:59:59.9999999Z", "2026-11-20",
           "2026-11-20T13:05", "2026-02-30T13:00:00Z", "2026-11-20 13:05:00Z"]
OTHERS = [True, False, [1], {"a": True}, [], {}]
FIELDS = [rule.name for rule in FIELD_RULES]


def mutate(rec, rng: random.Random, typed: bool):
    if not typed and rng.random() < 0.05:
        return rng.choice([None, "a string", 17, [rec], True])
    if not isinstance(rec, dict):
        return rec
    rec = dict(rec)
    for _ in range(rng.randint(0, 3)):
        name = rng.choice(FIELDS + ["ts", "ts", "status", "extra"])
        op = rng.random()
        if op < 0.2:
            rec.pop(name, None)
        elif op < 0.3:
            rec[name] = None
        elif name == "extra":
            rec[name] = {"nested": [rng.choice(NUMBERS + STRINGS + OTHERS)], "flag": True}
        elif not typed:
            rec[name] = rng.choice(NUMBERS + STRINGS + OTHERS)
        elif next(r for r in FIELD_RULES if r.name == name).kind == "string":
            rec[name] = rng.choice(STRINGS)
        else:
            rec[name] = rng.choice(NUMBERS)
    return rec


@pytest.fixture(scope="module")
def simulated():
    """A few thousand records of one simulated hour, 5% of them malformed by the simulator."""
    platform = Platform(SimConfig.build(None, seed=5, calls_per_hour=4000, malformed_rate=0.05,
                                        duplicate_rate=0.02, flat=True))
    served = platform.served_with_truth(START, END, now=END + timedelta(hours=1))
    assert sum(1 for s in served if s.reject_reason) > 50
    return [s.record for s in served]


def test_simulator_pages_are_the_same_on_both_paths(simulated):
    """The simulator's own malformed records (every reason it makes), page by page: with
    its wrong-typed records in, the fast reader refuses every page; without them, it takes
    every page and finds the same rejects as the dict path."""
    readable = [r for r in simulated if read_page_columns(body_of([r])) is not None]
    assert len(simulated) - len(readable) > 10
    reasons = set()
    for i in range(0, len(simulated), 500):
        assert read_page_columns(body_of(simulated[i:i + 500])) is None
    for i in range(0, len(readable), 500):
        expected, got = both_paths(body_of(readable[i:i + 500]))
        assert got is not None
        assert_same(got, expected)
        reasons |= {r["reason"] for r in expected.rejects}
    assert reasons == {"missing_field", "wrong_type", "negative_value", "out_of_range",
                       "invalid_value", "bad_timestamp", "ts_outside_window"}


def test_random_mutations_give_the_same_result_on_both_paths(simulated):
    rng = random.Random(20261120)
    fast_pages = rejected = 0
    for n in range(400):
        typed = n % 2 == 0
        start = rng.randrange(len(simulated) - 30)
        page = [mutate(r, rng, typed) for r in simulated[start:start + rng.randint(0, 30)]]
        if typed:  # drop the simulator's own wrong-typed records from the typed pages
            page = [r for r in page if read_page_columns(body_of([r])) is not None]
        options = rng.choice([{}, {"option": orjson.OPT_INDENT_2}])
        body = body_of(page, rng.choice([None, "cursor-7"]), **options)
        expected, got = both_paths(body)
        rejected += len(expected.rejects)
        if got is not None:
            fast_pages += 1
            assert_same(got, expected)
    assert fast_pages >= 150 and rejected >= 300  # the fast path was really exercised
