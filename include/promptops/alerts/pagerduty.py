"""Alert target ``pagerduty``: a notification as a PagerDuty Events API v2 event.

Contract: :meth:`PagerDutySender.deliver` posts one event to ``<base>/v2/enqueue`` (base:
the connection's host, ``https://events.pagerduty.com`` when it has none) and reports a
:class:`~promptops.alerts.engine.Delivery`:

- The routing (integration) key is the connection's password, as the Airflow PagerDuty
  provider's ``pagerduty_events`` connection keeps it; extra ``routing_key`` or
  ``integration_key`` are read when the password is empty. It never appears in an error.
- ``dedup_key`` is ``promptops-<incident id>`` (label groups: ``promptops-`` and a short
  hash of scope and group key). PagerDuty applies every event with that key to the one
  open alert, so a retried or repeated run, or the linked health and hourly scopes (which
  share incident ids), never open a second incident.
- While any member fires (reasons new, update, repeat, refresh) the event is a
  ``trigger`` with the documented payload (summary, source, severity, timestamp,
  component, group, class, custom_details), a link to the Airflow run, and ``client``.
  When none fires it is a ``resolve`` with only the routing key, action and dedup key.
- Answers: 202 is delivered. 429 (honouring ``Retry-After``), 5xx and connection errors
  are retried with backoff, then reported as a failure the next evaluation retries.
  400 is permanent: PagerDuty refused the event (an invalid routing key is a 400 too), and
  its ``errors`` are quoted.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any

import requests

from promptops.alerts.engine import Delivery, Notification
from promptops.alerts.targets import (
    TargetConnection,
    alert_line,
    annotation,
    attempts_of,
    failure,
    http_session,
    title,
)
from promptops.contracts.findings import SEVERITY_ORDER
from promptops.secrets import redact

if TYPE_CHECKING:
    from promptops.alerts.config import TargetConfig

DEFAULT_BASE = "https://events.pagerduty.com"
ENQUEUE_PATH = "/v2/enqueue"
#: Limits of the Events API v2 (its documentation): summary and dedup key lengths.
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
#: Our severities as PagerDuty's (critical, error, warning, info).
SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
#: Extra fields read for the routing key when the connection's password is empty.
KEY_EXTRAS = ("routing_key", "integration_key")


def routing_key(conn: TargetConnection) -> str | None:
    if conn.password:
        return conn.password
    for name in KEY_EXTRAS:
        value = conn.extra.get(name)
        if value:
            return str(value)
    return None


def dedup_key(n: Notification) -> str:
    """One key per incident across runs, retries and scopes; label groups hash scope and
    group key (their key can be long and holds label values)."""
    if n.incident_id:
        return f"promptops-{n.incident_id}"[:MAX_DEDUP_KEY]
    digest = hashlib.sha256(f"{n.scope}\0{n.group_key}".encode()).hexdigest()[:16]
    return f"promptops-{digest}"


def _lead(n: Notification) -> Mapping[str, Any]:
    """The most severe firing alert (the first one among equals)."""
    alerts = n.firing or n.resolved
    return max(alerts, key=lambda a: SEVERITY_ORDER.get(a.get("severity", ""), -1),
               default={})


def event(n: Notification, key: str) -> dict[str, Any]:
    """The Events API v2 body for ``n`` sent with routing key ``key``."""
    if not n.firing:
        return {"routing_key": key, "event_action": "resolve", "dedup_key": dedup_key(n)}
    lead = _lead(n)
    labels = lead.get("labels") or {}
    details: dict[str, Any] = {"incident_id": n.incident_id, "cause": n.cause or None,
                               "opened_at": n.opened_at,
                               "root_cause": annotation(n, "root_cause"),
                               "runbook": annotation(n, "runbook"),
                               "heal_suggestion": annotation(n, "heal_playbook"),
                               "reason": n.reason, "run_id": n.run_id}
    details = {k: v for k, v in details.items() if v}
    details["alerts"] = [alert_line(a, resolved=False) for a in n.firing] + \
        [alert_line(a, resolved=True) for a in n.resolved]
    payload: dict[str, Any] = {
        "summary": title(n)[:MAX_SUMMARY],
        "source": f"promptops/{n.scope}",
        "severity": SEVERITY.get(n.severity, "error"),
        "timestamp": n.evaluated_at.astimezone(UTC).isoformat(),
        "class": str(lead.get("rule") or ""),
        "custom_details": details,
    }
    if n.cause:
        payload["component"] = n.cause
    group = labels.get("app") or labels.get("model")
    if group:
        payload["group"] = str(group)
    if not payload["class"]:
        del payload["class"]
    body: dict[str, Any] = {"routing_key": key, "event_action": "trigger",
                            "dedup_key": dedup_key(n), "payload": payload,
                            "client": "promptops"}
    if n.run_url:
        body["links"] = [{"href": n.run_url, "text": "Airflow run"}]
        body["client_url"] = n.run_url
    return body


def _refusal(response: requests.Response) -> str:
    """PagerDuty's reasons from a 400 body (``errors``), else its text."""
    try:
        data = response.json()
    except ValueError:
        return response.text
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e) for e in errors)
        return str(data.get("message") or response.text)
    return response.text


class PagerDutySender:
    """Sends notifications as PagerDuty events (see the module docstring)."""

    def __init__(self, *, backoff_s: float = 0.5, max_retry_after_s: float = 30.0) -> None:
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s

    def deliver(self, n: Notification, target: TargetConfig,
                conn: TargetConnection) -> Delivery:
        what = f"PagerDuty target {n.target!r}"
        key = routing_key(conn)
        if not key:
            return Delivery(ok=False, connection_id=conn.conn_id, attempts=0, permanent=True,
                            error=f"{what}: connection {conn.conn_id!r} has no routing key; "
                                  f"set its password to the Events API v2 integration key")
        # A key from the extra is as secret as the password: redact it the same way.
        shown = conn if conn.password else dataclasses.replace(conn, password=key)
        url = (conn.base_url(default_scheme="https") or DEFAULT_BASE)
        if not url.endswith(ENQUEUE_PATH):
            url += ENQUEUE_PATH
        session = http_session(max_retries=target.max_retries, backoff_s=self.backoff_s,
                               max_retry_after_s=self.max_retry_after_s)
        try:
            with session:
                response = session.post(url, json=event(n, key),
                                        timeout=target.timeout.total_seconds())
        except requests.RequestException as exc:
            return failure(what, shown, exc, attempts=target.max_retries + 1)
        attempts = attempts_of(response)
        status = response.status_code
        if 200 <= status < 300:
            return Delivery(ok=True, connection_id=conn.conn_id, attempts=attempts)
        if status == 400:
            refusal = redact(_refusal(response), {key})[:300]
            return failure(what, shown, status=status, attempts=attempts, permanent=True,
                           hint=f"PagerDuty refused the event: {refusal}; when it names the "
                                f"routing key, set the connection's password to the "
                                f"32-character integration key of an Events API v2 "
                                f"integration")
        permanent = 400 <= status < 500 and status != 429
        return failure(what, shown, status=status, body=response.text, attempts=attempts,
                       permanent=permanent)


__all__ = ["DEFAULT_BASE", "ENQUEUE_PATH", "PagerDutySender", "dedup_key", "event",
           "routing_key"]
