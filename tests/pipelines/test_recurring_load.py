"""The own-history judgment wired into the evaluations: the 5-minute health evaluation end to
end (rows stored, judged, alerts posted to a real Slack-compatible sink) and the hourly
``abusive_caller`` rule in ``findings_for_hour``."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from promptops.airflow_adapters.resources import slack_webhooks
from promptops.contracts.datasets import METRICS
from promptops.detection.caller_history import build_caller_profiles
from promptops.lake.store import Lake
from promptops.metrics.health import read_health_metrics
from promptops.pipelines.health import evaluate_health, rows_of
from promptops.pipelines.hourly import findings_for_hour
from tests.helpers.alerts import SECRET_PATH, slack_connection
from tests.helpers.caller_history import (
    BATCH_USER,
    CALLS_RULE,
    TODAY,
    TOKENS_RULE,
    batch_users,
    health_rows,
    write_batch_days,
)
from tests.helpers.metric_tables import metric_rows
from tests.helpers.rules import config as rules_config

CALLS_5M = {**CALLS_RULE, "keep_firing_for": 0}
TOKENS_5M = {**TOKENS_RULE, "keep_firing_for": 0}
CALLS_HOURLY = {**CALLS_5M, "source": "hourly", "window": "1h"}
THRESHOLDS = rules_config(abusive_caller=CALLS_HOURLY, abusive_caller_5m=CALLS_5M,
                          token_burst_5m=TOKENS_5M)
AT_BATCH = TODAY + timedelta(hours=2, minutes=30)


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(f"file://{tmp_path / 'lake'}")


@pytest.fixture
def sink(sink_server, monkeypatch) -> str:
    requests.delete(sink_server.url + "/messages", timeout=5)
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", slack_connection(sink_server.url + SECRET_PATH))
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS_CRITICAL", raising=False)
    return sink_server.url


def posted(sink: str) -> str:
    messages = requests.get(sink + "/messages", timeout=5).json()["messages"]
    return "\n".join(str(m["body"]) for m in messages)


def evaluate(lake: Lake, at, users, run_id: str) -> dict:
    return evaluate_health(lake, at, rows_of(health_rows(at, users)), run_id=run_id,
                           webhooks=slack_webhooks(), thresholds_loader=lambda: THRESHOLDS)


def test_the_health_evaluation_keeps_quiet_on_the_batch_and_alerts_on_a_flood(lake, sink):
    write_batch_days(lake, 3)
    build_caller_profiles(lake, TODAY, THRESHOLDS)

    quiet = evaluate(lake, AT_BATCH, batch_users(AT_BATCH), "batch")
    assert (quiet["findings"], quiet["recurring_load_suppressed"]) == (0, 1)
    assert quiet["notifications"] == [] and posted(sink) == ""
    # The rows are stored as always: tomorrow's profile learns from them.
    stored = read_health_metrics(lake, AT_BATCH, AT_BATCH + timedelta(minutes=1))
    assert stored is not None and BATCH_USER in stored.column("slice").to_pylist()

    at = AT_BATCH + timedelta(minutes=5)
    loud = evaluate(lake, at, {**batch_users(at), "mallory": (150, 500)}, "flood")
    assert (loud["findings"], loud["recurring_load_suppressed"]) == (1, 1)
    text = posted(sink)
    assert "mallory" in text and BATCH_USER not in text


def test_the_hourly_abusive_caller_rule_judges_against_the_callers_history(lake):
    """A caller at 120 calls/min every day at 02:00 (seen by the health sensor) is its usual
    load in the hourly run too; a new one at 120 is not."""
    write_batch_days(lake, 3, rate=120)
    build_caller_profiles(lake, TODAY, THRESHOLDS)
    hour = TODAY + timedelta(hours=2)
    lake.write_partition(METRICS, hour, metric_rows([
        ("peak_calls_per_minute", "user", BATCH_USER, 125.0, 7200),
        ("peak_calls_per_minute", "user", "mallory", 125.0, 3000),
    ], hour))
    findings = findings_for_hour(lake, hour, THRESHOLDS, baselines=False, root_cause=False)
    assert [(f.rule, f.labels["slice"]) for f in findings] == [("abusive_caller", "mallory")]
