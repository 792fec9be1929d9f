"""Alert target ``alertmanager``: a notification as alerts posted to Alertmanager's API v2.

Contract: :meth:`AlertmanagerSender.deliver` posts one Alertmanager alert per member alert
of the notification (``POST <connection host>/api/v2/alerts``, basic auth when the
connection has a login) and reports a :class:`~promptops.alerts.engine.Delivery`:

- Labels identify the alert in Alertmanager and stay the same for its whole life:
  ``alertname`` (the rule), ``severity``, the alert's own labels (names made valid
  Prometheus label names, empty values dropped), ``promptops_scope`` and ``incident_id``
  when set. A severity change is another engine alert, so another label set.
- Annotations: ``summary``, ``description`` (the notification's one-line title), ``cause``
  (the incident's primary cause, which may sharpen while it is open), ``root_cause``, ``runbook``, ``heal_playbook`` when the alert has them, ``run_url``.
- ``startsAt`` is when it was first sent (the data's time is the ``fired_at``
  annotation; see :func:`postable_alerts` for why). A batch job cannot re-send every 30 seconds as
  Prometheus does, so a firing alert's ``endsAt`` is the evaluation time (or the time of
  sending, when a run catches up on past hours) plus the target's ``hold``; the engine re-sends open incidents each evaluation (reason ``refresh``), which
  moves ``endsAt`` on, and an alert lapses by itself if promptops stops. A resolved alert's
  ``endsAt`` is when it resolved, which resolves it in Alertmanager at once.
- Answers: 200 is delivered. Connection errors, 429 and 5xx are retried with backoff
  (``max_retries`` of the target) and then reported as a failure the next evaluation
  retries. 400 (the body is wrong: a promptops bug), 401/403 (credentials) and 404 (not
  Alertmanager's base URL) are permanent. No error holds the basic-auth password.

Re-posting the same alerts is harmless: Alertmanager merges alerts by label set and its
notification log keeps receivers from hearing about an unchanged group twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import requests

from promptops.alerts.engine import Delivery, Notification
from promptops.alerts.state import parse_iso
from promptops.alerts.targets import (
    TargetConnection,
    attempts_of,
    failure,
    http_session,
    title,
)

if TYPE_CHECKING:
    from promptops.alerts.config import TargetConfig

API_PATH = "/api/v2/alerts"

#: Alert annotations copied to Alertmanager when the alert has them.
COPIED_ANNOTATIONS = ("root_cause", "runbook", "heal_playbook")

_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")

_PERMANENT_HINTS = {
    400: "Alertmanager rejected the alerts as invalid; this is a promptops bug, please "
         "report it with this error",
    401: "Alertmanager refused the credentials; check the connection's login and password",
    403: "Alertmanager refused the credentials; check the connection's login and password",
    404: "nothing answers at /api/v2/alerts; the connection's host must be Alertmanager's "
         "base URL, e.g. http://alertmanager:9093",
}


def label_name(name: str) -> str:
    """``name`` as a valid Prometheus label name (``[a-zA-Z_][a-zA-Z0-9_]*``)."""
    cleaned = _INVALID_LABEL_CHARS.sub("_", name)
    if not cleaned or cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def _iso(value: datetime | str) -> str:
    """RFC 3339 as Alertmanager parses it (a timezone is required; UTC when naive)."""
    when = parse_iso(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat()


def alert_labels(n: Notification, alert: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for name, value in sorted((alert.get("labels") or {}).items()):
        if value is None or str(value) == "":
            continue  # Alertmanager treats an empty label as absent; keep the set canonical
        labels[label_name(str(name))] = str(value)
    # Ours last, so an alert label of the same name cannot replace them.
    labels["alertname"] = str(alert.get("rule") or "promptops")
    labels["severity"] = str(alert.get("severity") or "info")
    labels["promptops_scope"] = n.scope
    if n.incident_id:
        labels["incident_id"] = n.incident_id
    return labels


def alert_annotations(n: Notification, alert: Mapping[str, Any]) -> dict[str, str]:
    annotations = {"summary": str(alert.get("summary") or ""), "description": title(n)}
    if n.cause:  # an annotation: an incident's cause may sharpen while it is open
        annotations["cause"] = n.cause
    own = alert.get("annotations") or {}
    for name in COPIED_ANNOTATIONS:
        if own.get(name):
            annotations[name] = str(own[name])
    if n.run_url:
        annotations["run_url"] = n.run_url
    return annotations


def postable_alerts(n: Notification, target: TargetConfig,
                    sent_at: datetime | None = None) -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts``: the firing members held open for ``hold``
    past the evaluation, or past ``sent_at`` (now) when that is later: Alertmanager judges
    ``endsAt`` by its own clock, and a run catching up on past hours must not post an
    open incident as already over. The resolved ones end when they resolved."""
    sent_at = sent_at or datetime.now(UTC)
    held_until = _iso(max(n.evaluated_at, sent_at) + target.hold)
    body: list[dict[str, Any]] = []
    for alert, resolved in [*((a, False) for a in n.firing), *((a, True) for a in n.resolved)]:
        fired = alert.get("fired_at") or alert.get("active_since") or n.evaluated_at
        # A firing alert starts when it is sent. Alertmanager flushes a group at once when
        # an alert's start is older than its group_wait, racing the rest of this very
        # batch: an incident fired an hour ago (the data's time) would notify twice, first
        # half of it. Alertmanager keeps the earliest start of a re-sent alert; the data's
        # time is the ``fired_at`` annotation. A resolved one keeps its times (start before
        # end, as Alertmanager requires).
        started = fired if resolved else sent_at
        ends = (alert.get("resolved_at") or n.evaluated_at) if resolved else None
        annotations = alert_annotations(n, alert)
        annotations["fired_at"] = _iso(fired)
        item: dict[str, Any] = {
            "labels": alert_labels(n, alert),
            "annotations": annotations,
            "startsAt": _iso(started),
            "endsAt": _iso(ends) if ends is not None else held_until,
        }
        if n.run_url:
            item["generatorURL"] = n.run_url
        body.append(item)
    return body


