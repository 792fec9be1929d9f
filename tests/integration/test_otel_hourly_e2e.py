"""End to end with ``PROMPTOPS_SOURCE=otel``: real GenAI spans (the official OpenAI
instrumentation around the real ``openai`` client, calling the simulator's chat endpoint, a
third of the calls failing) written to the landing area as the Collector's file exporter
writes them; the hourly DAG (dag.test) ingests them into the lake, computes the metrics and
fires the success-rate alert to a real Slack sink, logged in the alert log."""

from __future__ import annotations

import json
from datetime import timedelta

import openai
import pytest

from promptops.lake.store import Lake
from promptops.simulator import SimulatorProcess, SlackSinkProcess
from tests.helpers import ROOT
from tests.helpers.alerts import route_to_sink
from tests.helpers.otel_spans import (
    collector_json,
    instrumented_openai,
    spans_hour,
    wait_out_the_hour,
    write_landing,
)
from tests.helpers.simulator import settled_log

JUDGE_PATH = "/v1/chat/completions"
CALLS, FAILED = 120, 40
RESOURCE = {"service.name": "support-chat", "service.namespace": "payments",
            "cloud.region": "eu-west-1"}


def _spans():
    """CALLS real chat calls through the instrumented client, the last FAILED answered 500."""
    wait_out_the_hour(margin_s=120)  # every span in one hour, the hour the DAG reads
    with SimulatorProcess(api_key="otel-e2e-key") as sim, \
            instrumented_openai(RESOURCE, {"user.id": "user-7"}) as exporter:
        client = openai.OpenAI(base_url=sim.url + "/v1", api_key=sim.api_key, max_retries=0)
        for i in range(CALLS):
            if i == CALLS - FAILED:
                sim.set_faults([{"kind": "error", "code": 5000, "times": FAILED,
                                 "path_prefix": JUDGE_PATH}])
            try:
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"Where is order {i}?"}])
            except openai.InternalServerError:
                assert i >= CALLS - FAILED
        assert len(settled_log(sim, CALLS, JUDGE_PATH)) == CALLS
        return list(exporter.get_finished_spans())


@pytest.mark.slow
def test_spans_to_lake_metrics_and_a_success_rate_alert(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from promptops.alerts.store import AlertStore
    from promptops.settings import get_settings

    spans = _spans()
    hour = spans_hour(spans)
    landing = tmp_path / "otel"
    # A batch span processor's exports: 50 spans a request, two files in the hour.
    write_landing(landing, hour, [collector_json(spans[i:i + 50]) for i in range(0, 100, 50)],
                  name="traces-a", minute=1)
    write_landing(landing, hour, [collector_json(spans[100:])], name="traces-b", minute=2)

    with SlackSinkProcess() as sink:
        monkeypatch.setenv("PROMPTOPS_SOURCE", "otel")
        monkeypatch.setenv("PROMPTOPS_OTEL_LANDING_URI", f"file://{landing}")
        monkeypatch.setenv("PROMPTOPS_LAKE_URI", f"file://{tmp_path / 'lake'}")
        monkeypatch.setenv("PROMPTOPS_STATE_DIR", str(tmp_path / "state"))
        # No platform connection at all: the otel source must not need one.
        monkeypatch.delenv("AIRFLOW_CONN_PROMPT_PLATFORM", raising=False)
        route_to_sink(monkeypatch, sink.url)
        get_settings.cache_clear()
        try:
            dag = DagBag(dag_folder=str(ROOT / "dags")).dags["promptops_hourly"]
            run = dag.test(logical_date=hour + timedelta(hours=1))
            states = {ti.task_id: ti.state for ti in run.get_task_instances()}
            messages = sink.messages()
        finally:
            get_settings.cache_clear()
    assert run.state == "success", states
    assert run.data_interval_start == hour

    lake = Lake(f"file://{tmp_path / 'lake'}")
    calls = lake.read_partition("calls", hour).to_pylist()
    assert len(calls) == CALLS
    assert sum(c["status"] == "error" for c in calls) == FAILED
    assert {(c["app"], c["team"], c["user_id"], c["model"], c["provider"]) for c in calls} == \
        {("support-chat", "payments", "user-7", "gpt-4o-mini", "openai")}
    assert not lake.has_partition("quarantine", hour)

    metrics = lake.read_partition("metrics", hour).to_pylist()
    rate = next(r["value"] for r in metrics if r["metric"] == "success_rate"
                and r["dimension"] == "overall")
    assert rate == pytest.approx((CALLS - FAILED) / CALLS)

    events = AlertStore(lake, scope="hourly").read_alert_log(
        hour, hour + timedelta(hours=2)).to_pylist()
    fired = [e for e in events if e["event"] == "fired"
             and "success_rate" in json.dumps(e, default=str)]
    assert fired, [e["event"] for e in events]
    assert states.get("alerts_sent") == "success" or states.get("request_heal") == "success"
    texts = [json.dumps(m["body"]).lower() for m in messages]
    assert any("success rate" in t for t in texts), texts[:3]
    assert not any("otel-e2e-key" in t for t in texts)
