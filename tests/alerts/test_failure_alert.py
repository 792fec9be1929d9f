"""The failure alert of a promptops run: the message (DAG, failed tasks, causes, run link, no
secret), the notifier posting it to a real Slack-compatible sink without ever raising, and
the retry policy that fails permanent errors at once."""

from __future__ import annotations

import json
import logging
import socket

import pytest
import requests

from promptops.alerts.failure import (
    MAX_CAUSE,
    NO_RECORDED_CAUSE,
    TaskFailure,
    describe_error,
    failure_message,
)
from promptops.errors import (
    AuthenticationFailed,
    DataFormatError,
    InvalidRequest,
    PermissionDenied,
    PlatformInternalError,
    PlatformNotConfigured,
    PlatformUnreachable,
    RateLimited,
)

CANARY_KEY = "sk-canary-FAIL-7781"
WEBHOOK_PATH = "/services/T0FAIL/B0FAIL/canaryFailureToken99"
RUN_URL = "http://airflow.example/dags/promptops_hourly/runs/manual__2026-11-20T13%3A00"


def texts(message: dict) -> str:
    return json.dumps(message)


def test_the_message_names_the_dag_the_failed_tasks_their_causes_and_the_run():
    failures = [
        TaskFailure("pull_window", "AuthenticationFailed: platform error 1001 (HTTP 401) on "
                    "GET /v1/call_records ... What to do: check the API key.", map_index=1,
                    try_number=1),
        TaskFailure("pull_window", "AuthenticationFailed: platform error 1001 ...", map_index=0,
                    try_number=1),
        TaskFailure("wait_for_platform", "AirflowSensorTimeout: ... connection refused"),
    ]
    message = failure_message(dag_id="promptops_hourly", run_id="manual__2026-11-20T13:00",
                              failures=failures, run_url=RUN_URL, reason="task_failure")
    body = texts(message)
    assert message["text"].startswith("promptops run failed: promptops_hourly · pull_window[0]")
    for needle in ("promptops_hourly", "manual__2026-11-20T13:00", "`pull_window[0]`",
                   "`pull_window[1]`", "`wait_for_platform`", "check the API key",
                   "connection refused", f"<{RUN_URL}|Open the run in Airflow>"):
        assert needle in body, needle
    assert body.count("*Failed task:*") == 3


def test_a_run_that_failed_without_a_task_error_says_why():
    message = failure_message(dag_id="promptops_daily", run_id="r1", failures=[],
                              run_url=None, reason="timed_out")
    assert "dagrun_timeout" in texts(message)
    assert "none recorded" in texts(message)


def test_many_failed_windows_are_summarised_within_slacks_limits():
    failures = [TaskFailure("pull_window", "x" * 5000, map_index=i) for i in range(30)]
    message = failure_message(dag_id="promptops_hourly", run_id="r", failures=failures,
                              run_url=RUN_URL)
    assert len(message["blocks"]) <= 50
    assert "22 more failed" in texts(message)


def test_causes_are_cut_and_never_carry_a_secret():
    webhook = "https://hooks.slack.example" + WEBHOOK_PATH
    err = RuntimeError(f"POST {webhook} refused; header was Bearer {CANARY_KEY}")
    secrets = {CANARY_KEY, webhook, WEBHOOK_PATH.strip("/")}
    cause = describe_error(err, secrets)
    assert cause.startswith("RuntimeError: POST ***") and "Bearer ***" in cause
    assert CANARY_KEY not in cause and "canaryFailureToken99" not in cause
    assert len(describe_error(ValueError("y" * 10_000))) == MAX_CAUSE
    assert describe_error(None) == NO_RECORDED_CAUSE
    # A cause recorded without blanking (e.g. by hand) is blanked when the message is built.
    message = failure_message(dag_id="d", run_id="r", run_url=None, secrets=secrets,
                              failures=[TaskFailure("t", f"leaked {CANARY_KEY}")])
    assert CANARY_KEY not in texts(message) and "leaked ***" in texts(message)


def test_task_failure_records_round_trip_through_xcom_form():
    f = TaskFailure("pull_window", "boom", map_index=3, try_number=2)
    assert TaskFailure.from_dict(json.loads(json.dumps(f.as_dict()))) == f
    assert TaskFailure.from_dict({"cause": "no task id"}) is None
    assert TaskFailure.from_dict("garbage") is None


