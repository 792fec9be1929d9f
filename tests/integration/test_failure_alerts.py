"""When promptops itself fails, someone is told: DAGs under dag.test() against a real simulator
and a real Slack sink, each run failing for a different reason, each posting exactly one
failure alert that names the failed task, its cause and the run, and never a secret.

- hourly, wrong API key: every 401 is sent once (no client retry, no Airflow retry), and the
  alert is the same when a real dag-processor process runs the callback;
- hourly, platform down: the health sensor's failure names the last cause it saw;
- heal, read-only key: the 403 from POST /v1/ops/actions is sent once and fails the task.

Tasks retry after 1 s here (instead of minutes), so a retry that should not happen shows up
as a second request within the test's time.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from promptops.heal.audit import read_audit
from promptops.lake.store import Lake
from promptops.simulator import SimulatorProcess, SlackSinkProcess
from tests.helpers import ROOT

HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)
RO_KEY = "sk-canary-readonly-5150"
WRONG_KEY = "sk-canary-wrong-6262"
WEBHOOK_TOKEN = "canaryAlertToken31"


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags[dag_id]
    for task in dag.tasks:
        task.retry_delay = timedelta(seconds=1)
        task.retry_exponential_backoff = 0
    return dag


def failure_alerts(sink: SlackSinkProcess) -> list[dict]:
    return [m for m in sink.messages()
            if m["body"]["text"].startswith("promptops run failed:")]


def states(run) -> dict[str, tuple[str, int]]:
    return {(ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"):
            (ti.state, ti.try_number) for ti in run.get_task_instances()}


@pytest.fixture()
def stack(airflow_db, tmp_path, monkeypatch):
    from promptops.settings import get_settings

    with SimulatorProcess("--now", (HOUR + timedelta(hours=2)).isoformat(),
                          api_key="right-key", read_only_key=RO_KEY) as sim, \
            SlackSinkProcess() as sink:
        monkeypatch.setenv("PROMPTOPS_LAKE_URI", f"file://{tmp_path / 'lake'}")
        monkeypatch.setenv("PROMPTOPS_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("PROMPTOPS_BACKOFF_FACTOR_S", "0.05")
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
            {"conn_type": "slackwebhook",
             "password": f"{sink.url}/services/T000/B000/{WEBHOOK_TOKEN}"}))
        monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS_CRITICAL", raising=False)
        get_settings.cache_clear()
        try:
            yield sim, sink
        finally:
            get_settings.cache_clear()


def platform_connection(monkeypatch, url: str, key: str) -> None:
    from promptops.settings import get_settings

    monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
        {"conn_type": "http", "host": url, "password": key}))
    get_settings.cache_clear()


def assert_no_secret(messages: list[dict]) -> None:
    text = json.dumps([m["body"] for m in messages])  # (the path is the webhook's own)
    for secret in (WRONG_KEY, RO_KEY, "right-key", WEBHOOK_TOKEN):
        assert secret not in text, secret


def replay_in_dag_processor(run, dag_file: Path, log_path: Path) -> None:
    """Run a failed run's DAG callback as a deployment does: the scheduler's callback request,
    executed by a real dag-processor process (which reads XCom through Airflow's API, where
    dag.test() runs the callback inline beside the metadata database)."""
    import structlog
    from airflow.dag_processing.processor import DagFileProcessorProcess, in_process_api_server
    from airflow.models import DagRun
    from airflow.sdk.api.client import Client
    from airflow.utils.session import create_session

    with create_session() as session:
        dr = session.query(DagRun).filter_by(dag_id=run.dag_id, run_id=run.run_id).one()
        failed = next(ti for ti in dr.get_task_instances(session=session)
                      if ti.state == "failed")
        request = dr.produce_dag_callback(dag=None, success=False, relevant_ti=failed,
                                          reason="task_failure", execute=False)
    client = Client(base_url=None, token="", dry_run=True,
                    transport=in_process_api_server().transport)
    client.base_url = "http://in-process.invalid./"  # as the dag-processor's manager does
    with log_path.open("ab") as log_file:
        proc = DagFileProcessorProcess.start(
            id=uuid.uuid4(), path=dag_file, bundle_path=dag_file.parent,
            bundle_name=request.bundle_name, dag_file_rel_path=request.filepath,
            callbacks=[request], logger=structlog.get_logger(), logger_filehandle=log_file,
            client=client)
        deadline = time.monotonic() + 300
        while not proc.is_ready and time.monotonic() < deadline:
            proc._service_subprocess(max_wait_time=1.0)  # the manager's loop, for one process
        proc.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_wrong_key_fails_the_hourly_run_at_once_and_says_so(stack, monkeypatch, tmp_path):
    sim, sink = stack
    platform_connection(monkeypatch, sim.url, WRONG_KEY)
    run = load_dag("promptops_hourly").test(logical_date=HOUR)

    assert run.state == "failed"
    pulled = states(run)
    windows = {k: v for k, v in pulled.items() if k.startswith("pull_window[")}
    assert windows and set(windows.values()) == {("failed", 1)}, pulled
    calls = [r for r in sim.requests_log() if r["path"] == "/v1/call_records"]
    assert [r["status"] for r in calls] == [401] * len(windows)  # each sent once

    [alert] = failure_alerts(sink)
    body = json.dumps(alert["body"])
    assert "promptops_hourly" in body and "`pull_window[0]`" in body
    assert "AuthenticationFailed" in body and "check the API key" in body
    assert "/dags/promptops_hourly/runs/" in body
    assert_no_secret(sink.messages())

    # The same callback run again (the dag-processor replaying it): the same failure within
    # the repeat interval is not posted twice.
    sink.clear()
    processor = ROOT / "dags" / "promptops_hourly.py"
    replay_in_dag_processor(run, processor, tmp_path / "processor.log")
    assert failure_alerts(sink) == []
    # In a deployment where it was not posted yet (a lake of its own), the dag-processor
    # builds the same alert from the recorded failures.
    from promptops.settings import get_settings

    monkeypatch.setenv("PROMPTOPS_LAKE_URI", f"file://{tmp_path / 'other-lake'}")
    get_settings.cache_clear()  # the processor is forked from this process
    replay_in_dag_processor(run, processor, tmp_path / "processor2.log")
    [again] = failure_alerts(sink)
    assert again["body"]["blocks"][2:] == alert["body"]["blocks"][2:]  # tasks, causes, link


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_health_sensor_names_the_last_cause_it_saw(stack, monkeypatch):
    sim, sink = stack
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    platform_connection(monkeypatch, dead, WRONG_KEY)
    monkeypatch.setenv("PROMPTOPS_HEALTH_WAIT_S", "0")
    run = load_dag("promptops_hourly").test(logical_date=HOUR)

    assert run.state == "failed"
    assert states(run)["wait_for_platform"] == ("failed", 1)
    [alert] = failure_alerts(sink)
    body = json.dumps(alert["body"])
    assert "`wait_for_platform`" in body and "AirflowSensorTimeout" in body
    assert "connection refused" in body and dead.split("://")[1] in body
    assert_no_secret(sink.messages())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_refused_heal_post_is_sent_once_and_fails_the_task(stack, monkeypatch, tmp_path):
    sim, sink = stack
    platform_connection(monkeypatch, sim.url, RO_KEY)
    run = load_dag("promptops_heal").test(run_conf={
        "action": "rate_limit", "target": "user-042", "dry_run": False,
        "reason": "read-only key"})

    assert run.state == "failed"
    assert states(run)["apply_actions"] == ("failed", 1)
    posts = [r for r in sim.requests_log()
             if r["method"] == "POST" and r["path"] == "/v1/ops/actions"]
    assert [p["status"] for p in posts] == [403]
    assert sim.truth()["actions"] == []

    # The refusal is in the audit, with the platform's answer.
    [rec] = read_audit(Lake(f"file://{tmp_path / 'lake'}"), HOUR - timedelta(days=30),
                       datetime.now(UTC) + timedelta(days=1))
    assert rec.platform_status == "refused" and "check the service account" in \
        rec.platform_detail

    [alert] = failure_alerts(sink)
    body = json.dumps(alert["body"])
    assert "promptops_heal" in body and "`apply_actions`" in body
    assert "PermissionDenied" in body and "check the service account's permissions" in body
    assert_no_secret(sink.messages())

