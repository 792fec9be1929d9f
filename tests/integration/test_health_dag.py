"""The health DAG under dag.test() against a real simulator with a flooding caller: GPU
readings fall back to the platform (no NVML here), the flood is caught within one 5-minute
run, its alert reaches the Slack sink and a rate-limit heal is requested."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from promptops.lake.store import Lake
from promptops.simulator import SimulatorProcess, SlackSinkProcess
from tests.helpers import ROOT

AT = datetime(2026, 11, 20, 10, 10, tzinfo=UTC)


@pytest.mark.slow
def test_health_dag_catches_a_flooding_caller(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from promptops.settings import get_settings

    scenario = tmp_path / "flood.yaml"
    scenario.write_text(
        "seed: 9\ncalls_per_hour: 3000\n"
        "data_faults: {malformed_rate: 0.0, duplicate_rate: 0.0, late_rate: 0.0}\n"
        "incidents:\n  - {name: flood, kind: user_flood, start: 2026-11-20T10:00:00Z,"
        " end: 2026-11-20T10:30:00Z, slice: {user_id: user-042},"
        " params: {calls_per_minute: 400}}\nfaults: []\n")
    lake_uri = f"file://{tmp_path / 'lake'}"
    with SimulatorProcess("--scenario", str(scenario), api_key="health-key", seed=None) as sim, \
            SlackSinkProcess() as sink:
        monkeypatch.setenv("PROMPTOPS_LAKE_URI", lake_uri)
        monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
            {"conn_type": "http", "host": sim.url, "password": sim.api_key}))
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
            {"conn_type": "slackwebhook", "password": sink.url + "/services/T/B/health"}))
        get_settings.cache_clear()
        try:
            dag = DagBag(dag_folder=str(ROOT / "dags")).dags["promptops_health"]
            run = dag.test(logical_date=AT)
        finally:
            get_settings.cache_clear()
        messages = sink.messages()

    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["request_heal"] == "success" and states["all_clear"] == "skipped", states
    assert run.data_interval_end - run.data_interval_start == timedelta(minutes=5)

    # The flood paged, naming the caller; nothing else did.
    assert len(messages) == 1, [m["body"]["text"] for m in messages]
    assert "user-042" in json.dumps(messages[0]["body"])

    lake = Lake(lake_uri)
    from promptops.metrics.health import read_health_metrics

    at = run.data_interval_end
    rows = read_health_metrics(lake, at, at + timedelta(hours=1)).to_pylist()
    metrics = {r["metric"] for r in rows}
    assert {"api_up", "success_rate", "peak_calls_per_minute", "gpu_utilization_pct"} <= metrics
    from promptops.pipelines.hourly import read_heal_requests

    # Filed in the hour the alert fired: this evaluation's.
    heal = read_heal_requests(lake, run.data_interval_start,
                              run.data_interval_end + timedelta(hours=1)).to_pylist()
    assert [(h["dag_id"], h["rule"], h["playbook"]) for h in heal] == \
        [("promptops_health", "abusive_caller_5m", "rate_limit_user")]
    assert json.loads(heal[0]["labels"])["slice"] == "user-042"
