"""The LiteLLM spend-log source against a real Postgres holding LiteLLM's own table (built from
the schema.prisma of the installed litellm package), and the spend-disagreement metric and
rule."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from promptops.detection.rules import MetricHistory, evaluate
from promptops.detection.thresholds import load_thresholds
from promptops.errors import ConfigError
from promptops.ingest.pull import ingest_hour
from promptops.ingest.sources.litellm import COLUMNS, SpendLogSource, SpendLogUnavailable
from promptops.ingest.sources.mapping import FieldPaths, load_source_mapping
from promptops.lake.store import Lake
from promptops.metrics.hourly import compute_hourly_metrics
from promptops.metrics.pricing import load_price_table
from promptops.simulator import Platform, SimConfig
from tests.helpers import litellm_db as ldb

psycopg = pytest.importorskip("psycopg")

HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)
CLEAR_KEY = "sk-live-0123456789abcdef"


def _pg_up() -> bool:
    try:
        psycopg.connect(ldb.PG_DSN, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


pytestmark = pytest.mark.skipif(not _pg_up(), reason="no Postgres on 127.0.0.1:5432")


def sim_records(hour: datetime = HOUR, calls: int = 600) -> list[dict]:
    platform = Platform(SimConfig.build(None, seed=5, calls_per_hour=calls, malformed_rate=0.0,
                                        duplicate_rate=0.0, late_rate=0.0))
    return platform.records(hour, hour + timedelta(hours=1))


@pytest.fixture(scope="module")
def db():
    with ldb.fresh_database() as name:
        yield name


@pytest.fixture(scope="module")
def loaded(db):
    """One hour of simulator traffic as LiteLLM rows, plus rows that test the edges."""
    records = sim_records()
    rows = ldb.spend_log_rows(records, spend={r["call_id"]: 0.01 for r in records})
    base = HOUR.replace(tzinfo=None)
    odd = dict(rows[0], metadata={}, request_tags=[], team_id=None, user="")
    extras = [
        # A clear key logged by a misconfigured proxy: hashed, never kept.
        dict(odd, request_id="clear-key", api_key=CLEAR_KEY, startTime=base + timedelta(
            minutes=30), endTime=base + timedelta(minutes=30, seconds=2)),
        # No model, but the model group.
        dict(odd, request_id="group-only", model="", model_group="gpt-4o",
             startTime=base + timedelta(minutes=31), endTime=base + timedelta(minutes=31)),
        # Neither: rejected.
        dict(odd, request_id="no-model", model="", model_group="",
             startTime=base + timedelta(minutes=32), endTime=base + timedelta(minutes=32)),
        dict(odd, request_id="odd-status", status="pending",
             startTime=base + timedelta(minutes=33), endTime=base + timedelta(minutes=33)),
        dict(odd, request_id="meta-list", metadata=["x"],
             startTime=base + timedelta(minutes=34), endTime=base + timedelta(minutes=34)),
        # Anthropic cache reads and writes, as LiteLLM keeps them.
        dict(odd, request_id="cache", model="claude-3-5-sonnet", metadata={
            "additional_usage_values": {"cache_read_input_tokens": 100,
                                        "cache_creation_input_tokens": 40}},
            startTime=base + timedelta(minutes=35), endTime=base + timedelta(minutes=35)),
        # Just outside the window on both sides.
        dict(odd, request_id="before", startTime=base - timedelta(milliseconds=1),
             endTime=base),
        dict(odd, request_id="at-end", startTime=base + timedelta(hours=1),
             endTime=base + timedelta(hours=1, seconds=1)),
    ]
    # Ties on startTime: keyset pages must neither skip nor repeat them.
    ties = [dict(odd, request_id=f"tie-{i}", startTime=base + timedelta(minutes=40),
                 endTime=base + timedelta(minutes=40, seconds=1)) for i in range(9)]
    with psycopg.connect(f"{ldb.PG_DSN} dbname={db}") as conn:
        ldb.copy_rows(conn, [*rows, *extras, *ties])
    return records, rows + extras + ties


def _read_all(db: str, limit: int, mapping: FieldPaths | None = None):
    src = SpendLogSource(ldb.connector(db), mapping or load_source_mapping().litellm)
    records, rejects = [], []
    for page in src.iter_call_record_page_bodies(HOUR, HOUR + timedelta(hours=1), limit=limit):
        records += page.records()
        rejects += page.rejects
    return records, rejects


def test_table_is_litellms_own(db):
    with psycopg.connect(f"{ldb.PG_DSN} dbname={db}") as conn:
        cols = {r[0]: r[1:] for r in conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'LiteLLM_SpendLogs'")}
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'LiteLLM_SpendLogs'")}
    assert set(cols) == COLUMNS
    assert cols["startTime"] == ("timestamp without time zone", "NO")
    assert cols["metadata"] == ("jsonb", "YES") and cols["spend"][0] == "double precision"
    assert "LiteLLM_SpendLogs_startTime_request_id_idx" in indexes


def test_keyset_pages_read_the_window_exactly_once(db, loaded):
    _, rows = loaded
    base = HOUR.replace(tzinfo=None)
    inside = sorted((r["startTime"], r["request_id"]) for r in rows
                    if base <= r["startTime"] < base + timedelta(hours=1))
    records, rejects = _read_all(db, limit=7)  # small pages: many boundaries, one on the ties
    got = [(r["call_id"]) for r in records] + [r["call_id"] for r in rejects]
    assert sorted(got) == sorted(i for _, i in inside)
    assert len(got) == len(set(got))
    assert {r["call_id"]: r["reason"] for r in rejects} == {
        "no-model": "missing_field", "odd-status": "invalid_value", "meta-list": "wrong_type"}
    # The same read with big pages gives the same records (idempotent per hour).
    again, _ = _read_all(db, limit=10_000)
    assert again == records


def test_fields_map_from_columns_tags_and_metadata(db, loaded):
    sim, _ = loaded
    by_id = {r["call_id"]: r for r in _read_all(db, limit=500)[0]}
    for want in sim[:200]:
        got = by_id[want["call_id"]]
        for f in ("model", "user_id", "team", "app", "prompt_template", "prompt_version",
                  "region", "predicted_intent", "expected_intent", "prompt_tokens",
                  "completion_tokens"):
            assert got[f] == want.get(f), f
        assert got["provider"] == (want.get("provider") or None)
        assert got["status"] == want["status"]
        assert got["latency_ms"] == pytest.approx(want["latency_ms"], abs=1.0)  # ms columns
        assert got["cached_tokens"] == (want.get("cached_tokens") or None)
        assert got["source_cost_usd"] == 0.01
        assert got["api_key_hash"] == hashlib.sha256(f"sk-{want['app']}".encode()).hexdigest()
        assert got["relevance_score"] is None and got["gpu_node"] is None  # no mapping
        if want["status"] != "success":
            assert got["http_status"] == (want.get("http_status") or 500)
    assert by_id["group-only"]["model"] == "gpt-4o"
    cache = by_id["cache"]
    assert (cache["cached_tokens"], cache["cache_creation_tokens"]) == (100, 40)
    # No tags, no metadata: null, never invented.
    assert by_id["cache"]["app"] is None and by_id["cache"]["user_id"] is None


def test_clear_key_is_hashed_and_never_kept(db, loaded):
    records, rejects = _read_all(db, limit=10_000)
    rec = next(r for r in records if r["call_id"] == "clear-key")
    assert rec["api_key_hash"] == hashlib.sha256(CLEAR_KEY.encode()).hexdigest()
    assert CLEAR_KEY not in json.dumps(records) + json.dumps(rejects)


def test_mapping_overrides_and_bad_column(db, loaded):
    mapping = FieldPaths(user_id=["column.end_user", "column.team_id"],
                         app=["metadata.user_api_key_alias"], region=["metadata.tags.nope"])
    records, _ = _read_all(db, limit=10_000, mapping=mapping)
    sim = {r["call_id"]: r for r in loaded[0]}
    r = next(r for r in records if r["call_id"] in sim)
    assert r["user_id"] == sim[r["call_id"]]["team"]  # end_user is "" -> next path
    assert r["app"] == sim[r["call_id"]]["app"] and r["region"] is None
    with pytest.raises(ConfigError, match="names no readable column.*request_id"):
        SpendLogSource(ldb.connector(db), FieldPaths(app=["column.messages"]))


def test_ingest_writes_partition_and_quarantine(db, loaded, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    src = SpendLogSource(ldb.connector(db), load_source_mapping().litellm)
    result = ingest_hour(src, lake, HOUR, run_id="r1", page_size=250)
    calls = lake.read_partition("calls", HOUR)
    assert calls.num_rows == result.written == len(loaded[0]) + 3 + 9  # sim, 3 good extras, ties
    quarantine = lake.read_partition("quarantine", HOUR).to_pylist()
    assert sorted(q["call_id"] for q in quarantine) == ["meta-list", "no-model", "odd-status"]
    assert all(q["raw"] and "problem" in q["raw"] for q in quarantine)
    assert pa.compute.sum(calls.column("source_cost_usd")).as_py() == pytest.approx(
        0.01 * calls.num_rows)


def test_unreachable_database_names_the_problem_not_the_password():
    mapping = load_source_mapping().litellm
    src = SpendLogSource(lambda: psycopg.connect(
        "host=127.0.0.1 port=1 user=x password=s3cret-pw connect_timeout=2"), mapping)
    with pytest.raises(SpendLogUnavailable, match="cannot connect to the LiteLLM database") as e:
        next(iter(src.iter_call_record_page_bodies(HOUR, HOUR + timedelta(hours=1))))
    assert "s3cret-pw" not in str(e.value)


# -- the spend disagreement ---------------------------------------------------------------

def _calls_with_source_cost(factor_by_model: dict[str, float], spend_scale: float = 1.0):
    """A simulator hour as lake rows, LiteLLM's spend = our price x the model's factor."""
    from promptops.contracts.records import validate_page

    prices = load_price_table()
    records = sim_records(calls=3000)
    table = validate_page(records, HOUR, HOUR + timedelta(hours=1)).good
    prompt = table.column("prompt_tokens").to_numpy().astype(float)
    completion = table.column("completion_tokens").to_numpy().astype(float)
    cached = np.minimum(table.column("cached_tokens").fill_null(0).to_numpy(), prompt)
    ours = prices.cost(table.column("model"), prompt, completion, cached)
    factor = np.array([factor_by_model.get(m, 1.0) for m in table.column("model").to_pylist()])
    theirs = np.where(ours.priced, ours.cost * factor * spend_scale, 0.0)
    ok = np.array([s == "success" for s in table.column("status").to_pylist()])
    theirs = np.where(ok, theirs, 0.0)  # LiteLLM bills a failed call nothing
    i = table.schema.get_field_index("source_cost_usd")
    return table.set_column(i, "source_cost_usd", pa.array(theirs)), prices


def _gap_findings(metrics):
    config = load_thresholds()
    return [f for f in evaluate(config, metrics, MetricHistory.from_tables({}), HOUR)
            if f.rule == "cost_source_gap"]


def _row(metrics, metric, dim, slc):
    rows = [r for r in metrics.to_pylist()
            if (r["metric"], r["dimension"], r["slice"]) == (metric, dim, slc)]
    return rows[0] if rows else None


def test_matching_spend_has_no_gap_and_no_alert():
    calls, prices = _calls_with_source_cost({})
    metrics = compute_hourly_metrics(calls, HOUR, prices)
    overall = _row(metrics, "cost_source_gap_pct", "overall", "*")
    assert overall["value"] == pytest.approx(0.0, abs=1e-9) and overall["samples"] > 1000
    assert _row(metrics, "source_cost_usd", "overall", "*")["value"] == pytest.approx(
        _row(metrics, "cost_usd", "overall", "*")["value"], rel=0.05)  # failures differ
    assert _gap_findings(metrics) == []


def test_known_disagreement_alerts_on_the_model():
    calls, prices = _calls_with_source_cost({}, spend_scale=1.0)
    models = calls.column("model").to_pylist()
    by_cost = _row(compute_hourly_metrics(calls, HOUR, prices), "cost_usd", "model", "gpt-4o")
    assert by_cost is not None and by_cost["value"] >= 1.0, "need gpt-4o spend above the floor"
    assert "gpt-4o" in models
    calls, prices = _calls_with_source_cost({"gpt-4o": 1.05})  # LiteLLM bills 5% more
    metrics = compute_hourly_metrics(calls, HOUR, prices)
    gap = _row(metrics, "cost_source_gap_pct", "model", "gpt-4o")
    assert gap["value"] == pytest.approx(100 * 0.05 / 1.05, rel=1e-6)
    assert _row(metrics, "cost_source_gap_pct", "model", "gpt-4o-mini")["value"] == \
        pytest.approx(0.0, abs=1e-9)
    fired = {(f.labels["dimension"], f.labels["slice"]): f for f in _gap_findings(metrics)}
    assert ("model", "gpt-4o") in fired
    assert all(slc in ("gpt-4o", "*", "openai") for _, slc in fired)
    assert fired[("model", "gpt-4o")].severity == "warning"
    assert "gap between our cost and the source's 4.8%" in fired[("model", "gpt-4o")].summary


def test_gap_below_the_spend_floor_is_not_judged():
    calls, prices = _calls_with_source_cost({"gpt-4o": 1.05})
    config = load_thresholds(variable_overrides={"cost_source_gap": {"conditions": [
        {"metric": "cost_source_gap_pct", "op": ">", "value": 1.0, "unit": "pct"},
        {"metric": "cost_usd", "op": ">=", "value": 1e6, "unit": "usd"}]}})
    metrics = compute_hourly_metrics(calls, HOUR, prices)
    assert [f for f in evaluate(config, metrics, MetricHistory.from_tables({}), HOUR)
            if f.rule == "cost_source_gap"] == []


def test_platform_api_hours_have_no_source_rows():
    calls, prices = _calls_with_source_cost({})
    i = calls.schema.get_field_index("source_cost_usd")
    calls = calls.set_column(i, "source_cost_usd", pa.nulls(calls.num_rows, pa.float64()))
    metrics = compute_hourly_metrics(calls, HOUR, prices)
    assert not {"source_cost_usd", "cost_source_gap_pct"} & set(metrics.column("metric").to_pylist())