# -- the retry policy: permanent errors fail at once ----------------------------------------
@pytest.mark.parametrize("exc, action", [
    (AuthenticationFailed("x", http_status=401), "fail"),
    (PermissionDenied("x", http_status=403), "fail"),
    (InvalidRequest("x", http_status=422), "fail"),
    (PlatformNotConfigured("no API key"), "fail"),
    (DataFormatError("malformed page", http_status=200), "default"),
    (PlatformInternalError("x"), "default"),
    (RateLimited("x"), "default"),
    (PlatformUnreachable("h:1", reason="connection refused"), "default"),
    (ValueError("our bug"), "default"),
])
def test_the_retry_policy_fails_permanent_errors_at_once(exc, action):
    from promptops.airflow_adapters.failure_notifier import PERMANENT_ERRORS_FAIL

    decision = PERMANENT_ERRORS_FAIL.evaluate(exc, try_number=1, max_tries=3)
    assert decision.action.value == action


# -- the notifier against a real Slack-compatible sink --------------------------------------
@pytest.fixture()
def slack(sink_server, monkeypatch, tmp_path):
    """``slack_alerts`` points at the sink (no critical connection); the platform
    connection holds the canary key; a lake of its own for the repeat ledger."""
    monkeypatch.setenv("PROMPTOPS_LAKE_URI", f"file://{tmp_path / 'lake'}")
    requests.delete(sink_server.url + "/messages", timeout=5)
    requests.delete(sink_server.url + "/_faults", timeout=5)
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": sink_server.url + WEBHOOK_PATH}))
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS_CRITICAL", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
        {"conn_type": "http", "host": "http://127.0.0.1:9", "password": CANARY_KEY}))
    yield sink_server
    requests.delete(sink_server.url + "/_faults", timeout=5)


def sink_messages(sink_server) -> list[dict]:
    return requests.get(sink_server.url + "/messages", timeout=5).json()["messages"]


def a_dag(dag_id: str = "promptops_failure_unit"):
    from airflow.sdk import DAG

    return DAG(dag_id, schedule=None)


def test_the_secrets_are_read_from_the_connections(slack):
    from promptops.airflow_adapters.failure_notifier import known_secrets

    secrets = known_secrets()
    assert CANARY_KEY in secrets
    assert WEBHOOK_PATH.strip("/") in secrets  # the webhook's token, not only its whole URL


@pytest.mark.slow
def test_the_notifier_posts_one_message_to_the_alert_route(slack, airflow_db):
    from promptops.airflow_adapters.failure_notifier import RunFailureNotifier

    RunFailureNotifier()({"dag": a_dag(), "run_id": "scheduled__2026-11-20T13:00:00+00:00",
                          "reason": "timed_out"})
    [posted] = sink_messages(slack)
    assert posted["path"] == WEBHOOK_PATH
    body = json.dumps(posted["body"])
    assert "promptops_failure_unit" in body and "dagrun_timeout" in body
    assert "/dags/promptops_failure_unit/runs/scheduled__2026-11-20T13%3A00%3A00%2B00%3A00" \
        in body


@pytest.mark.slow
def test_the_notifier_never_raises_and_never_logs_the_webhook(slack, airflow_db, monkeypatch,
                                                              caplog):
    from promptops.airflow_adapters.failure_notifier import RunFailureNotifier

    caplog.set_level(logging.DEBUG)
    context = {"dag": a_dag(), "run_id": "r-down", "reason": "task_failure"}
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": dead + WEBHOOK_PATH}))
    RunFailureNotifier()(context)  # Slack unreachable
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS")
    RunFailureNotifier()(context)  # no Slack connection at all
    RunFailureNotifier()({"dag": a_dag(), "run_id": "r-bad", "reason": None,
                          "ti": object()})  # a context it cannot read
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                and r.name == "promptops.airflow_adapters.failure_notifier"]
    assert len(warnings) == 3, warnings
    assert "slack_alerts" in warnings[0] and "no Slack connection" in warnings[1]
    assert "canaryFailureToken99" not in caplog.text and CANARY_KEY not in caplog.text
    assert sink_messages(slack) == []


