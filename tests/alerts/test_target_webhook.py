"""The signed webhook target against a real receiver: the simulator's webhook sink, an HTTP
server on 127.0.0.1 that verifies the signature with its own secret."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import requests

from promptops.alerts.config import TargetConfig
from promptops.alerts.engine import Notification
from promptops.alerts.targets import TargetConnection
from promptops.alerts.webhook import WebhookSender, sign, verify_signature
from promptops.simulator.webhook_sink import WebhookSinkServer, start_in_thread

SECRET = "whsec-canary-7f3e9a1b2c"  # noqa: S105 - a test secret the assertions look for

ALERT: dict[str, Any] = {
    "fingerprint": "fp-success-gpt4o", "rule": "success_rate", "severity": "critical",
    "kind": "threshold",
    "labels": {"metric": "success_rate", "dimension": "model", "slice": "gpt-4o"},
    "summary": "success rate 81% for model=gpt-4o", "value": 0.81, "threshold": 0.95,
    "annotations": {"root_cause": "provider 5xx", "runbook": "https://runbooks.example/sr"},
    "pending_for": None, "keep_firing_for": None, "status": "firing",
    "active_since": "2026-12-01T09:00:00+00:00", "last_seen_at": "2026-12-01T10:00:00+00:00",
    "hits": 2, "misses": 0, "fired_at": "2026-12-01T10:00:00+00:00", "resolved_at": None,
    "incident_id": "inc-1", "muted_by": None,
}


def notification(nid: str = "n-1", **over: Any) -> Notification:
    fields: dict[str, Any] = dict(
        id=nid, scope="hourly", group_key="incident:inc-1", group_labels={}, reason="new",
        connections=[], evaluated_at=datetime(2026, 12, 1, 10, tzinfo=UTC),
        run_id="scheduled__2026-12-01T09:00:00+00:00",
        run_url="http://localhost:8080/dags/promptops_hourly/runs/x", firing=[ALERT],
        resolved=[], new=[ALERT["fingerprint"]], incident_id="inc-1", cause="model=gpt-4o",
        opened_at="2026-12-01T10:00:00+00:00", target="ops_webhook")
    fields.update(over)
    return Notification(**fields)


def target(**over: Any) -> TargetConfig:
    return TargetConfig(type="webhook", connection="promptops_webhook",
                        **{"max_retries": 2, **over})


def conn(url: str, secret: str | None = SECRET) -> TargetConnection:
    return TargetConnection(conn_id="promptops_webhook", conn_type="http", host=url,
                            password=secret)


@pytest.fixture(scope="module")
def hook_server() -> Iterator[WebhookSinkServer]:
    server = start_in_thread("127.0.0.1", 0, SECRET)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def hook(hook_server: WebhookSinkServer) -> Iterator[str]:
    requests.delete(hook_server.url + "/messages", timeout=5)
    requests.delete(hook_server.url + "/_faults", timeout=5)
    yield hook_server.url
    requests.delete(hook_server.url + "/_faults", timeout=5)


def received(url: str) -> dict[str, Any]:
    return requests.get(url + "/messages", timeout=5).json()


def set_faults(url: str, *faults: dict[str, Any]) -> None:
    requests.post(url + "/_faults", json=list(faults), timeout=5).raise_for_status()


SENDER = WebhookSender(backoff_s=0.01, max_retry_after_s=2)


def test_body_headers_and_signature(hook: str) -> None:
    delivery = SENDER.deliver(notification(), target(), conn(hook + "/hooks/promptops"))
    assert delivery.ok and delivery.attempts == 1 and delivery.connection_id == "promptops_webhook"
    got = received(hook)
    assert got["duplicates"] == 0 and len(got["messages"]) == 1
    msg = got["messages"][0]
    assert msg["path"] == "/hooks/promptops" and msg["delivery_id"] == "n-1"
    headers = msg["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "promptops"
    assert headers["X-Promptops-Delivery"] == "n-1"
    # The receiver's own check (done by the hook) and the documented recipe agree.
    assert verify_signature(SECRET, headers["X-Promptops-Timestamp"], msg["raw"].encode(),
                            headers["X-Promptops-Signature"])
    assert headers["X-Promptops-Signature"] == sign(
        SECRET, headers["X-Promptops-Timestamp"], msg["raw"].encode())
    body = msg["body"]
    assert body == orjson.loads(msg["raw"])
    assert {k: body[k] for k in ("version", "id", "scope", "reason", "severity", "run_id",
                                 "run_url", "group_key")} == {
        "version": "1", "id": "n-1", "scope": "hourly", "reason": "new",
        "severity": "critical", "run_id": "scheduled__2026-12-01T09:00:00+00:00",
        "run_url": "http://localhost:8080/dags/promptops_hourly/runs/x",
        "group_key": "incident:inc-1"}
    assert body["evaluated_at"] == "2026-12-01T10:00:00+00:00"
    assert body["incident"] == {"id": "inc-1", "cause": "model=gpt-4o",
                                "opened_at": "2026-12-01T10:00:00+00:00"}
    assert body["resolved"] == []
    [alert] = body["firing"]
    assert alert == {k: ALERT[k] for k in (
        "fingerprint", "rule", "severity", "labels", "summary", "value", "threshold",
        "annotations", "fired_at", "resolved_at", "active_since")}
    assert SECRET not in msg["raw"]


def test_bare_host_uses_schema_and_port(hook_server: WebhookSinkServer, hook: str) -> None:
    port = hook_server.server_address[1]
    bare = TargetConnection(conn_id="promptops_webhook", host="127.0.0.1", port=port,
                            schema="http", password=SECRET)
    assert SENDER.deliver(notification(), target(), bare).ok
    assert [m["path"] for m in received(hook)["messages"]] == ["/"]


def test_label_group_and_resolved_body(hook: str) -> None:
    gone = {**ALERT, "status": "resolved", "resolved_at": "2026-12-01T11:00:00+00:00"}
    n = notification("n-2", reason="resolved", firing=[], resolved=[gone], incident_id=None,
                     group_key="labels:rule=success_rate", cause="", opened_at=None)
    assert SENDER.deliver(n, target(), conn(hook)).ok
    body = received(hook)["messages"][0]["body"]
    assert body["incident"] is None and body["firing"] == []
    assert body["resolved"][0]["resolved_at"] == "2026-12-01T11:00:00+00:00"
    assert body["group_key"] == "labels:rule=success_rate"


def test_wrong_secret_is_refused_and_permanent(hook: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    wrong = "not-the-receivers-secret-91c2"  # noqa: S105
    with caplog.at_level(logging.DEBUG):
        delivery = SENDER.deliver(notification(), target(), conn(hook, wrong))
    assert not delivery.ok and delivery.permanent and delivery.attempts == 1
    assert delivery.error is not None
    assert "HTTP 401" in delivery.error and "'promptops_webhook'" in delivery.error
    assert "password" in delivery.error  # says what to fix
    assert wrong not in delivery.error and wrong not in caplog.text
    assert SECRET not in delivery.error and SECRET not in caplog.text
    assert received(hook)["messages"] == []


def test_missing_secret_is_refused_before_sending(hook: str) -> None:
    delivery = SENDER.deliver(notification(), target(), conn(hook, None))
    assert not delivery.ok and delivery.permanent and delivery.attempts == 0
    assert delivery.error is not None
    assert "promptops_webhook" in delivery.error and "password" in delivery.error
    assert received(hook)["messages"] == []


def test_rate_limited_then_delivered_once(hook: str) -> None:
    set_faults(hook, {"mode": "rate_limit", "retry_after": 1})
    delivery = SENDER.deliver(notification(), target(), conn(hook))
    assert delivery.ok and delivery.attempts == 2
    got = received(hook)
    assert len(got["messages"]) == 1 and got["duplicates"] == 0


def test_disconnect_then_delivered(hook: str) -> None:
    set_faults(hook, {"mode": "disconnect"})
    delivery = SENDER.deliver(notification(), target(), conn(hook))
    assert delivery.ok and delivery.attempts == 2
    assert len(received(hook)["messages"]) == 1


def test_server_error_forever_is_transient(hook: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    set_faults(hook, {"mode": "server_error", "status": 503, "count": None})
    with caplog.at_level(logging.DEBUG):
        delivery = SENDER.deliver(notification(), target(max_retries=2), conn(hook))
    assert not delivery.ok and not delivery.permanent and delivery.attempts == 3
    assert delivery.error is not None and "HTTP 503" in delivery.error
    assert "retries" in delivery.error
    assert SECRET not in delivery.error and SECRET not in caplog.text
    assert received(hook)["messages"] == []


def test_gone_url_is_permanent(hook: str) -> None:
    set_faults(hook, {"mode": "invalid_webhook", "status": 410})
    delivery = SENDER.deliver(notification(), target(), conn(hook))
    assert not delivery.ok and delivery.permanent and delivery.attempts == 1
    assert delivery.error is not None and "HTTP 410" in delivery.error


def test_same_delivery_twice_is_a_recognised_duplicate(hook: str) -> None:
    assert SENDER.deliver(notification(), target(), conn(hook)).ok
    assert SENDER.deliver(notification(), target(), conn(hook)).ok
    assert SENDER.deliver(notification("n-3"), target(), conn(hook)).ok
    got = received(hook)
    assert [m["delivery_id"] for m in got["messages"]] == ["n-1", "n-3"]
    assert got["duplicates"] == 1


def test_unreachable_receiver_is_transient() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delivery = SENDER.deliver(notification(), target(max_retries=1),
                              conn(f"http://127.0.0.1:{port}/hook"))
    assert not delivery.ok and not delivery.permanent and delivery.attempts == 2
    assert delivery.error is not None and "Connection refused" in delivery.error
    assert "/hook" not in delivery.error


def test_sink_refuses_unsigned_and_stale_requests(hook: str) -> None:
    raw = orjson.dumps({"version": "1"})
    unsigned = requests.post(hook + "/hook", data=raw, timeout=5,
                             headers={"X-Promptops-Delivery": "x"})
    assert unsigned.status_code == 401
    old = int(time.time()) - 3600
    stale = requests.post(hook + "/hook", data=raw, timeout=5, headers={
        "X-Promptops-Delivery": "x", "X-Promptops-Timestamp": str(old),
        "X-Promptops-Signature": sign(SECRET, old, raw)})
    assert stale.status_code == 401 and "stale" in stale.json()["error"]
    assert received(hook)["messages"] == []


def test_verify_signature() -> None:
    body = b'{"version":"1","id":"n-1"}'
    now = 1_780_000_000
    good = sign(SECRET, now, body)
    assert verify_signature(SECRET, str(now), body, good, now=now + 10)
    # A rotation: the header may carry the old and the new secret's signatures.
    assert verify_signature(SECRET, now, body, f"v1=deadbeef, {good}", now=now)
    # Stale: the same valid signature replayed after the window.
    assert not verify_signature(SECRET, now, body, good, now=now + 301)
    assert not verify_signature(SECRET, now, body, good, now=now - 301)
    assert verify_signature(SECRET, now, body, good, now=now + 301, tolerance_s=600)
    # Tampered body, tampered timestamp, wrong secret, garbage.
    assert not verify_signature(SECRET, now, body.replace(b"n-1", b"n-2"), good, now=now)
    assert not verify_signature(SECRET, now + 1, body, good, now=now)
    assert not verify_signature("other", now, body, good, now=now)
    assert not verify_signature(SECRET, "soon", body, good, now=now)
    assert not verify_signature(SECRET, now, body, None, now=now)
    assert not verify_signature(SECRET, now, body, good.removeprefix("v1="), now=now)
