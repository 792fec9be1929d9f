"""End to end: LiteLLM spend-log rows in a fresh Postgres database (LiteLLM's own table, from
its schema.prisma) -> the hourly DAG under dag.test() with PROMPTOPS_SOURCE=litellm -> the
lake -> metrics -> alerts: a burst of failures on one model and LiteLLM's spend 5% above
promptops' price on another."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from promptops.lake.store import Lake
from tests.helpers import ROOT
from tests.helpers import litellm_db as ldb

psycopg = pytest.importorskip("psycopg")

HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)
BURST_MODEL = "claude-3-5-sonnet"
OVERBILLED = "gpt-4o"


def _rows() -> tuple[list[dict], list[dict]]:
    """The simulator's hour as LiteLLM rows: spend = promptops' own price (LiteLLM agrees),
    except gpt-4o billed 5% more, and 60% of the burst model's calls failing."""
    from promptops.contracts.records import validate_page
    from promptops.metrics.pricing import load_price_table
    from promptops.simulator import Platform, SimConfig

    records = Platform(SimConfig.build(None, seed=9, calls_per_hour=4000, malformed_rate=0.0,
                                       duplicate_rate=0.0, late_rate=0.0)).records(
        HOUR, HOUR + timedelta(hours=1))
    rng = np.random.default_rng(1)
    for r in records:
        if r["model"] == BURST_MODEL and rng.random() < 0.6:
            r.update(status="error", http_status=503, completion_tokens=0)
    good = validate_page(records, HOUR, HOUR + timedelta(hours=1)).good
    prices = load_price_table()
    prompt = good.column("prompt_tokens").to_numpy().astype(float)
    cached = np.minimum(good.column("cached_tokens").fill_null(0).to_numpy(), prompt)
    costs = prices.cost(good.column("model"), prompt,
                        good.column("completion_tokens").to_numpy().astype(float), cached)
    spend = {}
    for cid, model, status, c, priced in zip(
            good.column("call_id").to_pylist(), good.column("model").to_pylist(),
            good.column("status").to_pylist(), costs.cost, costs.priced, strict=True):
        if priced and status == "success":
            spend[cid] = float(c) * (1.05 if model == OVERBILLED else 1.0)
    return records, ldb.spend_log_rows(records, spend)


@pytest.mark.slow
def test_litellm_rows_to_alerts_through_the_hourly_dag(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from promptops.alerts.store import AlertStore
    from promptops.settings import get_settings

    records, rows = _rows()
    with ldb.fresh_database("litellm_e2e") as db:
        with psycopg.connect(f"{ldb.PG_DSN} dbname={db}") as conn:
            ldb.copy_rows(conn, rows)
        monkeypatch.setenv("PROMPTOPS_SOURCE", "litellm")
        monkeypatch.setenv("AIRFLOW_CONN_LITELLM_DB", json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
             "schema": db}))
        monkeypatch.setenv("PROMPTOPS_LAKE_URI", f"file://{tmp_path / 'lake'}")
        monkeypatch.setenv("PROMPTOPS_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("PROMPTOPS_LATENESS_HOURS", "0")
        get_settings.cache_clear()
        try:
            dag = DagBag(dag_folder=str(ROOT / "dags")).dags["promptops_hourly"]
            run = dag.test(logical_date=HOUR + timedelta(hours=1))
            states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        finally:
            get_settings.cache_clear()
    assert run.state == "success", states
    assert run.data_interval_start == HOUR

    lake = Lake(f"file://{tmp_path / 'lake'}")
    calls = lake.read_partition("calls", HOUR)
    assert sorted(calls.column("call_id").to_pylist()) == sorted(r["call_id"] for r in records)
    assert calls.column("source_cost_usd").null_count == 0
    assert calls.column("api_key_hash").null_count == 0

    metrics = {(r["metric"], r["dimension"], r["slice"]): r
               for r in lake.read_partition("metrics", HOUR).to_pylist()}
    assert metrics[("success_rate", "model", BURST_MODEL)]["value"] < 0.5
    gap = metrics[("cost_source_gap_pct", "model", OVERBILLED)]["value"]
    assert gap == pytest.approx(100 * 0.05 / 1.05, rel=1e-6)
    assert metrics[("cost_source_gap_pct", "model", "gpt-4o-mini")]["value"] < 1e-6

    events = AlertStore(lake, scope="hourly").read_alert_log(
        HOUR, HOUR + timedelta(hours=2)).to_pylist()
    fired = [json.dumps(e, default=str) for e in events if e["event"] == "fired"]
    assert any("cost_source_gap" in e and OVERBILLED in e for e in fired), fired
    assert any("success_rate" in e and BURST_MODEL in e for e in fired), fired
    assert not any("cost_source_gap" in e and "gpt-4o-mini" in e for e in fired)
