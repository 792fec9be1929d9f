"""The Alertmanager target against Debian's real Alertmanager (basic auth on), whose webhook
receiver is a local HTTP server recording what Alertmanager notifies."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from promptops.alerts.alertmanager import AlertmanagerSender, label_name, postable_alerts
from promptops.alerts.config import TargetConfig
from promptops.alerts.engine import Notification
from promptops.alerts.targets import TargetConnection, title
from tests.helpers.alertmanager import LOGIN, PASSWORD, Alertmanager, WebhookReceiver, alertmanager
from tests.helpers.prometheus import free_port

RUN_URL = "http://localhost:8080/dags/promptops_hourly/runs/x"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def am(receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[Alertmanager]:
    with alertmanager(tmp_path_factory.mktemp("alertmanager"), receiver.url + "/hook") as server:
        yield server


def target(**overrides: Any) -> TargetConfig:
    return TargetConfig.model_validate({"type": "alertmanager", "connection": "am_conn",
                                        "hold": "2h", "max_retries": 2, **overrides})


def connection(url: str, password: str = PASSWORD) -> TargetConnection:
    return TargetConnection(conn_id="am_conn", conn_type="http", host=url, login=LOGIN,
                            password=password)


def sender(clock: datetime | None = None) -> AlertmanagerSender:
    return AlertmanagerSender(backoff_s=0.01, max_retry_after_s=0.1,
                              clock=(lambda: clock) if clock else None)


def alert(now: datetime, incident: str, **over: Any) -> dict[str, Any]:
    return {"fingerprint": f"fp-{incident}", "rule": "success_rate", "severity": "critical",
            "kind": "threshold",
            "labels": {"metric": "success_rate", "dimension": "model", "slice": "gpt-4o",
                       "model": "gpt-4o", "team.name": "search", "empty": ""},
            "summary": "success_rate on model=gpt-4o is 0.8 (threshold 0.95)",
            "value": 0.8, "threshold": 0.95,
            "annotations": {"root_cause": "provider outage", "runbook": "https://rb/1",
                            "heal_playbook": "switch_model", "comparison": "<"},
            "pending_for": 1, "keep_firing_for": 0, "status": "firing",
            "active_since": (now - timedelta(minutes=20)).isoformat(), "last_seen_at": None,
            "hits": 1, "misses": 0, "fired_at": (now - timedelta(minutes=10)).isoformat(),
            "resolved_at": None, "incident_id": incident, "muted_by": None, **over}


def notification(now: datetime, incident: str, reason: str = "new", *,
                 resolved: bool = False) -> Notification:
    a = alert(now, incident)
    if resolved:
        a = {**a, "status": "resolved", "resolved_at": now.isoformat()}
    return Notification(
        id=f"n-{incident}-{reason}", scope="hourly", group_key=f"incident:{incident}",
        group_labels={}, reason=reason, connections=[], evaluated_at=now,
        run_id="scheduled__2026-12-01T09:00:00+00:00", run_url=RUN_URL,
        firing=[] if resolved else [a], resolved=[a] if resolved else [],
        new=[] if resolved else [a["fingerprint"]], incident_id=incident,
        cause="model=gpt-4o", opened_at=(now - timedelta(minutes=10)).isoformat(),
        target="am")


def incident_id() -> str:
    return f"inc-am-{next(_ids)}-{datetime.now(UTC):%H%M%S%f}"


def wall() -> datetime:
    """Now, in whole seconds: Alertmanager keeps times to the millisecond."""
    return datetime.now(UTC).replace(microsecond=0)


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_alert_shows_in_alertmanager_with_labels_annotations_and_held_ends_at(
        am: Alertmanager) -> None:
    now = wall()
    inc = incident_id()
    n = notification(now, inc)

    delivery = sender(now).deliver(n, target(), connection(am.url))

    assert delivery.ok, delivery.error
    assert delivery.connection_id == "am_conn"
    [got] = am.alerts(incident_id=inc)
    assert got["labels"] == {
        "alertname": "success_rate", "severity": "critical", "metric": "success_rate",
        "dimension": "model", "slice": "gpt-4o", "model": "gpt-4o",
        "team_name": "search",  # sanitised; the empty label is dropped
        "promptops_scope": "hourly", "incident_id": inc}
    assert got["annotations"] == {
        "summary": "success_rate on model=gpt-4o is 0.8 (threshold 0.95)",
        "description": title(n), "cause": "model=gpt-4o", "root_cause": "provider outage",
        "runbook": "https://rb/1", "heal_playbook": "switch_model", "run_url": RUN_URL,
        "fired_at": (now - timedelta(minutes=10)).isoformat()}
    assert got["generatorURL"] == RUN_URL
    assert got["status"]["state"] == "active"
    # Started when sent: an older start makes Alertmanager flush the group before the rest
    # of the batch is in (two notifications for one incident).
    assert parse(got["startsAt"]) == now
    # held open for `hold` past the evaluation, since nothing re-sends it every 30 s
    assert parse(got["endsAt"]) == now + timedelta(hours=2)


def test_refresh_does_not_notify_again_and_resolve_notifies_resolved_exactly_once(
        am: Alertmanager, receiver: WebhookReceiver) -> None:
    now = wall()
    inc = incident_id()
    s, t, c = sender(now), target(), connection(am.url)

    assert s.deliver(notification(now, inc), t, c).ok
    [first] = receiver.wait_for(1, incident_id=inc)
    assert first["status"] == "firing"
    assert first["alerts"][0]["labels"]["alertname"] == "success_rate"

    # The next evaluation re-sends the open incident so that it stays open: endsAt moves on.
    later = now + timedelta(seconds=1)
    assert s.deliver(notification(later, inc, "refresh"), t, c).ok
    [got] = am.alerts(incident_id=inc)
    assert parse(got["endsAt"]) == later + timedelta(hours=2)

    # Resolved: Alertmanager ends it and its receiver hears of it once.
    assert s.deliver(notification(wall(), inc, "resolved", resolved=True), t, c).ok
    got_all = receiver.wait_for(2, incident_id=inc)
    resolved = [b for b in got_all if b["status"] == "resolved"]
    assert len(resolved) == 1
    assert resolved[0]["alerts"][0]["status"] == "resolved"
    assert [b["status"] for b in got_all] == ["firing", "resolved"]  # no second firing
    assert [a for a in am.alerts(incident_id=inc) if a["status"]["state"] == "active"] == []

    # Re-sending the resolution (a retried run) and waiting several group intervals brings
    # no further notification.
    assert s.deliver(notification(wall(), inc, "resolved", resolved=True), t, c).ok
    with pytest.raises(AssertionError):
        receiver.wait_for(3, timeout_s=4, incident_id=inc)
    assert [b["status"] for b in receiver.notifications(incident_id=inc)] == [
        "firing", "resolved"]


def test_wrong_password_is_permanent_and_never_shown(am: Alertmanager) -> None:
    wrong = "wrong-canary-password-5521"
    delivery = sender().deliver(notification(wall(), incident_id()), target(),
                                connection(am.url, password=wrong))

    assert not delivery.ok
    assert delivery.permanent
    assert delivery.error is not None
    assert "401" in delivery.error and "login and password" in delivery.error
    assert wrong not in delivery.error and PASSWORD not in delivery.error


def test_unreachable_alertmanager_is_a_retried_failure_naming_the_connection() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    delivery = sender().deliver(notification(wall(), incident_id()),
                                target(max_retries=2), connection(url))

    assert not delivery.ok
    assert not delivery.permanent
    assert delivery.attempts == 3
    assert delivery.error is not None
    assert "'am_conn'" in delivery.error and "ConnectionError" in delivery.error
    assert "next evaluation retries" in delivery.error
    assert PASSWORD not in delivery.error


def test_url_that_is_not_alertmanager_is_permanent(receiver: WebhookReceiver) -> None:
    delivery = sender().deliver(notification(wall(), incident_id()), target(),
                                connection(receiver.url))

    assert not delivery.ok and delivery.permanent
    assert delivery.error is not None
    assert "404" in delivery.error and "base URL" in delivery.error


def test_label_names_are_made_valid_for_prometheus() -> None:
    assert label_name("team.name") == "team_name"
    assert label_name("9lives") == "_9lives"
    assert label_name("ok_Name1") == "ok_Name1"


def test_resolved_alert_ends_when_it_resolved_and_firing_ones_are_held() -> None:
    now = datetime(2026, 12, 1, 10, tzinfo=UTC)
    n = notification(now, "inc-1", "resolved", resolved=True)
    n.resolved[0]["resolved_at"] = "2026-12-01T09:55:00+00:00"
    [body] = postable_alerts(n, target(hold="90m"), now)
    assert body["endsAt"] == "2026-12-01T09:55:00+00:00"
    assert body["startsAt"] == "2026-12-01T09:50:00+00:00"
    [held] = postable_alerts(notification(now, "inc-1"), target(hold="90m"), now)
    assert held["endsAt"] == "2026-12-01T11:30:00+00:00"
    assert held["startsAt"] == "2026-12-01T10:00:00+00:00"
    assert held["annotations"]["fired_at"] == "2026-12-01T09:50:00+00:00"
    # A run catching up on a past hour holds the incident open from now, not from then:
    # Alertmanager would take an endsAt in its past as the alert being over.
    later = now + timedelta(hours=5)
    [caught_up] = postable_alerts(notification(now, "inc-1"), target(hold="90m"), later)
    assert caught_up["endsAt"] == "2026-12-01T16:30:00+00:00"


def test_connection_without_host_is_permanent() -> None:
    delivery = sender().deliver(notification(wall(), "inc-x"), target(),
                                TargetConnection(conn_id="am_conn"))
    assert not delivery.ok and delivery.permanent
    assert delivery.error is not None and "has no host" in delivery.error
