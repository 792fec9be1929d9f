"""The generic webhook target: a documented JSON body, HMAC-signed with a shared secret.

:class:`WebhookSender` POSTs one notification as JSON (:func:`payload`, version ``"1"``;
every field is described in ``docs/webhook.md``) to the URL of the target's Airflow
connection (``host``: the full URL, or a bare host completed by ``schema`` and ``port``).
The connection's ``password`` is the shared secret; the request carries

- ``X-Promptops-Timestamp``: unix seconds when the delivery started;
- ``X-Promptops-Signature``: ``v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`` (the
  Stripe scheme: signing the timestamp with the body lets a receiver reject a replayed
  request whose timestamp is older than its tolerance);
- ``X-Promptops-Delivery``: the notification id, the idempotency key: a request with an id
  the receiver has seen is the same message again (a retry after a lost answer);
- ``Content-Type: application/json`` and ``User-Agent: promptops``.

Answers: 2xx is delivered. 408, 429, 5xx and connection errors are retried within the
delivery with exponential backoff (``Retry-After`` honoured, up to ``max_retry_after_s``),
then reported as a failure the next evaluation retries. Any other answer (400, 401, 403,
404, 410, a redirect, ...) is permanent: retrying cannot help until someone fixes the URL,
the secret or the receiver. A failure is a :class:`~promptops.alerts.engine.Delivery`, never
raised, and never holds the secret.

:func:`verify_signature` is the receiver's half, used by
:mod:`promptops.simulator.webhook_sink` and shown in the docs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError

from promptops.alerts.engine import Delivery, Notification
from promptops.alerts.targets import (
    CONNECTION_HINT,
    TargetConnection,
    attempts_of,
    failure,
    http_session,
    title,
)
from promptops.errors import ConfigError

if TYPE_CHECKING:
    from promptops.alerts.config import TargetConfig

log = logging.getLogger(__name__)

VERSION = "1"
TIMESTAMP_HEADER = "X-Promptops-Timestamp"
SIGNATURE_HEADER = "X-Promptops-Signature"
DELIVERY_HEADER = "X-Promptops-Delivery"
USER_AGENT = "promptops"
#: Statuses retried within one delivery: a request timeout, rate limiting, server errors.
RETRY_STATUSES = (408, 429, *range(500, 600))
#: The alert fields a webhook body carries (the rest of an alert view is engine state).
ALERT_FIELDS = ("fingerprint", "rule", "severity", "labels", "summary", "value", "threshold",
                "annotations", "fired_at", "resolved_at", "active_since")


class WebhookConfigError(ConfigError):
    """The target's connection cannot work as set (the Delivery's error says what to set)."""


def _alert(view: dict[str, Any]) -> dict[str, Any]:
    return {k: view.get(k) for k in ALERT_FIELDS}


def payload(n: Notification) -> dict[str, Any]:
    """The JSON body of one notification (version ``"1"``, see ``docs/webhook.md``)."""
    incident = None
    if n.incident_id:
        incident = {"id": n.incident_id, "cause": n.cause, "opened_at": n.opened_at}
    return {
        "version": VERSION,
        "id": n.id,
        "scope": n.scope,
        "reason": n.reason,
        "severity": n.severity,
        "title": title(n),
        "evaluated_at": n.evaluated_at.isoformat(),
        "run_id": n.run_id,
        "run_url": n.run_url,
        "incident": incident,
        "group_key": n.group_key,
        "group_labels": dict(n.group_labels),
        "firing": [_alert(a) for a in n.firing],
        "resolved": [_alert(a) for a in n.resolved],
    }


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`` with the shared secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify_signature(secret: str, timestamp: str | int | None, body: bytes,
                     signature: str | None, *, tolerance_s: float = 300,
                     now: float | None = None) -> bool:
    """True when ``signature`` (the ``X-Promptops-Signature`` header) signs ``timestamp``
    and ``body`` with ``secret``, and the timestamp is within ``tolerance_s`` of ``now``
    (default: the clock), so an old request replayed later is refused. The header may list
    several ``v1=`` values separated by commas (one per secret during a rotation); any match
    counts. Compared in constant time."""
    text = str(timestamp).strip() if timestamp is not None else ""
    if not secret or not signature or not (text.isascii() and text.isdigit()):
        return False
    ts = int(text)
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = sign(secret, text, body)
    candidates = [part.strip() for part in signature.split(",")]
    # compare_digest for every candidate: no early exit that would time the match.
    matches = [hmac.compare_digest(expected, c) for c in candidates if c.startswith("v1=")]
    return any(matches)


class WebhookSender:
    """Sends notifications to a webhook target (see the module docstring).

    ``backoff_s`` is the first wait between retries (doubling after each);
    ``max_retry_after_s`` caps both a backoff and a wait that a ``Retry-After`` asks for.
    """

    def __init__(self, *, backoff_s: float = 0.5, max_retry_after_s: float = 30.0) -> None:
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s

    def _session(self, target: TargetConfig) -> requests.Session:
        session = http_session(max_retries=target.max_retries, backoff_s=self.backoff_s,
                               max_retry_after_s=self.max_retry_after_s)
        for prefix in ("http://", "https://"):
            adapter = cast(HTTPAdapter, session.adapters[prefix])
            # The shared session retries 429 and 500/502/503/504; a webhook receiver also
            # answers 408 and other 5xx for transient trouble.
            adapter.max_retries = adapter.max_retries.new(status_forcelist=RETRY_STATUSES)
        return session

    def deliver(self, n: Notification, target: TargetConfig,
                conn: TargetConnection) -> Delivery:
        what = f"webhook notification {n.id}"
        url = conn.base_url()
        if url is None:
            return failure(what, conn, WebhookConfigError("the connection has no host"),
                           permanent=True, attempts=0, hint=(
                               f"set the connection's host to the receiver's URL "
                               f"({CONNECTION_HINT['webhook']})"))
        if not conn.password:
            return failure(what, conn, WebhookConfigError("the connection has no shared secret"),
                           permanent=True, attempts=0, hint=(
                               f"set its password to the HMAC secret the receiver verifies "
                               f"with ({CONNECTION_HINT['webhook']})"))
        body = orjson.dumps(payload(n))
        # One timestamp for the delivery: urllib3's retries resend these exact headers, and
        # the receiver's tolerance (5 minutes by default) outlasts the retries' waits.
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(conn.password, ts, body),
            DELIVERY_HEADER: n.id,
        }
        tries = target.max_retries + 1
        try:
            with self._session(target) as session:
                # No redirects: following one would send the signed body somewhere the
                # connection does not name.
                response = session.post(url, data=body, headers=headers,
                                        timeout=target.timeout.total_seconds(),
                                        allow_redirects=False)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            return failure(what, conn, exc, permanent=True, attempts=0, hint=(
                "the connection's host is not a valid http(s) URL; set it to the "
                "receiver's URL"))
        except requests.RequestException as exc:
            delivery = failure(what, conn, _root(exc), attempts=tries)
            log.warning("%s", delivery.error)
            return delivery
        attempts = attempts_of(response)
        status = response.status_code
        if 200 <= status < 300:
            log.info("webhook notification %s delivered through connection %r (HTTP %d, "
                     "%d attempt(s))", n.id, conn.conn_id, status, attempts)
            return Delivery(ok=True, connection_id=conn.conn_id, attempts=attempts)
        transient = status in RETRY_STATUSES
        delivery = failure(what, conn, status=status, body=response.text, attempts=attempts,
                           permanent=not transient, hint=_hint(status))
        log.warning("%s", delivery.error)
        return delivery


def _root(exc: BaseException) -> BaseException:
    """The error under requests' wrapper: urllib3's MaxRetryError names the URL with its
    path (which may hold a token); its ``reason`` says what went wrong without it."""
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, MaxRetryError) and inner.reason is not None:
        return inner.reason
    return exc


def _hint(status: int) -> str:
    """What to do about an answer, for the error (empty: the default wording)."""
    if status in (401, 403):
        return ("the receiver refused the signature: the connection's password must be the "
                "secret the receiver verifies with, and both clocks must agree within its "
                "tolerance")
    if status in (404, 410):
        return "the receiver's URL does not exist (any more): fix the connection's host"
    if status == 400:
        return "the receiver refused the body: check it reads webhook body version 1"
    if 300 <= status < 400:
        return "the URL redirects: set the connection's host to the final URL"
    return ""


__all__ = ["DELIVERY_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "VERSION",
           "WebhookConfigError", "WebhookSender", "payload", "sign", "verify_signature"]
