"""Alert targets beside Slack: Alertmanager, PagerDuty Events v2, a signed webhook, email.

A route names Slack ``connections`` (the first one that exists is used) and, beside them,
``targets``: names of entries in the config's ``targets:`` mapping, each of a ``type`` and
an Airflow connection. The engine gives every target of a planned message its own outbox
entry, claim, attempts and retries (:mod:`promptops.alerts.engine`), so a failure at one
target never re-sends to another, and a target that already received a message for an
incident is not sent the same message again when the message is planned anew.

This module holds what every target shares: the connection it sends with
(:class:`TargetConnection`, read from Airflow by
:func:`promptops.airflow_adapters.resources.target_connections`), an HTTP session with
retries and backoff that honours ``Retry-After`` (urllib3's ``Retry``), the plain-text
summary of a notification, and :class:`TargetNotifier`, which hands each outbox entry to
the sender of its target (or to Slack). The senders live in :mod:`.alertmanager`,
:mod:`.pagerduty`, :mod:`.webhook` and :mod:`.email`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from promptops.alerts.engine import Delivery, Notification
from promptops.secrets import redact

if TYPE_CHECKING:
    from promptops.alerts.config import AlertingConfig, TargetConfig

log = logging.getLogger(__name__)

#: HTTP statuses worth another try (PagerDuty and Alertmanager both answer 429 and 5xx so).
RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class TargetConnection:
    """An Airflow connection as a target sends with it. ``password`` is the secret (routing
    key, HMAC secret, SMTP or basic-auth password): it never appears in a log, an error or
    a :class:`Delivery`."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def secrets(self) -> set[str]:
        """What must never be shown: the password and the URL's user-info."""
        return {s for s in (self.password,) if s}

    def base_url(self, default_scheme: str = "http") -> str | None:
        """``host`` as a URL (a bare host gets the scheme, the port and the schema path)."""
        host = (self.host or "").strip()
        if not host:
            return None
        if "://" not in host:
            scheme = self.schema if self.schema in ("http", "https") else default_scheme
            host = f"{scheme}://{host}"
            if self.port:
                host = f"{host}:{self.port}"
        return host.rstrip("/")


class TargetConnections(Protocol):
    def get(self, conn_id: str) -> TargetConnection | None:
        """The connection, or None when it does not exist."""


class _NoConnections:
    def get(self, conn_id: str) -> TargetConnection | None:
        return None


#: No target connection exists (outside Airflow, unless a caller hands its own).
NO_TARGET_CONNECTIONS: TargetConnections = _NoConnections()


class TargetSender(Protocol):
    def deliver(self, n: Notification, target: TargetConfig,
                conn: TargetConnection) -> Delivery: ...


class _CappedRetry(Retry):
    """urllib3's ``Retry``, waiting at most ``cap`` seconds for a ``Retry-After``: a
    receiver asking for an hour must not hold an Airflow task that long (the next
    evaluation retries instead)."""

    cap: float = 30.0

    def new(self, **kw: Any) -> _CappedRetry:
        out = super().new(**kw)
        out.cap = self.cap
        return out

    def get_retry_after(self, response: Any) -> float | None:
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.cap)


def http_session(*, max_retries: int = 3, backoff_s: float = 0.5,
                 max_retry_after_s: float = 30.0) -> requests.Session:
    """A session that retries connection errors, 429 and 5xx with exponential backoff,
    waiting what a 429's ``Retry-After`` asks (up to ``max_retry_after_s``); POST included,
    since every target's request is idempotent by its key (dedup key, labels, delivery id)."""
    retry = _CappedRetry(total=max_retries, connect=max_retries, read=max_retries,
                         status=max_retries, backoff_factor=backoff_s,
                         backoff_max=max_retry_after_s, status_forcelist=RETRY_STATUSES,
                         allowed_methods=None, respect_retry_after_header=True,
                         raise_on_status=False)
    retry.cap = max_retry_after_s
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def attempts_of(response: requests.Response | None) -> int:
    """Requests made for one response: 1 plus the retries urllib3 recorded."""
    raw = getattr(response, "raw", None)
    retries = getattr(raw, "retries", None)
    return 1 + len(getattr(retries, "history", ()) or ())


def failure(what: str, conn: TargetConnection, exc: BaseException | None = None, *,
            status: int | None = None, body: str = "", attempts: int = 1,
            permanent: bool = False, hint: str = "") -> Delivery:
    """A failed delivery whose error names the target and what to do, without a secret."""
    secrets = conn.secrets()
    if exc is not None:
        reason = redact(str(getattr(exc, "reason", "") or exc), secrets)[:200]
        detail = f"{type(exc).__name__}: {reason}"
    elif status is not None:
        detail = f"HTTP {status}" + (f" {redact(body.strip(), secrets)[:200]}" if body else "")
    else:
        detail = redact(body.strip(), secrets)[:200] or "no answer"
    then = hint or ("fix the connection or the target's settings" if permanent
                    else "the next evaluation retries")
    return Delivery(ok=False, connection_id=conn.conn_id, attempts=attempts,
                    permanent=permanent, error=f"{what} through connection {conn.conn_id!r} "
                                              f"failed ({detail}) after {attempts} "
                                              f"attempt(s); {then}")


