"""Hourly metrics against values worked out by hand on a small hour of calls.

The fixture goes through the real record validation (``validate_page``) so it has the
lake's schema; the price table is a test file with round prices so every cost below can be
checked with pencil and paper.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from promptops.contracts import metric_table as mt
from promptops.contracts.records import CALLS_SCHEMA, validate_page
from promptops.lake.store import Lake
from promptops.metrics.hourly import (
    INPUT_COLUMNS,
    MissingCallsPartition,
    compute_hourly_metrics,
    hourly_metrics_for_lake,
    metrics_summary,
    write_hourly_metrics,
)
from promptops.metrics.pricing import load_price_table

HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)
END = HOUR + timedelta(hours=1)

PRICES = {
    "gpt-4o": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
               "cache_read_input_token_cost": 5e-07, "litellm_provider": "openai"},
    # No cache price: cached tokens cost the input price.
    "claude-3-haiku": {"input_cost_per_token": 1e-07, "output_cost_per_token": 1e-06,
                       "litellm_provider": "anthropic"},
    "llama-3-70b": {"input_cost_per_token": 1e-07, "output_cost_per_token": 1e-07,
                    "litellm_provider": "self-hosted"},
}

_FIELDS = ("user_id", "team", "app", "prompt_template", "prompt_version", "model", "provider",
           "region", "status", "latency_ms", "prompt_tokens", "completion_tokens",
           "cached_tokens", "predicted_intent", "expected_intent", "relevance_score", "gpu_node")
#: ts offset "MM:SS", then _FIELDS. None = field absent.
ROWS = [
    ("00:10", "u1", "a", "chat", "t1", "v1", "gpt-4o", "openai", "us", "success", 100.0, 1000, 100,
     400, "billing", "billing", 4.0, None),
    ("00:20", "u1", "a", "chat", "t1", "v1", "gpt-4o", "openai", "us", "success", 200.0, 2000, 200,
     None, "billing", "refund", None, None),
    ("00:50", "u1", "a", "chat", "t1", "v2", "gpt-4o", "openai", "eu", "error", 300.0, 500, 0,
     None, "refund", None, None, None),
    ("05:00", "u2", "b", "chat", "t1", "v2", "claude-3-haiku", "anthropic", "eu", "success",
     400.0, 100, 50, 100, "refund", "refund", 2.0, None),
    ("06:00", "u2", "b", "code", None, "v9", "llama-3-70b", "self-hosted", "us", "success",
     500.0, 300, 300, None, None, "billing", None, "node-1"),
    ("59:59", "u3", None, "code", "t2", "v1", "mystery-model", None, "us", "success", 600.0,
     1000, 1000, None, "smalltalk", None, 5.0, None),
    ("59:00", "u3", None, "code", "t2", None, "mystery-model", None, None, "error", 700.0, 10, 0,
     None, None, None, None, None),
    ("30:00", "u4", "a", "chat", "t1", "v1", "gpt-4o", "openai", "us", "success", 800.0, 10000,
     1000, None, "billing", "account_access", None, None),
]

# Per-record costs, by hand.
COST = [
    600 * 1e-06 + 400 * 5e-07 + 100 * 2e-06,  # cached tokens at the cache price
    2000 * 1e-06 + 200 * 2e-06,
    500 * 1e-06,
    100 * 1e-07 + 50 * 1e-06,  # all 100 prompt tokens cached, billed at the input price
    300 * 1e-07 + 300 * 1e-07,
    None, None,  # mystery-model: unpriced
    10000 * 1e-06 + 1000 * 2e-06,
]


def records(rows=ROWS) -> list[dict]:
    out = []
    for i, (ts, *values) in enumerate(rows):
        rec = {"call_id": f"c{i}", "ts": f"2026-11-20T13:{ts}Z"}
        rec.update({k: v for k, v in zip(_FIELDS, values, strict=True) if v is not None})
        out.append(rec)
    return out


def calls_table(rows=ROWS) -> pa.Table:
    page = validate_page(records(rows), HOUR, END)
    assert not page.rejects, page.rejects
    return page.good


@pytest.fixture(scope="module")
def prices(tmp_path_factory):
    path = tmp_path_factory.mktemp("prices") / "prices.json"
    path.write_text(json.dumps(PRICES))
    return load_price_table(path, use_env=False)


@pytest.fixture(scope="module")
def metrics(prices) -> pa.Table:
    return compute_hourly_metrics(calls_table(), HOUR, prices, top_n_users=1)


def rows_of(table: pa.Table) -> dict[tuple[str, str, str], dict]:
    return {(r["metric"], r["dimension"], r["slice"]): r for r in table.to_pylist()}


@pytest.fixture(scope="module")
def by_key(metrics):
    return rows_of(metrics)


def value(by_key, metric, dimension=mt.OVERALL, slice_=mt.ALL):
    return by_key[(metric, dimension, slice_)]["value"]


def samples(by_key, metric, dimension=mt.OVERALL, slice_=mt.ALL):
    return by_key[(metric, dimension, slice_)]["samples"]


def slices(by_key, metric, dimension):
    return sorted(k[2] for k in by_key if k[0] == metric and k[1] == dimension)


# -- the table ------------------------------------------------------------------------------

def test_schema_hour_and_no_nan_pretending_to_be_data(metrics):
    assert metrics.schema == mt.METRICS_SCHEMA
    assert set(metrics.column("hour").to_pylist()) == {HOUR}
    assert not pc.any(pc.is_nan(metrics.column("value"))).as_py()
    # One row per (metric, dimension, slice).
    keys = list(zip(*(metrics.column(c).to_pylist() for c in ("metric", "dimension", "slice")),
                    strict=True))
    assert len(keys) == len(set(keys))


def test_requests_errors_and_rates(by_key):
    assert value(by_key, mt.REQUESTS) == 8
    assert value(by_key, mt.ERRORS) == 2
    assert value(by_key, mt.SUCCESS_RATE) == pytest.approx(6 / 8)
    assert value(by_key, mt.ERROR_RATE) == pytest.approx(2 / 8)
    assert samples(by_key, mt.SUCCESS_RATE) == 8
    assert value(by_key, mt.REQUESTS, "model", "gpt-4o") == 4
    assert value(by_key, mt.SUCCESS_RATE, "model", "gpt-4o") == pytest.approx(3 / 4)
    assert value(by_key, mt.ERRORS, "region", "eu") == 1
    assert value(by_key, mt.SUCCESS_RATE, "region", "(none)") == 0.0


def test_latency_mean_and_exact_percentiles(by_key):
    assert value(by_key, mt.LATENCY_MEAN_MS) == pytest.approx(450.0)
    # 100..800 in steps of 100: position q * (n - 1), linear interpolation.
    assert value(by_key, mt.LATENCY_P50_MS) == pytest.approx(450.0)
    assert value(by_key, mt.LATENCY_P95_MS) == pytest.approx(765.0)
    assert value(by_key, mt.LATENCY_P99_MS) == pytest.approx(793.0)
    # gpt-4o: 100, 200, 300, 800.
    assert value(by_key, mt.LATENCY_P50_MS, "model", "gpt-4o") == pytest.approx(250.0)
    assert value(by_key, mt.LATENCY_P95_MS, "model", "gpt-4o") == pytest.approx(725.0)
    # A slice of one record: every percentile is that record.
    assert value(by_key, mt.LATENCY_P99_MS, "model", "claude-3-haiku") == 400.0
    assert samples(by_key, mt.LATENCY_P95_MS, "model", "gpt-4o") == 4


def test_tokens(by_key):
    assert value(by_key, mt.PROMPT_TOKENS) == 1000 + 2000 + 500 + 100 + 300 + 1000 + 10 + 10000
    assert value(by_key, mt.COMPLETION_TOKENS) == 100 + 200 + 0 + 50 + 300 + 1000 + 0 + 1000
    assert value(by_key, mt.CACHED_TOKENS) == 400 + 100
    assert value(by_key, mt.TOTAL_TOKENS) == 14910 + 2650
    assert value(by_key, mt.CACHED_TOKENS, "model", "claude-3-haiku") == 100


def test_cost_with_cached_tokens_and_an_unpriced_model(by_key):
    priced = [c for c in COST if c is not None]
    assert value(by_key, mt.COST_USD) == pytest.approx(sum(priced))
    assert samples(by_key, mt.COST_USD) == 6  # priced requests
    assert value(by_key, mt.UNPRICED_REQUESTS) == 2
    assert value(by_key, mt.UNPRICED_TOKENS) == (1000 + 1000) + (10 + 0)
    assert value(by_key, mt.COST_USD, "model", "gpt-4o") == pytest.approx(
        COST[0] + COST[1] + COST[2] + COST[7])
    assert value(by_key, mt.COST_USD, "model", "claude-3-haiku") == pytest.approx(COST[3])
    # All unpriced: the cost is unknown (null), not 0.
    row = by_key[(mt.COST_USD, "model", "mystery-model")]
    assert row["value"] is None and row["samples"] == 0
    assert value(by_key, mt.UNPRICED_REQUESTS, "model", "mystery-model") == 2
    # A mixed slice: the priced part's cost, and what is missing beside it.
    assert value(by_key, mt.COST_USD, "app", "code") == pytest.approx(COST[4])
    assert value(by_key, mt.UNPRICED_REQUESTS, "app", "code") == 2
    assert value(by_key, mt.UNPRICED_TOKENS, "app", "code") == 2010
    # Slices without unpriced records carry no unpriced rows; overall always does.
    assert (mt.UNPRICED_REQUESTS, "app", "chat") not in by_key
    assert slices(by_key, mt.UNPRICED_REQUESTS, "model") == ["mystery-model"]


def test_dimension_slices_none_and_template_naming(by_key):
    assert slices(by_key, mt.REQUESTS, "template") == ["(none)", "t1@v1", "t1@v2", "t2@(none)",
                                                       "t2@v1"]
    assert value(by_key, mt.REQUESTS, "template", "t1@v1") == 3
    assert value(by_key, mt.REQUESTS, "template", "(none)") == 1  # version v9 without template
    assert slices(by_key, mt.REQUESTS, "team") == ["(none)", "a", "b"]
    assert value(by_key, mt.REQUESTS, "team", "(none)") == 2
    assert slices(by_key, mt.REQUESTS, "provider") == ["(none)", "anthropic", "openai",
                                                       "self-hosted"]
    assert slices(by_key, mt.REQUESTS, "gpu_node") == ["(none)", "node-1"]
    assert slices(by_key, mt.REQUESTS, "region") == ["(none)", "eu", "us"]


def test_users_top_n_by_cost_and_by_calls_rest_is_other(by_key):
    # top_n_users=1: u1 has the most calls (3), u4 the highest cost (one big call).
    assert slices(by_key, mt.REQUESTS, "user") == ["other", "u1", "u4"]
    assert value(by_key, mt.REQUESTS, "user", "other") == 4
    assert value(by_key, mt.COST_USD, "user", "other") == pytest.approx(COST[3] + COST[4])
    assert value(by_key, mt.UNPRICED_REQUESTS, "user", "other") == 2


def test_users_all_named_when_n_is_large(prices):
    by_key = rows_of(compute_hourly_metrics(calls_table(), HOUR, prices, top_n_users=20))
    assert slices(by_key, mt.REQUESTS, "user") == ["u1", "u2", "u3", "u4"]


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def test_intent_accuracy_with_wilson_interval(by_key):
    # Labelled: c0 right, c1 wrong, c3 right, c4 no prediction (wrong), c7 wrong.
    row = by_key[(mt.INTENT_ACCURACY, mt.OVERALL, mt.ALL)]
    assert row["value"] == pytest.approx(2 / 5)
    assert row["samples"] == 5
    lower, upper = wilson(2, 5)
    assert row["lower"] == pytest.approx(lower) and row["upper"] == pytest.approx(upper)
    assert value(by_key, mt.INTENT_ACCURACY, "model", "gpt-4o") == pytest.approx(1 / 3)
    assert value(by_key, mt.INTENT_ACCURACY, "model", "claude-3-haiku") == 1.0
    assert by_key[(mt.INTENT_ACCURACY, "model", "claude-3-haiku")]["upper"] == pytest.approx(1.0)


def test_slices_without_labelled_records_have_no_accuracy_row(by_key):
    assert (mt.REQUESTS, "model", "mystery-model") in by_key
    assert (mt.INTENT_ACCURACY, "model", "mystery-model") not in by_key
    assert (mt.INTENT_ACCURACY, "template", "t2@v1") not in by_key


def test_per_intent_precision_recall_f1(by_key):
    # Labelled (expected -> predicted): billing->billing, refund->billing, refund->refund,
    # billing->(none), account_access->billing.
    assert slices(by_key, mt.INTENT_RECALL, "intent") == ["account_access", "billing", "refund"]
    assert value(by_key, mt.INTENT_PRECISION, "intent", "billing") == pytest.approx(1 / 3)
    assert samples(by_key, mt.INTENT_PRECISION, "intent", "billing") == 3
    assert value(by_key, mt.INTENT_RECALL, "intent", "billing") == pytest.approx(1 / 2)
    assert value(by_key, mt.INTENT_F1, "intent", "billing") == pytest.approx(0.4)
    assert value(by_key, mt.INTENT_PRECISION, "intent", "refund") == 1.0
    assert value(by_key, mt.INTENT_RECALL, "intent", "refund") == pytest.approx(0.5)
    assert value(by_key, mt.INTENT_F1, "intent", "refund") == pytest.approx(2 / 3)
    # Never predicted: precision unknown (null, 0 samples), recall 0.
    row = by_key[(mt.INTENT_PRECISION, "intent", "account_access")]
    assert row["value"] is None and row["samples"] == 0
    assert value(by_key, mt.INTENT_RECALL, "intent", "account_access") == 0.0
    # Smalltalk was predicted only on an unlabelled record: not part of the labelled set.
    assert (mt.INTENT_RECALL, "intent", "smalltalk") not in by_key


def test_confusion_matrix_cells(by_key):
    cells = {k[2]: (r["value"], r["samples"]) for k, r in by_key.items()
             if k[0] == mt.INTENT_CONFUSION}
    assert cells == {
        "account_access|account_access": (0, 1), "account_access|billing": (1, 1),
        "account_access|refund": (0, 1), "account_access|(none)": (0, 1),
        "billing|account_access": (0, 2), "billing|billing": (1, 2),
        "billing|refund": (0, 2), "billing|(none)": (1, 2),
        "refund|account_access": (0, 2), "refund|billing": (1, 2),
        "refund|refund": (1, 2), "refund|(none)": (0, 2),
    }


def test_relevance_mean_and_coverage(by_key):
    assert value(by_key, mt.RELEVANCE_MEAN) == pytest.approx((4.0 + 2.0 + 5.0) / 3)
    assert samples(by_key, mt.RELEVANCE_MEAN) == 3
    assert value(by_key, mt.RELEVANCE_COVERAGE) == pytest.approx(3 / 8)
    assert samples(by_key, mt.RELEVANCE_COVERAGE) == 8
    assert value(by_key, mt.RELEVANCE_MEAN, "model", "claude-3-haiku") == 2.0
    # No scored record: coverage 0, and no mean at all.
    assert value(by_key, mt.RELEVANCE_COVERAGE, "model", "llama-3-70b") == 0.0
    assert (mt.RELEVANCE_MEAN, "model", "llama-3-70b") not in by_key


def test_peak_calls_per_minute(by_key):
    # u1: three calls in minute 00; u3: two in minute 59; u2 and u4 one a minute.
    assert value(by_key, mt.PEAK_CALLS_PER_MINUTE) == 3
    assert value(by_key, mt.PEAK_CALLS_PER_MINUTE, "user", "u1") == 3
    assert value(by_key, mt.PEAK_CALLS_PER_MINUTE, "user", "u4") == 1
    assert value(by_key, mt.PEAK_CALLS_PER_MINUTE, "user", "other") == 2  # u3, not u2 + u3
    assert (mt.PEAK_CALLS_PER_MINUTE, "model", "gpt-4o") not in by_key


def test_empty_hour_gives_zero_counts_and_nothing_else(prices):
    table = compute_hourly_metrics(CALLS_SCHEMA.empty_table(), HOUR, prices)
    assert table.schema == mt.METRICS_SCHEMA
    by_key = rows_of(table)
    assert {k[1] for k in by_key} == {mt.OVERALL}
    assert value(by_key, mt.REQUESTS) == 0
    assert value(by_key, mt.COST_USD) == 0 and samples(by_key, mt.COST_USD) == 0
    assert value(by_key, mt.UNPRICED_REQUESTS) == 0
    for metric in (mt.SUCCESS_RATE, mt.ERROR_RATE, mt.LATENCY_MEAN_MS, mt.LATENCY_P95_MS,
                   mt.INTENT_ACCURACY, mt.RELEVANCE_MEAN, mt.RELEVANCE_COVERAGE):
        assert (metric, mt.OVERALL, mt.ALL) not in by_key
    assert metrics_summary(table) == {"hour": HOUR.isoformat(), "rows": table.num_rows,
                                      "requests": 0, "cost_usd": 0.0, "unpriced_requests": 0,
                                      "unpriced_models": []}


def test_hour_with_no_labelled_or_scored_records(prices):
    rows = [r[:15] + (None, None) + r[17:] for r in ROWS]  # drop expected intent and score
    by_key = rows_of(compute_hourly_metrics(calls_table(rows), HOUR, prices))
    assert not [k for k in by_key if k[0].startswith("intent_")]
    assert (mt.RELEVANCE_MEAN, mt.OVERALL, mt.ALL) not in by_key
    assert value(by_key, mt.RELEVANCE_COVERAGE) == 0.0


def test_all_records_unpriced(prices):
    by_key = rows_of(compute_hourly_metrics(calls_table(ROWS[5:7]), HOUR, prices))
    assert by_key[(mt.COST_USD, mt.OVERALL, mt.ALL)]["value"] is None
    assert value(by_key, mt.UNPRICED_REQUESTS) == 2


def test_a_partition_with_many_row_groups_gives_the_same_table(tmp_path, prices, metrics):
    # Row groups written page by page carry their own dictionaries, as ingest writes them.
    lake = Lake(f"file://{tmp_path}")
    calls = calls_table()
    with lake.partition_writer("calls", HOUR, CALLS_SCHEMA) as writer:
        for first in range(0, calls.num_rows, 3):
            writer.write(calls.slice(first, 3))
    read = lake.read_partition("calls", HOUR, columns=list(INPUT_COLUMNS))
    assert read.column("model").num_chunks > 1
    assert compute_hourly_metrics(read, HOUR, prices, top_n_users=1).equals(metrics)


def test_rerun_gives_an_identical_table(prices, metrics):
    assert compute_hourly_metrics(calls_table(), HOUR, prices, top_n_users=1).equals(metrics)


def test_missing_required_column_is_named(prices):
    with pytest.raises(ValueError, match="lacks the required column.* latency_ms"):
        compute_hourly_metrics(calls_table().drop_columns(["latency_ms"]), HOUR, prices)


def test_matches_a_pandas_reference_on_random_calls(prices):
    """Many groups and ties: sums, means and percentiles per slice against pandas."""
    rng = np.random.default_rng(7)
    n = 3000
    models = np.array(["gpt-4o", "claude-3-haiku", "llama-3-70b", "mystery-model"])
    frame = pd.DataFrame({
        "call_id": [f"c{i}" for i in range(n)],
        "ts": pd.to_datetime(HOUR) + pd.to_timedelta(rng.integers(0, 3_600_000, n), unit="ms"),
        "user_id": [f"user-{u:03d}" for u in rng.integers(0, 300, n)],
        "app": rng.choice(["a", "b", "c"], n),
        "model": rng.choice(models, n),
        "region": rng.choice(["r1", "r2", None], n),
        "status": rng.choice(["success", "error"], n, p=[0.9, 0.1]),
        "latency_ms": rng.integers(1, 400, n).astype(float),  # many ties
        "prompt_tokens": rng.integers(0, 5000, n),
        "completion_tokens": rng.integers(0, 500, n),
    })
    calls = pa.Table.from_pandas(frame, preserve_index=False)
    calls = calls.cast(pa.schema([CALLS_SCHEMA.field(c) for c in calls.column_names]))
    by_key = rows_of(compute_hourly_metrics(calls, HOUR, prices, top_n_users=300))

    frame["region"] = frame["region"].fillna("(none)")
    frame["cost"] = prices.cost(frame["model"].to_numpy(object), frame["prompt_tokens"],
                                frame["completion_tokens"]).cost
    for dimension, column in (("model", "model"), ("region", "region"), ("user", "user_id")):
        grouped = frame.groupby(column)
        for name, group in grouped:
            assert value(by_key, mt.REQUESTS, dimension, name) == len(group)
            assert value(by_key, mt.ERRORS, dimension, name) == (group["status"] == "error").sum()
            assert value(by_key, mt.LATENCY_MEAN_MS, dimension, name) == pytest.approx(
                group["latency_ms"].mean())
            for metric, q in ((mt.LATENCY_P50_MS, 0.5), (mt.LATENCY_P95_MS, 0.95),
                              (mt.LATENCY_P99_MS, 0.99)):
                assert value(by_key, metric, dimension, name) == pytest.approx(
                    np.percentile(group["latency_ms"], q * 100), rel=1e-12)
            assert value(by_key, mt.PROMPT_TOKENS, dimension, name) == group[
                "prompt_tokens"].sum()
            cost = group["cost"].dropna()
            row = by_key[(mt.COST_USD, dimension, name)]
            if len(cost):
                assert row["value"] == pytest.approx(cost.sum())
            else:
                assert row["value"] is None
    peak = frame.assign(minute=frame["ts"].dt.floor("min")).groupby(
        ["user_id", "minute"]).size().groupby("user_id").max()
    for user, expected in peak.items():
        assert value(by_key, mt.PEAK_CALLS_PER_MINUTE, "user", user) == expected
    assert value(by_key, mt.PEAK_CALLS_PER_MINUTE) == peak.max()


def test_every_estimate_carries_its_95_percent_sampling_interval(prices):
    """lower/upper per slice against scipy on the slice's own records: Wilson for rates,
    Student-t for means, order statistics for percentiles, exact Poisson for counts and
    peaks, compound Poisson for token and cost sums."""
    from scipy import stats as sps

    rng = np.random.default_rng(11)
    n = 2000
    frame = pd.DataFrame({
        "call_id": [f"c{i}" for i in range(n)],
        "ts": pd.to_datetime(HOUR) + pd.to_timedelta(rng.integers(0, 3_600_000, n), unit="ms"),
        "user_id": rng.choice(["u1", "u2"], n), "app": "a",
        "model": rng.choice(["gpt-4o", "claude-3-haiku", "llama-3-70b"], n, p=[0.7, 0.27, 0.03]),
        "status": rng.choice(["success", "error"], n, p=[0.97, 0.03]),
        "latency_ms": rng.lognormal(6.5, 0.8, n),
        "prompt_tokens": rng.integers(0, 5000, n), "completion_tokens": rng.integers(0, 500, n),
    })
    calls = pa.Table.from_pandas(frame, preserve_index=False)
    calls = calls.cast(pa.schema([CALLS_SCHEMA.field(c) for c in calls.column_names]))
    by_key = rows_of(compute_hourly_metrics(calls, HOUR, prices))

    def bounds(metric, name):
        row = by_key[(metric, "model", name)]
        return row["lower"], row["upper"]

    for name, group in frame.groupby("model"):
        k, errors = len(group), int((group["status"] == "error").sum())
        lat = np.sort(group["latency_ms"].to_numpy())
        assert bounds(mt.SUCCESS_RATE, name) == pytest.approx(wilson(k - errors, k))
        lo, hi = bounds(mt.ERROR_RATE, name)
        assert (lo, hi) == pytest.approx((1 - wilson(k - errors, k)[1], 1 - wilson(k - errors, k)[0]))
        half = sps.t.ppf(0.975, k - 1) * lat.std(ddof=1) / math.sqrt(k)
        assert bounds(mt.LATENCY_MEAN_MS, name) == pytest.approx((lat.mean() - half,
                                                                  lat.mean() + half))
        r_lo, r_hi = sps.binom.ppf(0.025, k, 0.95), sps.binom.ppf(0.975, k, 0.95)
        assert bounds(mt.LATENCY_P95_MS, name) == (lat[int(r_lo) - 1], lat[min(int(r_hi), k - 1)])
        lo, hi = bounds(mt.LATENCY_P95_MS, name)
        assert lo <= value(by_key, mt.LATENCY_P95_MS, "model", name) <= hi
        assert bounds(mt.REQUESTS, name) == pytest.approx(
            (sps.chi2.ppf(0.025, 2 * k) / 2, sps.chi2.ppf(0.975, 2 * k + 2) / 2))
        lo, hi = bounds(mt.ERRORS, name)
        assert lo < errors < hi
        tokens = (group["prompt_tokens"] + group["completion_tokens"]).to_numpy(float)
        half = 1.959964 * math.sqrt((tokens ** 2).sum())
        assert bounds(mt.TOTAL_TOKENS, name) == pytest.approx(
            (max(tokens.sum() - half, 0), tokens.sum() + half), rel=1e-6)
    for user in ("u1", "u2"):
        row = by_key[(mt.PEAK_CALLS_PER_MINUTE, "user", user)]
        assert row["lower"] < row["value"] < row["upper"]


def test_latency_trimmed_mean_matches_scipy_and_its_interval_covers(prices):
    """The robust latency location: scipy's 10% trim_mean per slice, and on lognormal
    latencies its Tukey-McLaughlin interval covers the true trimmed mean about 95% of the
    time (each model slice of one table is one sample)."""
    from scipy import stats as sps

    from promptops.metrics.hourly import LATENCY_TRIMMED_MEAN_MS

    rng = np.random.default_rng(12)
    slices, calls = 400, 60
    n = slices * calls
    frame = pd.DataFrame({
        "call_id": [f"c{i}" for i in range(n)],
        "ts": pd.to_datetime(HOUR) + pd.to_timedelta(rng.integers(0, 3_600_000, n), unit="ms"),
        "user_id": "u", "app": "a", "model": np.repeat([f"m{i:03d}" for i in range(slices)],
                                                       calls),
        "status": "success", "latency_ms": rng.lognormal(6.5, 1.0, n),
        "prompt_tokens": 10, "completion_tokens": 5,
    })
    calls_t = pa.Table.from_pandas(frame, preserve_index=False)
    calls_t = calls_t.cast(pa.schema([CALLS_SCHEMA.field(c) for c in calls_t.column_names]))
    by_key = rows_of(compute_hourly_metrics(calls_t, HOUR, prices))
    # The population's 10% trimmed mean, from a very large sample.
    truth = sps.trim_mean(np.random.default_rng(0).lognormal(6.5, 1.0, 2_000_000), 0.1)
    hits = 0
    for name, group in frame.groupby("model"):
        row = by_key[(LATENCY_TRIMMED_MEAN_MS, "model", name)]
        assert row["value"] == pytest.approx(sps.trim_mean(group["latency_ms"], 0.1))
        assert row["samples"] == calls and row["lower"] < row["value"] < row["upper"]
        hits += row["lower"] <= truth <= row["upper"]
    assert 0.92 <= hits / slices <= 0.98
    # Much narrower than the plain mean's interval on the same heavy-tailed calls.
    widths = [(by_key[(m, "overall", "*")]["upper"] - by_key[(m, "overall", "*")]["lower"])
              for m in (LATENCY_TRIMMED_MEAN_MS, mt.LATENCY_MEAN_MS)]
    assert widths[0] < 0.7 * widths[1]


# -- lake and XCom --------------------------------------------------------------------------

def test_summary_for_xcom(metrics):
    summary = metrics_summary(metrics)
    assert summary["hour"] == HOUR.isoformat()
    assert summary["rows"] == metrics.num_rows
    assert summary["requests"] == 8
    assert summary["cost_usd"] == pytest.approx(sum(c for c in COST if c is not None))
    assert summary["unpriced_requests"] == 2
    assert summary["unpriced_models"] == ["mystery-model"]
    json.dumps(summary)  # XCom-safe


def test_write_read_and_the_lake_entry_point(tmp_path, prices, metrics):
    lake = Lake(f"file://{tmp_path}")
    with pytest.raises(MissingCallsPartition, match="no calls partition for 2026-11-20T13:00"):
        hourly_metrics_for_lake(lake, HOUR, prices, top_n_users=1)

    lake.write_partition("calls", HOUR, calls_table())
    summary = hourly_metrics_for_lake(lake, HOUR + timedelta(minutes=30), prices,
                                      top_n_users=1)
    assert summary["uri"].endswith("metrics/date=2026-11-20/hour=13/part-00000.parquet")
    assert summary["requests"] == 8
    assert lake.read_partition(mt.METRICS, HOUR).equals(metrics)

    info = write_hourly_metrics(lake, HOUR, metrics.slice(0, 5))
    assert info.rows == 5 and lake.read_partition(mt.METRICS, HOUR).num_rows == 5
    with pytest.raises(ValueError, match="not in METRICS_SCHEMA"):
        write_hourly_metrics(lake, HOUR, metrics.drop_columns(["lower"]))
