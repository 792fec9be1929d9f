"""Block Kit rendering (validated with slack_sdk's models) and delivery through the Airflow
Slack webhook hook to the sink, with the sink's injected faults."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta

import pytest
from slack_sdk.models.blocks import Block

from promptops.airflow_adapters.resources import slack_webhooks
from promptops.alerts.engine import Notification
from promptops.alerts.slack import (
    SlackNotifier,
    SlackSendError,
    format_value,
    render_message,
    send_message,
)
from tests.helpers.alerts import (
    SECRET_PATH,
    T0,
    config,
    engine,
    finding,
    header,
    set_faults,
    sink_messages,
    slack_connection,
)

TOKEN = SECRET_PATH.rsplit("/", 1)[1]


def _notification(n_firing: int = 1, n_resolved: int = 0, **kw) -> Notification:
    def view(i: int, status: str) -> dict:
        f = finding(slice_=f"<app-{i}>&co", dimension="app",
                    annotations={"root_cause": "model=gpt-4o, error 5000",
                                 "heal_playbook": "switch_model", "owner": "team-a"})
        return {"fingerprint": f.fingerprint, "rule": f.rule, "severity": f.severity,
                "kind": f.kind, "labels": f.labels, "summary": f.summary, "value": f.value,
                "threshold": f.threshold, "annotations": f.annotations, "status": status,
                "active_since": T0.isoformat(), "fired_at": T0.isoformat(),
                "resolved_at": (T0 + timedelta(hours=2)).isoformat()
                if status == "resolved" else None}

    firing = [view(i, "firing") for i in range(n_firing)]
    resolved = [view(1000 + i, "resolved") for i in range(n_resolved)]
    fields = {"id": "n1", "scope": "hourly", "group_key": "0:{}",
              "group_labels": {"rule": "success_rate"}, "reason": "new",
              "connections": ["slack_alerts"], "evaluated_at": T0 + timedelta(hours=2),
              "run_id": "scheduled__2026-11-20T15:00:00+00:00",
              "run_url": "http://127.0.0.1:8080/dags/promptops_hourly/runs/x", "firing": firing,
              "resolved": resolved, "new": [a["fingerprint"] for a in firing[:1]]}
    fields.update(kw)
    return Notification(**fields)


def test_message_says_what_how_bad_since_when_where_and_links_the_run():
    msg = render_message(_notification())
    blocks = [Block.parse(b) for b in msg["blocks"]]
    assert [b.type for b in blocks] == ["header", "section", "section", "context", "context"]
    alert = msg["blocks"][2]
    text = alert["text"]["text"]
    fields = " | ".join(f["text"] for f in alert["fields"])
    assert "success_rate" in text and ":new:" in text
    assert "*Likely root cause:* model=gpt-4o, error 5000" in text
    assert "*Heal suggestion:* `switch_model`" in text and "*owner:* team-a" in text
    assert "80.00% &lt; 95.00%" in fields  # value, comparison, threshold
    assert "app = &lt;app-0&gt;&amp;co" in fields  # the slice, escaped for mrkdwn
    assert "2026-11-20 13:00 UTC" in fields  # since when
    assert "fingerprint `" in msg["blocks"][3]["elements"][0]["text"]
    footer = msg["blocks"][-1]["elements"][0]["text"]
    assert footer.startswith("<http://127.0.0.1:8080/dags/promptops_hourly/runs/x|Airflow run")
    assert msg["text"] == "[FIRING:1] critical rule=success_rate"
    assert header({"body": msg}).startswith(":red_circle: FIRING · CRITICAL · 1 firing")


def test_resolved_message():
    msg = render_message(_notification(0, 2, reason="resolved"))
    assert header({"body": msg}).startswith(":white_check_mark: RESOLVED")
    assert "*Resolved*\n2026-11-20 15:00 UTC" in json.loads(json.dumps(msg))["blocks"][2][
        "fields"][3]["text"]


def test_fifty_block_limit_is_respected_and_overflow_summarised():
    msg = render_message(_notification(60, 10), max_alerts=23)
    assert len(msg["blocks"]) <= 50
    for raw in msg["blocks"]:
        Block.parse(raw).validate_json()
    assert "*48 more* not shown" in json.dumps(msg)  # 70 alerts, 22 fit


@pytest.mark.parametrize(("metric", "value", "text"), [
    ("success_rate", 0.9512, "95.12%"), ("latency_p95_ms", 5234.4, "5,234 ms"),
    ("cost_usd", 1234.5, "$1,234.50"), ("requests", 1200.0, "1,200"), ("x", None, "n/a")])
def test_format_value(metric, value, text):
    assert format_value(metric, value) == text


def test_rate_limited_then_delivered(sink):
    set_faults(sink, {"mode": "rate_limit", "count": 2, "retry_after": 0})
    delivery = SlackNotifier(webhooks=slack_webhooks(), backoff_s=0.01).deliver(_notification())
    assert delivery.ok and delivery.attempts == 3 and delivery.connection_id == "slack_alerts"
    assert len(sink_messages(sink)) == 1


def test_retry_after_longer_than_allowed_gives_up_and_the_next_evaluation_delivers(sink, lake):
    set_faults(sink, {"mode": "rate_limit", "count": 1, "retry_after": 3600})
    out = engine(lake, max_retry_after_s=5).evaluate([finding()], T0, run_id="r0")
    report = out.notifications[0]
    assert report.status == "failed" and "rate-limited" in report.error
    # The failure is in the state: the next evaluation posts the alert as new again.
    out = engine(lake).evaluate([finding()], T0 + timedelta(hours=1), run_id="r1")
    assert [(n.status, n.reason) for n in out.notifications] == [("sent", "new")]
    assert len(sink_messages(sink)) == 1


def test_invalid_webhook_is_reported_without_the_url_and_the_alert_is_kept(sink, lake, caplog):
    caplog.set_level(logging.DEBUG)
    set_faults(sink, {"mode": "invalid_webhook", "count": 1, "status": 404})
    out = engine(lake).evaluate([finding()], T0, run_id="r0")
    report = out.notifications[0]
    assert report.status == "failed"
    assert "rejected the webhook of connection 'slack_alerts' (HTTP 404 no_service)" in report.error
    assert "password" in report.error
    everything = json.dumps(out.as_dict()) + caplog.text
    assert TOKEN not in everything and SECRET_PATH not in everything
    # A rerun of the same evaluation (an Airflow task retry) sends the same message.
    rerun = engine(lake).evaluate([finding()], T0, run_id="r0")
    assert [n.status for n in rerun.notifications] == ["sent"]
    assert len(sink_messages(sink)) == 1


def test_server_errors_and_disconnects_are_retried(sink, caplog):
    caplog.set_level(logging.INFO)
    set_faults(sink, {"mode": "server_error", "count": 1, "status": 503},
               {"mode": "disconnect", "count": 1})
    delivery = SlackNotifier(webhooks=slack_webhooks(), backoff_s=0.01).deliver(_notification())
    assert delivery.ok and delivery.attempts == 3
    assert "Going to retry" in caplog.text  # slack_sdk's retry line, with the URL redacted
    assert TOKEN not in caplog.text


def test_timeout_is_retried_and_reported_clearly(sink, lake):
    # Two slow answers and no retry left: the delivery fails as a timeout...
    set_faults(sink, {"mode": "slow", "count": 2, "delay_s": 2})
    out = engine(lake, timeout_s=1, max_retries=1).evaluate([finding()], T0, run_id="r0")
    report = out.notifications[0]
    assert report.status == "failed" and report.attempts == 2
    assert "timed out after 2 attempts" in report.error and TOKEN not in report.error
    # ...and is retried at the next evaluation. (The slow ones may still land in the sink:
    # a timed-out webhook call may have reached Slack, so delivery is at-least-once.)
    out = engine(lake).evaluate([finding()], T0 + timedelta(hours=1), run_id="r1")
    assert [(n.status, n.reason) for n in out.notifications] == [("sent", "new")]
    # Let the two late answers land here rather than in a later test's sink.
    deadline = time.monotonic() + 30
    while len(sink_messages(sink)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(sink_messages(sink)) == 3


def test_no_connection_at_all(sink, lake, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS")
    out = engine(lake).evaluate([finding()], T0, run_id="r0")
    assert "none of 'slack_alerts_critical', 'slack_alerts' exists" in out.notifications[0].error
    assert len(out.firing) == 1


def test_a_connection_without_a_webhook_url_is_named(sink, monkeypatch):
    """The provider's hook says "not found" for a connection without a password; the adapter
    hands the library that by type, so it is a permanent error naming what to set."""
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps({"conn_type": "slackwebhook"}))
    delivery = SlackNotifier(webhooks=slack_webhooks()).deliver(_notification())
    assert not delivery.ok and delivery.permanent and delivery.attempts == 0
    assert "'slack_alerts' has no webhook URL in its password" in delivery.error
    with pytest.raises(SlackSendError, match="'slack_alerts' does not exist .or has no "
                                             "webhook URL.; create it"):
        send_message({"text": "hi"}, conn_id="slack_alerts", webhooks=slack_webhooks())
    assert sink_messages(sink) == []


def test_connection_with_token_in_password_and_endpoint_in_host(sink, lake, monkeypatch):
    """The provider's other documented form: host = endpoint, password = the token path."""
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "host": sink + "/services", "password": "T1/B1/tok3n42"}))
    out = engine(lake, config()).evaluate([finding()], T0, run_id="r0")
    assert out.notifications[0].status == "sent"
    assert sink_messages(sink)[0]["path"] == "/services/T1/B1/tok3n42"


def test_webhook_url_is_registered_with_the_airflow_masker(sink):
    SlackNotifier(webhooks=slack_webhooks()).deliver(_notification())
    from airflow.sdk.log import _secrets_masker

    assert TOKEN not in _secrets_masker().redact(f"url {sink}{SECRET_PATH}")
    assert slack_connection("x")  # the helper builds the env form the README documents