# -- plain text of a notification -------------------------------------------------------------

_STATUS = {"new": "opened", "update": "changed", "repeat": "still open", "resolved": "resolved",
           "refresh": "still open"}


def cause_text(cause: str) -> str:
    return cause.replace("&", ", ") if cause else "platform-wide"


def title(n: Notification) -> str:
    """One line: ``[FIRING:2] CRITICAL incident model=gpt-4o opened: <first summary>``."""
    alerts = n.firing or n.resolved
    count = len(alerts)
    state = "FIRING" if n.firing else "RESOLVED"
    lead = alerts[0]["summary"] if alerts else ""
    what = "incident" if n.incident_id else "alert group"
    return (f"[{state}:{count}] {n.severity.upper()} {what} {cause_text(n.cause)} "
            f"{_STATUS.get(n.reason, n.reason)}: {lead}").strip()


def alert_line(alert: Mapping[str, Any], *, resolved: bool) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in sorted((alert.get("labels") or {}).items()))
    mark = "RESOLVED" if resolved else str(alert.get("severity", "")).upper()
    return f"[{mark}] {alert.get('rule')} ({labels}): {alert.get('summary', '')}"


def annotation(n: Notification, name: str) -> str | None:
    """The first firing (else resolved) alert's annotation ``name``."""
    for a in [*n.firing, *n.resolved]:
        value = (a.get("annotations") or {}).get(name)
        if value:
            return str(value)
    return None


# -- dispatch ------------------------------------------------------------------------------------

class TargetNotifier:
    """The engine's notifier: an entry without a target goes to Slack, one with a target to
    that target's sender, with the connection the target names."""

    def __init__(self, config: AlertingConfig, slack: Any, connections: TargetConnections,
                 senders: Mapping[str, TargetSender] | None = None) -> None:
        self.config = config
        self.slack = slack
        self.connections = connections
        self._senders = dict(senders or {})

    def sender(self, kind: str) -> TargetSender:
        if kind not in self._senders:
            self._senders[kind] = SENDERS[kind]()
        return self._senders[kind]

    def deliver(self, notification: Notification) -> Delivery:
        if notification.target is None:
            if not notification.connections:  # a route of targets only: nothing for Slack
                return Delivery(ok=True, attempts=0)
            return self.slack.deliver(notification)
        target = self.config.targets.get(notification.target)
        if target is None:
            return Delivery(ok=False, attempts=0, permanent=True, error=(
                f"alert target {notification.target!r} is not in the alerting config's "
                f"targets; add it there or remove it from the route"))
        conn = self.connections.get(target.connection)
        if conn is None:
            return Delivery(ok=False, connection_id=target.connection, attempts=0,
                            permanent=True, error=(
                                f"alert target {notification.target!r} ({target.type}): "
                                f"Airflow connection {target.connection!r} does not exist; "
                                f"create it ({CONNECTION_HINT[target.type]})"))
        return self.sender(target.type).deliver(notification, target, conn)


#: What each target's connection holds, for the error that says it is missing.
CONNECTION_HINT = {
    "alertmanager": "host: the Alertmanager URL, e.g. http://alertmanager:9093; login and "
                    "password only for basic auth",
    "pagerduty": "type pagerduty_events, the integration (routing) key as its password",
    "webhook": "host: the receiver's URL; password: the shared HMAC secret",
    "email": "type smtp, host, port, login, password; extra from_email, and disable_ssl / "
             "disable_tls as the server needs (implicit TLS is the default, as Airflow's)",
}


def _alertmanager() -> TargetSender:
    from promptops.alerts.alertmanager import AlertmanagerSender
    return AlertmanagerSender()


def _pagerduty() -> TargetSender:
    from promptops.alerts.pagerduty import PagerDutySender
    return PagerDutySender()


def _webhook() -> TargetSender:
    from promptops.alerts.webhook import WebhookSender
    return WebhookSender()


def _email() -> TargetSender:
    from promptops.alerts.email import EmailSender
    return EmailSender()


SENDERS: dict[str, Callable[[], TargetSender]] = {
    "alertmanager": _alertmanager, "pagerduty": _pagerduty, "webhook": _webhook,
    "email": _email}


__all__ = ["CONNECTION_HINT", "NO_TARGET_CONNECTIONS", "RETRY_STATUSES", "SENDERS", "TargetConnection",
           "TargetConnections", "TargetNotifier", "TargetSender", "alert_line", "annotation",
           "attempts_of", "cause_text", "failure", "http_session", "title"]
