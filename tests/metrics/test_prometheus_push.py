"""Metrics out through Debian's real Pushgateway and Prometheus: an hour of simulator calls,
pushed, scraped and queried back through Prometheus' HTTP API, to the cent."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from promptops.contracts.records import validate_page
from promptops.metrics.hourly import compute_hourly_metrics
from promptops.metrics.pricing import load_price_table
from promptops.metrics.prometheus import hour_registry, push, push_hour
from promptops.simulator.config import SimConfig
from promptops.simulator.platform import Platform
from tests.helpers.prometheus import free_port, prometheus_scraping, pushgateway, query

HOUR = datetime(2026, 9, 7, 14, tzinfo=UTC)


@pytest.fixture(scope="module")
def metrics_table():
    platform = Platform(SimConfig.build(calls_per_hour=3000, seed=5), start=HOUR)
    records = platform.records(HOUR, HOUR + timedelta(hours=1), now=HOUR + timedelta(hours=2))
    calls = validate_page(records, HOUR, HOUR + timedelta(hours=1)).good
    return compute_hourly_metrics(calls, HOUR, load_price_table())


def value_of(table, metric: str, dimension: str = "overall") -> float:
    rows = [r for r in table.to_pylist()
            if r["metric"] == metric and r["dimension"] == dimension]
    return rows[0]["value"]


def test_prometheus_answers_the_hours_cost_to_the_cent(metrics_table, tmp_path):
    with pushgateway() as gateway:
        assert push_hour(metrics_table, HOUR, gateway, dag="promptops_hourly") is True
        target = gateway.removeprefix("http://")
        with prometheus_scraping(target, tmp_path) as prom:
            got = query(prom, 'promptops_hour_cost_usd{dimension="overall",'
                              'dag="promptops_hourly",scope="hourly",job="promptops"}')
            assert len(got) == 1
            assert round(float(got[0]["value"][1]), 2) == \
                round(value_of(metrics_table, "cost_usd"), 2)
            p95 = query(prom, 'promptops_hour_latency_seconds{dimension="overall",'
                              'quantile="0.95"}')
            assert float(p95[0]["value"][1]) == pytest.approx(
                value_of(metrics_table, "latency_p95_ms") / 1000)
            start = query(prom, "promptops_hour_start_timestamp_seconds")
            assert float(start[0]["value"][1]) == HOUR.timestamp()
        # A second push of the same DAG and scope replaces the group, not adds to it.
        later = HOUR + timedelta(hours=1)
        assert push_hour(metrics_table, later, gateway, dag="promptops_hourly") is True
        text = httpx.get(f"{gateway}/metrics", timeout=5).text
        stamps = [line for line in text.splitlines()
                  if line.startswith("promptops_hour_start_timestamp_seconds{")]
        assert len(stamps) == 1
        assert float(stamps[0].rsplit(" ", 1)[1]) == later.timestamp()


def test_labels_are_bounded_to_the_configured_dimensions(metrics_table):
    registry = hour_registry(metrics_table, HOUR)
    labels = {(s.labels.get("dimension"), s.labels.get("slice"))
              for m in registry.collect() for s in m.samples}
    dims = {d for d, _ in labels if d}
    assert dims <= {"overall", "model", "provider", "app", "team", "region", "template"}
    assert "user" not in dims and not any("call" in (s or "") for _, s in labels)
    names = {m.name for m in registry.collect()}
    assert {"promptops_hour_cost_usd", "promptops_hour_latency_seconds",
            "promptops_hour_success_ratio"} <= names


def test_an_unreachable_gateway_warns_without_its_credentials_and_never_raises(
        metrics_table, caplog):
    url = f"http://pusher:s3cret@127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="promptops.metrics.prometheus"):
        assert push(hour_registry(metrics_table, HOUR), url,
                    grouping_key={"dag": "promptops_hourly", "scope": "hourly"},
                    timeout_s=2) is False
    assert "not pushed" in caplog.text and "127.0.0.1" in caplog.text
    assert "s3cret" not in caplog.text
    assert push_hour(metrics_table, HOUR, None, dag="promptops_hourly") is None


def test_the_hourly_pipeline_pushes_the_hour_only_when_a_gateway_is_set(
        metrics_table, tmp_path, monkeypatch):
    from promptops.lake.store import Lake
    from promptops.metrics.hourly import write_hourly_metrics
    from promptops.pipelines.hourly import push_hour_metrics
    from promptops.settings import get_settings

    lake = Lake(f"file://{tmp_path / 'lake'}")
    write_hourly_metrics(lake, HOUR, metrics_table)
    monkeypatch.delenv("PROMPTOPS_PUSHGATEWAY_URL", raising=False)
    get_settings.cache_clear()
    assert push_hour_metrics(lake, HOUR) is None
    with pushgateway() as gateway:
        monkeypatch.setenv("PROMPTOPS_PUSHGATEWAY_URL", gateway)
        get_settings.cache_clear()
        try:
            assert push_hour_metrics(lake, HOUR) is True
            assert push_hour_metrics(lake, HOUR + timedelta(hours=5)) is False  # no partition
        finally:
            get_settings.cache_clear()
        text = httpx.get(f"{gateway}/metrics", timeout=5).text
    assert 'promptops_hour_requests{dag="promptops_hourly",dimension="overall"' in text


def test_baseline_bands_go_out_beside_the_hours_metrics(metrics_table):
    import pyarrow as pa

    bands = pa.table({"metric": ["cost_usd", "latency_p95_ms", "requests"],
                      "dimension": ["overall", "overall", "user"],
                      "slice": ["*", "*", "user-042"],
                      "expected": [12.5, 2500.0, 40.0], "lower": [10.0, 1800.0, 0.0],
                      "upper": [15.0, None, 90.0]})
    registry = hour_registry(metrics_table, HOUR, bands=bands)
    got = {(s.name, s.labels["metric"]): s.value for m in registry.collect()
           for s in m.samples if s.name.startswith("promptops_baseline_")}
    assert got == {("promptops_baseline_expected", "cost_usd"): 12.5,
                   ("promptops_baseline_lower", "cost_usd"): 10.0,
                   ("promptops_baseline_upper", "cost_usd"): 15.0,
                   ("promptops_baseline_expected", "latency_p95_ms"): 2.5,  # seconds
                   ("promptops_baseline_lower", "latency_p95_ms"): 1.8}


def test_open_incidents_count_once_at_their_worst_severity():
    from promptops.metrics.prometheus import alerts_registry, push_alerts

    outcome = {"firing": [
        {"severity": "critical", "incident_id": "a", "fingerprint": "1"},
        {"severity": "warning", "incident_id": "a", "fingerprint": "2"},
        {"severity": "warning", "incident_id": "b", "fingerprint": "3"},
        {"severity": "warning", "incident_id": "b", "fingerprint": "4"}]}
    samples = {(s.name, s.labels["severity"]): s.value
               for m in alerts_registry(outcome).collect() for s in m.samples}
    assert samples[("promptops_open_incidents", "critical")] == 1
    assert samples[("promptops_open_incidents", "warning")] == 1
    assert samples[("promptops_firing_alerts", "warning")] == 3
    assert samples[("promptops_open_incidents", "info")] == 0
    with pushgateway() as gateway:
        assert push_alerts(outcome, gateway, dag="promptops_health", scope="health") is True
        text = httpx.get(f"{gateway}/metrics", timeout=5).text
    assert 'promptops_open_incidents{dag="promptops_health"' in text
    assert 'part="alerts"' in text


def test_the_health_sensors_values_go_out_in_base_units_without_users():
    from promptops.metrics.health import recent_call_rows
    from promptops.metrics.prometheus import health_registry, push_health

    at = HOUR + timedelta(minutes=35)
    platform = Platform(SimConfig.build(calls_per_hour=3000, seed=5), start=HOUR)
    records = platform.records(HOUR, at, now=at)
    calls = validate_page(records, HOUR, at).good
    table = recent_call_rows(calls, at, minutes=5)
    samples = {(s.name, s.labels.get("quantile", "")): s.value
               for m in health_registry(table, at).collect() for s in m.samples
               if s.labels.get("dimension", "overall") == "overall"}
    assert samples[("promptops_5m_requests", "")] == value_of(table, "requests")
    assert samples[("promptops_5m_latency_seconds", "0.95")] == pytest.approx(
        value_of(table, "latency_p95_ms") / 1000)
    assert samples[("promptops_health_evaluated_timestamp_seconds", "")] == at.timestamp()
    # The per-user abuse rows of the window stay out: one label per user is unbounded.
    assert "user" in set(table.column("dimension").to_pylist())
    labels = {s.labels.get("dimension") for m in health_registry(table, at).collect()
              for s in m.samples}
    assert "user" not in labels
    with pushgateway() as gateway:
        assert push_health(table, at, gateway, dag="promptops_health") is True
        text = httpx.get(f"{gateway}/metrics", timeout=5).text
    assert 'promptops_5m_success_ratio{dag="promptops_health"' in text
    assert push_health(table, at, None, dag="promptops_health") is None


def test_ingest_counts_rejects_and_lag_go_out_in_their_own_group():
    from promptops.metrics.prometheus import ingest_registry, push_ingest

    summary = {"window_start": "2026-09-07T13:00:00+00:00",
               "window_end": "2026-09-07T15:00:00+00:00", "received": 120, "written": 100,
               "duplicates": 5, "rejected": {"missing_field": 10, "bad_ts": 5}}
    finished = datetime(2026, 9, 7, 15, 4, 30, tzinfo=UTC)
    samples = {(s.name, s.labels.get("reason", "")): s.value
               for m in ingest_registry(summary, finished).collect() for s in m.samples}
    assert samples[("promptops_ingest_lag_seconds", "")] == 270
    assert samples[("promptops_ingest_rejected_records", "missing_field")] == 10
    assert samples[("promptops_ingest_written_records", "")] == 100
    with pushgateway() as gateway:
        assert push_ingest(summary, finished, gateway, dag="promptops_hourly") is True
        text = httpx.get(f"{gateway}/metrics", timeout=5).text
    line = [x for x in text.splitlines()
            if x.startswith("promptops_ingest_rejected_records{") and "bad_ts" in x]
    assert len(line) == 1 and 'part="ingest"' in line[0] and line[0].endswith(" 5")


def test_budgets_go_out_with_their_projection_interval(tmp_path):
    from promptops.detection.budgets.config import BudgetsConfig
    from promptops.detection.budgets.evaluate import evaluate_budgets
    from promptops.lake.store import Lake
    from promptops.metrics.prometheus import push_budgets
    from tests.detection.budgets.test_budget_evaluate import spend_hour

    lake = Lake(f"file://{tmp_path / 'lake'}")
    start = datetime(2026, 11, 20, tzinfo=UTC)
    for i in range(4):
        spend_hour(lake, start + timedelta(hours=i), {"u1": 2.0, "u2": 0.5})
    config = BudgetsConfig.model_validate({"budgets": [{
        "name": "u-daily", "scope": {"user": ["u1", "u2"]}, "metric": "cost", "amount": 10,
        "period": "day", "thresholds": [{"at": 0.8, "severity": "warning"}]}]})
    outcome = evaluate_budgets(lake, config, start + timedelta(hours=4)).as_dict()
    with pushgateway() as gateway:
        assert push_budgets(outcome, gateway) is True
        text = httpx.get(f"{gateway}/metrics", timeout=5).text
    lines = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith("promptops_budget_") and 'slice="u1"' in line}
    spent = next(v for k, v in lines.items() if k.startswith("promptops_budget_spent{"))
    assert spent == 8.0
    expected = next(v for k, v in lines.items()
                    if k.startswith("promptops_budget_projected{") and 'bound="expected"' in k)
    assert expected == 48.0  # four hours of history: linear, $2 an hour for 24 hours
    assert all('part="budgets"' in k for k in lines)
    assert push_budgets(outcome, None) is None
