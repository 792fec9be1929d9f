"""The PagerDuty target against the local Events API v2 receiver
(:mod:`promptops.simulator.pagerduty_sink`), which validates the documented body and answers
as PagerDuty does, 429 included."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from promptops.alerts.config import TargetConfig
from promptops.alerts.engine import Notification
from promptops.alerts.pagerduty import PagerDutySender, dedup_key
from promptops.alerts.targets import TargetConnection, alert_line, title
from promptops.simulator.pagerduty_sink import PagerDutySinkServer, start_in_thread, validate
from tests.helpers.prometheus import free_port

ROUTING_KEY = "R0UT1NGKEYcanary0123456789abcdef"  # 32 characters, a canary
RUN_URL = "http://localhost:8080/dags/promptops_hourly/runs/x"
EVALUATED = datetime(2026, 12, 1, 10, tzinfo=UTC)

ALERT: dict[str, Any] = {
    "fingerprint": "fp-1", "rule": "success_rate", "severity": "critical",
    "kind": "threshold",
    "labels": {"metric": "success_rate", "dimension": "model", "slice": "gpt-4o",
               "model": "gpt-4o"},
    "summary": "success_rate on model=gpt-4o is 0.8 (threshold 0.95)", "value": 0.8,
    "threshold": 0.95,
    "annotations": {"root_cause": "provider outage on gpt-4o", "runbook": "https://rb/sr",
                    "heal_playbook": "switch_model"},
    "pending_for": 1, "keep_firing_for": 0, "status": "firing",
    "active_since": "2026-12-01T09:50:00+00:00", "last_seen_at": None, "hits": 1,
    "misses": 0, "fired_at": "2026-12-01T10:00:00+00:00", "resolved_at": None,
    "incident_id": "inc-1", "muted_by": None}
WARNING: dict[str, Any] = {
    **ALERT, "fingerprint": "fp-2", "rule": "latency_p95", "severity": "warning",
    "labels": {"metric": "latency_p95", "dimension": "app", "slice": "chat", "app": "chat"},
    "summary": "latency_p95 on app=chat is 9 s", "annotations": {}}


@pytest.fixture(scope="module")
def sink_server() -> Iterator[PagerDutySinkServer]:
    server = start_in_thread("127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def sink(sink_server: PagerDutySinkServer) -> Iterator[str]:
    requests.delete(sink_server.url + "/events", timeout=5)
    requests.delete(sink_server.url + "/_faults", timeout=5)
    yield sink_server.url
    requests.delete(sink_server.url + "/_faults", timeout=5)


def notification(reason: str = "new", *, firing: list[dict[str, Any]] | None = None,
                 resolved: list[dict[str, Any]] | None = None, incident: str | None = "inc-1",
                 scope: str = "hourly") -> Notification:
    firing = [ALERT] if firing is None else firing
    return Notification(
        id=f"n-{reason}", scope=scope,
        group_key=f"incident:{incident}" if incident else "rule=success_rate",
        group_labels={}, reason=reason, connections=[], evaluated_at=EVALUATED,
        run_id="scheduled__2026-12-01T09:00:00+00:00", run_url=RUN_URL, firing=firing,
        resolved=resolved or [], new=[a["fingerprint"] for a in firing],
        incident_id=incident, cause="model=gpt-4o" if incident else "",
        opened_at="2026-12-01T10:00:00+00:00" if incident else None, target="pd")


def target(**overrides: Any) -> TargetConfig:
    return TargetConfig.model_validate({"type": "pagerduty", "connection": "pd_conn",
                                        "max_retries": 2, **overrides})


def connection(url: str | None, key: str | None = ROUTING_KEY,
               extra: dict[str, Any] | None = None) -> TargetConnection:
    return TargetConnection(conn_id="pd_conn", conn_type="pagerduty_events", host=url,
                            password=key, extra=extra or {})


def sender() -> PagerDutySender:
    return PagerDutySender(backoff_s=0.01, max_retry_after_s=1.0)


def get(sink: str, what: str) -> list[dict[str, Any]]:
    return list(requests.get(f"{sink}/{what}", timeout=5).json()[what])


def fault(sink: str, rule: dict[str, Any]) -> None:
    requests.post(f"{sink}/_faults", json=rule, timeout=5).raise_for_status()


def test_trigger_body_is_the_documented_event_field_by_field(sink: str) -> None:
    n = notification(firing=[ALERT, WARNING])
    delivery = sender().deliver(n, target(), connection(sink))

    assert delivery.ok, delivery.error
    assert delivery.attempts == 1
    [event] = get(sink, "events")
    assert "routing_key" not in event  # the sink never stores it
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "promptops-inc-1"
    assert event["client"] == "promptops"
    assert event["client_url"] == RUN_URL
    assert event["links"] == [{"href": RUN_URL, "text": "Airflow run"}]
    payload = event["payload"]
    assert payload["summary"] == title(n)
    assert payload["source"] == "promptops/hourly"
    assert payload["severity"] == "critical"
    assert payload["timestamp"] == "2026-12-01T10:00:00+00:00"
    assert payload["component"] == "model=gpt-4o"
    assert payload["group"] == "gpt-4o"  # the lead (most severe) alert's model
    assert payload["class"] == "success_rate"
    details = payload["custom_details"]
    assert details["incident_id"] == "inc-1"
    assert details["cause"] == "model=gpt-4o"
    assert details["opened_at"] == "2026-12-01T10:00:00+00:00"
    assert details["root_cause"] == "provider outage on gpt-4o"
    assert details["runbook"] == "https://rb/sr"
    assert details["heal_suggestion"] == "switch_model"
    assert details["alerts"] == [alert_line(ALERT, resolved=False),
                                 alert_line(WARNING, resolved=False)]
    assert set(payload) == {"summary", "source", "severity", "timestamp", "component",
                            "group", "class", "custom_details"}


def test_severities_map_and_summary_fits_pagerduty(sink: str) -> None:
    long = {**WARNING, "summary": "x" * 3000}
    assert sender().deliver(notification(firing=[long]), target(), connection(sink)).ok
    payload = get(sink, "events")[0]["payload"]
    assert payload["severity"] == "warning"
    assert payload["group"] == "chat"  # app wins over model
    assert len(payload["summary"]) == 1024


def test_repeated_trigger_keeps_one_incident_and_resolve_closes_it(sink: str) -> None:
    s, t, c = sender(), target(), connection(sink)
    assert s.deliver(notification("new"), t, c).ok
    assert s.deliver(notification("repeat"), t, c).ok
    assert s.deliver(notification("new"), t, c).ok  # a retried run sends its message again
    # the linked health scope shares the incident id, hence the key
    assert s.deliver(notification("update", scope="health"), t, c).ok

    [incident] = get(sink, "incidents")
    assert incident["status"] == "triggered"
    assert incident["triggers"] == 4
    assert incident["dedup_key"] == "promptops-inc-1"

    resolved = {**ALERT, "status": "resolved", "resolved_at": "2026-12-01T11:00:00+00:00"}
    assert s.deliver(notification("resolved", firing=[], resolved=[resolved]), t, c).ok
    [incident] = get(sink, "incidents")
    assert incident["status"] == "resolved"
    last = get(sink, "events")[-1]
    # a resolve carries only what the API needs (the routing key is not stored)
    assert {k: last[k] for k in ("event_action", "dedup_key")} == {
        "event_action": "resolve", "dedup_key": "promptops-inc-1"}
    assert set(last) == {"event_action", "dedup_key", "routing_key_sha256", "received_at"}


def test_label_groups_get_a_stable_key_per_scope_and_group() -> None:
    a = dedup_key(notification(incident=None))
    assert a == dedup_key(notification("repeat", incident=None))
    assert a.startswith("promptops-") and len(a) <= 255
    assert a != dedup_key(notification(incident=None, scope="health"))


def test_rate_limit_then_success_is_retried_and_delivered(sink: str) -> None:
    fault(sink, {"mode": "rate_limit", "retry_after": 1, "count": 1})  # honoured
    fault(sink, {"mode": "rate_limit", "count": 1})  # no Retry-After: the backoff applies

    delivery = sender().deliver(notification(), target(max_retries=3), connection(sink))

    assert delivery.ok, delivery.error
    assert delivery.attempts == 3
    assert len(get(sink, "incidents")) == 1


def test_rate_limit_that_persists_is_a_failure_the_next_run_retries(sink: str) -> None:
    fault(sink, {"mode": "rate_limit", "retry_after": 0, "count": None})

    delivery = sender().deliver(notification(), target(max_retries=2), connection(sink))

    assert not delivery.ok
    assert not delivery.permanent
    assert delivery.attempts == 3
    assert delivery.error is not None and "HTTP 429" in delivery.error
    assert "'pd_conn'" in delivery.error
    assert ROUTING_KEY not in delivery.error
    assert get(sink, "events") == []


def test_server_errors_are_retried(sink: str) -> None:
    fault(sink, {"mode": "server_error", "status": 503, "count": 2})
    delivery = sender().deliver(notification(), target(max_retries=2), connection(sink))
    assert delivery.ok, delivery.error
    assert delivery.attempts == 3


def test_invalid_routing_key_is_permanent_and_the_key_never_shown(sink: str) -> None:
    short_key = "short-canary-key-42"
    delivery = sender().deliver(notification(), target(), connection(sink, key=short_key))

    assert not delivery.ok
    assert delivery.permanent
    assert delivery.attempts == 1  # a 400 is not retried
    assert delivery.error is not None
    assert "PagerDuty refused the event" in delivery.error
    assert "routing_key" in delivery.error  # PagerDuty's own reason is quoted
    assert short_key not in delivery.error
    assert get(sink, "events") == []


def test_routing_key_from_extra_is_used_and_redacted(sink: str) -> None:
    conn = connection(sink, key=None, extra={"routing_key": ROUTING_KEY})
    assert sender().deliver(notification(), target(), conn).ok

    bad = connection(sink, key=None, extra={"integration_key": "bad-extra-canary"})
    delivery = sender().deliver(notification(), target(), bad)
    assert delivery.permanent and delivery.error is not None
    assert "bad-extra-canary" not in delivery.error


def test_missing_routing_key_is_permanent(sink: str) -> None:
    delivery = sender().deliver(notification(), target(), connection(sink, key=None))
    assert not delivery.ok and delivery.permanent and delivery.attempts == 0
    assert delivery.error is not None and "routing key" in delivery.error


def test_unreachable_pagerduty_is_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    delivery = sender().deliver(notification(), target(max_retries=1), connection(url))
    assert not delivery.ok and not delivery.permanent
    assert delivery.attempts == 2
    assert delivery.error is not None and ROUTING_KEY not in delivery.error


def test_sink_validates_the_documented_body() -> None:
    ok: dict[str, Any] = {
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": "k",
        "payload": {"summary": "s", "source": "h", "severity": "error"}}
    assert validate(ok) == []
    assert validate({**ok, "event_action": "fire"})
    assert validate({**ok, "dedup_key": "k" * 256})
    assert validate({**ok, "payload": {**ok["payload"], "severity": "fatal"}})
    assert validate({**ok, "payload": {"summary": "s", "severity": "info"}})  # no source
    assert validate({k: v for k, v in ok.items() if k != "payload"})
    assert validate({"routing_key": ROUTING_KEY, "event_action": "resolve"})  # no dedup_key
    assert validate({"routing_key": ROUTING_KEY, "event_action": "resolve",
                     "dedup_key": "k"}) == []