class AlertmanagerSender:
    """Posts notifications to Alertmanager (see the module docstring)."""

    def __init__(self, *, backoff_s: float = 0.5, max_retry_after_s: float = 30.0,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.clock = clock or (lambda: datetime.now(UTC))

    def deliver(self, n: Notification, target: TargetConfig,
                conn: TargetConnection) -> Delivery:
        what = f"Alertmanager target {n.target!r}"
        base = conn.base_url()
        if base is None:
            return Delivery(ok=False, connection_id=conn.conn_id, attempts=0, permanent=True,
                            error=f"{what}: connection {conn.conn_id!r} has no host; set it "
                                  f"to Alertmanager's base URL, e.g. http://alertmanager:9093")
        alerts = postable_alerts(n, target, self.clock())
        if not alerts:
            return Delivery(ok=True, connection_id=conn.conn_id, attempts=0)
        auth = (conn.login, conn.password or "") if conn.login else None
        session = http_session(max_retries=target.max_retries, backoff_s=self.backoff_s,
                               max_retry_after_s=self.max_retry_after_s)
        try:
            with session:
                response = session.post(base + API_PATH, json=alerts, auth=auth,
                                        timeout=target.timeout.total_seconds())
        except requests.RequestException as exc:
            # urllib3 used every retry before giving up on the connection.
            return failure(what, conn, exc, attempts=target.max_retries + 1)
        attempts = attempts_of(response)
        status = response.status_code
        if 200 <= status < 300:
            return Delivery(ok=True, connection_id=conn.conn_id, attempts=attempts)
        if status in _PERMANENT_HINTS:
            return failure(what, conn, status=status, body=response.text, attempts=attempts,
                           permanent=True, hint=_PERMANENT_HINTS[status])
        # 429 and 5xx after the retries, or an answer we do not know: try again next time,
        # except other 4xx, which repeat until someone changes something.
        permanent = 400 <= status < 500 and status != 429
        return failure(what, conn, status=status, body=response.text, attempts=attempts,
                       permanent=permanent)


__all__ = ["API_PATH", "AlertmanagerSender", "alert_annotations", "alert_labels",
           "label_name", "postable_alerts"]