# -- the same failure again: at most one message per repeat interval ------------------------
def _failed_run(run_id: str, dag_id: str = "promptops_failure_repeat") -> dict:
    """The notifier's context of a failed run (its task's cause comes from the patched
    ``recorded_failures``)."""
    from unittest import mock

    ti = mock.Mock(task_id="pull_window", map_index=-1, try_number=1,
                   log_url=f"http://airflow.example/dags/{dag_id}/runs/{run_id}/tasks/x")
    return {"dag": a_dag(dag_id), "run_id": run_id, "reason": "task_failure", "ti": ti}


@pytest.mark.slow
def test_the_same_failure_again_is_posted_once_per_repeat_interval(slack, airflow_db,
                                                                   monkeypatch):
    """A wrong key fails the 5-minute health DAG every run: one message, not twelve an
    hour. Another cause is news and is posted."""
    from promptops.airflow_adapters import failure_notifier
    from promptops.airflow_adapters.failure_notifier import RunFailureNotifier

    causes = {}
    monkeypatch.setattr(failure_notifier, "recorded_failures", lambda dag, run_id: [
        TaskFailure(task_id="pull_window", cause=causes[run_id])])
    for minute in (5, 10, 15):
        run_id = f"scheduled__2026-11-20T10:{minute:02d}:00+00:00"
        causes[run_id] = (f"AuthenticationFailed: platform error 1001 at 10:{minute:02d} "
                          f"(request {minute * 7}): check the API key")
        RunFailureNotifier()(_failed_run(run_id))
    causes["other"] = "PlatformUnreachable: connection refused by 127.0.0.1:8700"
    RunFailureNotifier()(_failed_run("other"))
    posted = sink_messages(slack)
    assert len(posted) == 2
    bodies = [json.dumps(p["body"]) for p in posted]
    assert "10:05" in bodies[0] and "connection refused" in bodies[1]
    assert "at most once every 4 h" in bodies[0]


@pytest.mark.slow
def test_a_failure_alert_that_could_not_be_sent_is_tried_again(slack, airflow_db,
                                                               monkeypatch):
    from promptops.airflow_adapters import failure_notifier
    from promptops.airflow_adapters.failure_notifier import RunFailureNotifier

    monkeypatch.setattr(failure_notifier, "recorded_failures", lambda dag, run_id: [
        TaskFailure(task_id="pull_window", cause="AuthenticationFailed: check the key")])
    requests.post(slack.url + "/_faults", json={"mode": "server_error", "status": 500,
                                                "count": None}, timeout=5)
    RunFailureNotifier()(_failed_run("r1"))
    requests.delete(slack.url + "/_faults", timeout=5)
    RunFailureNotifier()(_failed_run("r2"))
    assert len(sink_messages(slack)) == 1


def test_the_repeat_window_reopens(tmp_path):
    from datetime import UTC, datetime, timedelta

    from promptops.airflow_adapters.failure_notifier import RepeatLedger
    from promptops.alerts.store import LocalBlobStore

    ledger = RepeatLedger(LocalBlobStore(str(tmp_path)))
    t0, repeat = datetime(2026, 11, 20, 8, 0, tzinfo=UTC), timedelta(hours=4)
    assert ledger.claim("d", "sig", repeat, now=t0)
    assert ledger.claim("d", "sig", repeat, now=t0 + timedelta(hours=3)) is None
    assert ledger.claim("d", "other", repeat, now=t0 + timedelta(hours=3))
    assert ledger.claim("d", "sig", repeat, now=t0 + timedelta(hours=4))


def test_failures_alike_but_for_digits_share_a_signature():
    from promptops.alerts.failure import failure_signature

    def sig(*causes, dag="promptops_hourly"):
        return failure_signature(dag, [TaskFailure(task_id="pull_window", cause=c,
                                                   map_index=i)
                                       for i, c in enumerate(causes)], "task_failure")

    assert sig("error 1001 at 10:05") == sig("error 1001 at 11:35") == \
        sig("error 1001 at 10:05", "error 1001 at 10:20")
    assert sig("error 1001 at 10:05") != sig("connection refused")
    assert sig("error 1001") != sig("error 1001", dag="promptops_health")
