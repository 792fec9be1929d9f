"""Incidents through a bot token: one thread per incident, its header rewritten in place,
against the real HTTP sink's chat.postMessage / chat.update (slack_sdk's WebClient)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import requests

from promptops.airflow_adapters.resources import slack_bots
from promptops.alerts.slack import SlackBot
from tests.alerts.test_incidents import FIVE_MIN, burst, incident_config
from tests.helpers.alerts import T0, Clock, engine, sink_messages

TOKEN = "xoxb-canary-bot-token-4242"


def bot_connection(sink: str, **extra: str) -> str:
    return json.dumps({"conn_type": "slack", "password": TOKEN,
                       "extra": {"channel": "#alerts", "base_url": sink + "/api/", **extra}})


@pytest.fixture()
def bot_sink(sink: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", bot_connection(sink))
    return sink


def api(sink: str, method: str) -> list[dict]:
    return [m for m in sink_messages(sink) if m["path"] == f"/api/{method}"]


def top_header(message: dict) -> str:
    return message["body"]["blocks"][0]["text"]["text"]


def test_an_incident_is_one_thread_with_its_header_rewritten(bot_sink, lake):
    cfg = incident_config()
    clock = Clock(step=FIVE_MIN)
    eng = lambda: engine(lake, cfg, bots=slack_bots())  # noqa: E731 - a fresh task each time
    out = eng().evaluate(burst("warning"), clock.now, run_id="r0")
    assert [(n.reason, n.status) for n in out.notifications] == [("new", "sent")]
    posts = api(bot_sink, "chat.postMessage")
    assert len(posts) == 1 and "thread_ts" not in posts[0]["body"]
    assert posts[0]["body"]["channel"] == "#alerts"
    opening = posts[0]["ts"]

    out = eng().evaluate(burst("critical"), clock.tick(), run_id="r1")  # escalation
    assert [n.reason for n in out.notifications] == ["update"]
    posts = api(bot_sink, "chat.postMessage")
    assert len(posts) == 2 and posts[1]["body"]["thread_ts"] == opening
    updates = api(bot_sink, "chat.update")
    assert len(updates) == 1 and updates[0]["body"]["ts"] == opening
    assert "CRITICAL" in top_header(updates[0])

    for i in range(2, 30):  # all clear: the resolved reply and a RESOLVED header
        eng().evaluate([], clock.tick(), run_id=f"r{i}")
    posts, updates = api(bot_sink, "chat.postMessage"), api(bot_sink, "chat.update")
    assert len(posts) == 3 and posts[2]["body"]["thread_ts"] == opening
    assert "RESOLVED" in top_header(posts[2]) and "RESOLVED" in top_header(updates[-1])
    assert len(updates) == 2
    assert TOKEN not in json.dumps(sink_messages(bot_sink))


def test_a_new_incident_after_the_last_one_resolved_opens_a_new_thread(bot_sink, lake):
    cfg = incident_config()
    # As the DAGs build it: slack_webhooks() alone tells bot connections from webhooks.
    eng = lambda: engine(lake, cfg)  # noqa: E731
    eng().evaluate(burst(), T0, run_id="r0")
    eng().evaluate([], T0 + timedelta(hours=1), run_id="r1")
    eng().evaluate(burst(), T0 + timedelta(hours=2), run_id="r2")
    posts = api(bot_sink, "chat.postMessage")
    assert ["thread_ts" in p["body"] for p in posts] == [False, True, False]
    assert posts[1]["body"]["thread_ts"] == posts[0]["ts"] != posts[2]["ts"]


def test_a_bot_connection_without_channel_is_refused_naming_the_fix(sink, lake, monkeypatch):
    conn = json.loads(bot_connection(sink))
    conn["extra"].pop("channel")
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(conn))
    out = engine(lake, incident_config(), bots=slack_bots()).evaluate(burst(), T0,
                                                                       run_id="r0")
    [n] = out.notifications
    assert n.status == "failed" and "channel" in (n.error or "")
    assert TOKEN not in json.dumps(out.as_dict())


def test_a_refused_token_is_a_permanent_error_without_the_token(sink, lake):
    from slack_sdk import WebClient

    from promptops.alerts.slack import SlackNotifier

    class NoAuthBots:  # the sink answers not_authed to a request without a bearer token
        def bot(self, conn_id, **_):
            return SlackBot(WebClient(token="", base_url=sink + "/api/"), "#alerts")

    from promptops.airflow_adapters.resources import slack_webhooks
    from promptops.alerts.engine import Notification
    from promptops.alerts.state import OutboxEntry

    notifier = SlackNotifier(webhooks=slack_webhooks(), bots=NoAuthBots())
    view = {"fingerprint": "f1", "rule": "success_rate", "severity": "critical",
            "labels": {"metric": "success_rate", "dimension": "model", "slice": "gpt-4o"},
            "summary": "s", "value": 0.8, "threshold": 0.99, "annotations": {}}
    entry = OutboxEntry(id="n1", group_key="incident:abc", group_labels={"incident": "abc"},
                        route_index=0, connections=["slack_alerts"],
                        evaluated_at=T0.isoformat(), reason="new", firing=[view],
                        resolved=[], incident_id="abc", cause="model=gpt-4o")
    delivery = notifier.deliver(Notification.from_entry(entry, "hourly"))
    assert not delivery.ok and delivery.permanent and "not_authed" in (delivery.error or "")
    assert requests.get(sink + "/messages", timeout=5).json()["messages"] == []


def test_other_messages_go_through_a_bot_connection_too(bot_sink):
    from promptops.airflow_adapters.resources import slack_webhooks
    from promptops.alerts.slack import send_to_first

    message = {"text": "daily summary", "blocks": []}
    assert send_to_first(message, ["slack_alerts"], what="the daily summary",
                         webhooks=slack_webhooks()) is None
    [post] = api(bot_sink, "chat.postMessage")
    assert post["body"]["text"] == "daily summary" and post["body"]["channel"] == "#alerts"
