"""The email target: an incident as an HTML summary with a plain-text part, over SMTP.

:class:`EmailSender` reads the target's Airflow connection the way the SMTP provider's
``SmtpHook`` (apache-airflow-providers-smtp 3.2) reads a connection of type ``smtp``, without
importing Airflow: ``host`` and ``port``; ``login`` and ``password`` (logged in with when
both are set); extra ``from_email`` (required, the sender); extra ``disable_ssl`` (default
false: the connection is SMTP over TLS, ``SMTP_SSL``, port 465 when none is given);
``disable_tls`` (default false: a plain connection is upgraded with ``STARTTLS``);
``ssl_context`` (``default`` verifies the server's certificate, ``none`` does not);
``timeout`` (seconds; default: the target's ``timeout``). One difference: the hook also
sends ``STARTTLS`` on a connection that is TLS already, which servers refuse; here TLS is
either implicit or ``STARTTLS``, never both. Recipients are the target's ``to``, else the
connection's extra ``to`` (a list, or addresses separated by commas or semicolons).

The message (``email.message.EmailMessage``) is ``multipart/alternative``: a plain-text part
and an HTML part, both rendered with Jinja2 from ``templates/incident_email.{txt,html}.j2``
(the HTML autoescaped): the severity and cause, why it is sent now, each member alert (its
summary, value against threshold, root cause, runbook link), the scope, the incident id and
the Airflow run link. Subject: ``<prefix> [FIRING:n] SEVERITY incident <cause>: <summary>``
(``[RESOLVED]`` once nothing fires), at most 200 characters.

Threading and duplicates: an incident's opening (``new``) message has the Message-ID
``<incident-<incident id>@promptops>``; every later one has
``<<notification id>.<hash>@promptops>`` (the same notification always gets the same id, so
a re-sent duplicate is recognisable) and refers to the opening one in ``In-Reply-To`` and
``References``, so mail clients show an incident as one thread. Label groups (no incident)
refer to ``<group-<hash of the group key>@promptops>`` instead.

Delivery: disconnects, connection errors and 4xx replies (``451``, ``421``, ``454``) are
retried with exponential backoff (tenacity), at most the target's ``max_retries`` times,
then reported as a failure the next evaluation retries. 5xx replies (``535``
authentication, ``550`` recipient, ``554``), TLS failures and a connection missing its host,
sender or recipients are permanent. Failures are :class:`~promptops.alerts.engine.Delivery`
values, never raised, and never hold the password.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import re
import smtplib
import ssl
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate
from functools import cache
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from promptops.alerts.engine import Delivery, Notification
from promptops.alerts.slack import format_value
from promptops.alerts.targets import (
    CONNECTION_HINT,
    TargetConnection,
    alert_line,
    cause_text,
    failure,
)
from promptops.errors import ConfigError
from promptops.secrets import redact
from promptops.timeutil import as_utc

if TYPE_CHECKING:
    from promptops.alerts.config import TargetConfig

log = logging.getLogger(__name__)

MAX_SUBJECT = 200
#: Why a message is sent, as its "why now" line says it.
WHY = {
    "new": "A new incident opened.",
    "update": "The incident changed: alerts joined, grew more severe, or some recovered.",
    "repeat": "Still firing: a reminder, nothing changed since the last message.",
    "resolved": "Resolved: no alert of the incident fires any more.",
    "refresh": "Still firing.",
}
_WHY_GROUP = {
    "new": "A new alert fires in this group.",
    "resolved": "Resolved: these alerts recovered.",
}


# -- the message ---------------------------------------------------------------------------------

def _one_line(text: Any) -> str:
    """Header text: whitespace (newlines included) collapsed, as a header cannot hold them."""
    return re.sub(r"\s+", " ", str(text or "")).strip()


def subject(n: Notification, prefix: str) -> str:
    alerts = n.firing or n.resolved
    state = f"FIRING:{len(n.firing)}" if n.firing else "RESOLVED"
    what = "incident" if n.incident_id else "alert group"
    lead = alerts[0].get("summary", "") if alerts else ""
    text = _one_line(f"{prefix} [{state}] {n.severity.upper()} {what} {cause_text(n.cause)}: "
                     f"{lead}")
    return text if len(text) <= MAX_SUBJECT else text[:MAX_SUBJECT - 1] + "…"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def opening_id(n: Notification) -> str:
    """The Message-ID every message of the incident (or label group) refers to."""
    if n.incident_id:
        return f"<incident-{n.incident_id}@promptops>"
    return f"<group-{_short_hash(n.group_key)}@promptops>"


def message_id(n: Notification) -> str:
    """The same notification always gets the same id; an incident's opening gets
    :func:`opening_id`. The target is part of the hash, so two email targets of one
    notification do not share an id."""
    if n.reason == "new" and n.incident_id:
        return opening_id(n)
    key = f"{n.target or ''}\0{n.id}"
    return f"<{n.id}.{_short_hash(key)}@promptops>"


def _when(iso: Any) -> str | None:
    """An ISO timestamp as people read it (UTC, to the minute); None stays None."""
    if not iso:
        return None
    try:
        return f"{as_utc(datetime.fromisoformat(str(iso))):%Y-%m-%d %H:%M UTC}"
    except ValueError:
        return str(iso)


def _link(url: Any) -> str | None:
    """A link worth making clickable: http(s) only (never ``javascript:``)."""
    text = str(url or "").strip()
    return text if text.startswith(("http://", "https://")) else None


def _member(alert: Mapping[str, Any], *, resolved: bool) -> dict[str, Any]:
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    metric = str(labels.get("metric") or alert.get("rule") or "")
    runbook = annotations.get("runbook")
    return {
        "line": alert_line(alert, resolved=resolved),
        "state": "RESOLVED" if resolved else str(alert.get("severity", "")).upper(),
        "severity": str(alert.get("severity", "")),
        "resolved": resolved,
        "rule": alert.get("rule"),
        "labels": ", ".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "summary": alert.get("summary") or "",
        "value": format_value(metric, alert.get("value")),
        "threshold": format_value(metric, alert.get("threshold")),
        "root_cause": annotations.get("root_cause"),
        "runbook": runbook,
        "runbook_url": _link(runbook),
        "since": _when(alert.get("active_since") or alert.get("fired_at")),
        "resolved_at": _when(alert.get("resolved_at")),
    }


def context(n: Notification) -> dict[str, Any]:
    """What both templates render."""
    why = (WHY if n.incident_id else {**WHY, **_WHY_GROUP}).get(n.reason, n.reason)
    return {
        "severity": n.severity.upper(),
        "state": "FIRING" if n.firing else "RESOLVED",
        "what": "Incident" if n.incident_id else "Alert group",
        "cause": cause_text(n.cause),
        "why": why,
        "reason": n.reason,
        "members": [*(_member(a, resolved=False) for a in n.firing),
                    *(_member(a, resolved=True) for a in n.resolved)],
        "scope": n.scope,
        "incident_id": n.incident_id,
        "group_key": n.group_key,
        "opened_at": _when(n.opened_at),
        "evaluated_at": f"{n.evaluated_at:%Y-%m-%d %H:%M UTC}",
        "run_id": n.run_id,
        "run_url": _link(n.run_url),
    }


@cache
def _templates() -> Environment:
    return Environment(loader=PackageLoader("promptops.alerts", "templates"),
                       autoescape=select_autoescape(enabled_extensions=("html.j2",),
                                                    default_for_string=False),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                       keep_trailing_newline=True)


def render(n: Notification) -> tuple[str, str]:
    """The plain-text and HTML bodies."""
    ctx = context(n)
    env = _templates()
    return (env.get_template("incident_email.txt.j2").render(ctx),
            env.get_template("incident_email.html.j2").render(ctx))


def build_message(n: Notification, *, sender: str, to: list[str], prefix: str,
                  date: str | None = None) -> EmailMessage:
    text, html = render(n)
    msg = EmailMessage()
    msg["Subject"] = subject(n, prefix)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = date or formatdate(usegmt=True)
    msg["Message-ID"] = message_id(n)
    if msg["Message-ID"] != opening_id(n):
        msg["In-Reply-To"] = opening_id(n)
        msg["References"] = opening_id(n)
    msg["X-Promptops-Notification"] = n.id
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


# -- the connection ---------------------------------------------------------------------------

def _flag(value: Any) -> bool:
    """An extra's boolean: the Airflow form stores true/false; a hand-written JSON extra may
    hold "false", which ``bool()`` (as the hook uses) would read as true."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _addresses(value: Any) -> list[str]:
    """A list, or addresses separated by commas or semicolons (as the hook splits them)."""
    items: Iterable[Any] = re.split(r"\s*[,;]\s*", value) if isinstance(value, str) \
        else (value or [])
    return [str(a).strip() for a in items if str(a).strip()]


class EmailConfigError(ConfigError):
    """The connection or target cannot work as set: the message says what is wrong,
    ``hint`` what to set."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.hint = hint


def _secrets(conn: TargetConnection) -> set[str]:
    # AUTH PLAIN and LOGIN send the password base64-encoded; a server may echo it back.
    out = set(conn.secrets())
    if conn.password:
        out.add(base64.b64encode(conn.password.encode()).decode())
        out.add(base64.b64encode(f"\0{conn.login or ''}\0{conn.password}".encode()).decode())
    return out


def _transient(exc: BaseException) -> bool:
    """Worth another try now: a disconnect, a network error, or a 4xx SMTP reply."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= c < 500 for c in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    # smtplib's and ssl's errors are OSErrors too: the rest of them (no STARTTLS, no AUTH
    # mechanism in common, a certificate refused) need someone to change the settings.
    if isinstance(exc, (smtplib.SMTPException, ssl.SSLError, ssl.CertificateError)):
        return False
    return isinstance(exc, OSError)  # refused, reset, timed out, name not resolved


def _reply_text(exc: BaseException) -> str:
    """The server's reply (code and text) rather than smtplib's tuple of bytes."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{rcpt}: {code} {_decode(msg)}"
                         for rcpt, (code, msg) in exc.recipients.items())
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_decode(exc.smtp_error)}"
    return str(exc)


def _decode(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _hint(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return "check the connection's login and password"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "check the recipients (the target's to, or the connection's extra to)"
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return ("check the connection's extra from_email, and that the server lets this "
                "login send (a 530 asks for login and password)")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return ("the server offers no STARTTLS: set the connection's extra disable_tls: "
                "true only if plain SMTP is acceptable there")
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return ("TLS failed: a server that speaks plain SMTP or STARTTLS (ports 25, 587) "
                "needs the connection's extra disable_ssl: true; a certificate the system "
                "does not trust needs ssl_context: none")
    return ""


class EmailSender:
    """Sends notifications to an email target (see the module docstring).

    ``backoff_s`` is the first wait between retries (doubling after each, at most 30 s).
    """

    def __init__(self, *, backoff_s: float = 0.5) -> None:
        self.backoff_s = backoff_s

    def deliver(self, n: Notification, target: TargetConfig,
                conn: TargetConnection) -> Delivery:
        what = f"email notification {n.id}"
        extra = dict(conn.extra or {})
        try:
            sender, to = self._envelope(target, conn, extra)
            msg = build_message(n, sender=sender, to=to, prefix=target.subject_prefix)
            settings = self._settings(target, conn, extra)
        except EmailConfigError as exc:
            return failure(what, conn, exc, permanent=True, attempts=0, hint=exc.hint)
        attempts = 0

        def send_once() -> dict[str, tuple[int, bytes]]:
            nonlocal attempts
            attempts += 1
            return self._send(msg, sender, to, conn, settings)

        retrying = Retrying(
            stop=stop_after_attempt(target.max_retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s, min=self.backoff_s, max=30),
            retry=retry_if_exception(_transient), reraise=True)
        try:
            refused = retrying(send_once)
        except Exception as exc:  # the engine gets a Delivery, never an exception
            return self._failed(what, conn, exc, attempts)
        if refused:
            # Some recipients took it; sending again would repeat it to them.
            log.warning("email notification %s: the server refused %s; the others got it",
                        n.id, _reply_text(smtplib.SMTPRecipientsRefused(refused)))
        log.info("email notification %s sent through connection %r to %d recipient(s) "
                 "(%d attempt(s))", n.id, conn.conn_id, len(to) - len(refused), attempts)
        return Delivery(ok=True, connection_id=conn.conn_id, attempts=attempts)

    def _failed(self, what: str, conn: TargetConnection, exc: BaseException,
                attempts: int) -> Delivery:
        permanent = not _transient(exc)
        # failure() shows an exception's ``reason`` when it has one: the decoded reply,
        # redacted here too, as a server may echo the credentials it got.
        shown = copy.copy(exc)
        shown.reason = redact(_reply_text(exc), _secrets(conn))  # type: ignore[attr-defined]
        delivery = failure(what, conn, shown, attempts=attempts, permanent=permanent,
                           hint=_hint(exc) if permanent else "")
        log.warning("%s", delivery.error)
        return delivery

    @staticmethod
    def _envelope(target: TargetConfig, conn: TargetConnection,
                  extra: Mapping[str, Any]) -> tuple[str, list[str]]:
        if not (conn.host or "").strip():
            raise EmailConfigError("the connection has no host",
                                   f"set host and port ({CONNECTION_HINT['email']})")
        sender = str(extra.get("from_email") or "").strip()
        if not sender:
            raise EmailConfigError("the connection has no sender",
                                   "set its extra from_email, e.g. "
                                   "{\"from_email\": \"promptops@example.com\"}")
        to = _addresses(target.to) or _addresses(extra.get("to"))
        if not to:
            raise EmailConfigError("no recipients",
                                   "set to: [...] on the target in alerting.yaml, or extra to "
                                   "on the connection")
        return sender, to

    @staticmethod
    def _settings(target: TargetConfig, conn: TargetConnection,
                  extra: Mapping[str, Any]) -> dict[str, Any]:
        ssl_context = extra.get("ssl_context")
        if ssl_context not in (None, "default", "none"):
            raise EmailConfigError(f"extra ssl_context is {ssl_context!r}",
                                   "set it to 'default' (verify the certificate) or 'none'")
        try:
            timeout = float(extra["timeout"]) if extra.get("timeout") not in (None, "") \
                else target.timeout.total_seconds()
        except (TypeError, ValueError):
            raise EmailConfigError("extra timeout is not a number",
                                   "set it to the seconds to wait for the server") from None
        return {"use_ssl": not _flag(extra.get("disable_ssl", False)),
                "starttls": not _flag(extra.get("disable_tls", False)),
                "verify": ssl_context != "none", "timeout": timeout}

    def _send(self, msg: EmailMessage, sender: str, to: list[str], conn: TargetConnection,
              settings: dict[str, Any]) -> dict[str, tuple[int, bytes]]:
        # As the hook: "none" hands smtplib no context, which then checks no certificate.
        context = ssl.create_default_context() if settings["verify"] else None
        kwargs: dict[str, Any] = {"host": (conn.host or "").strip(), "port": conn.port or 0,
                                  "timeout": settings["timeout"]}
        factory: Callable[..., smtplib.SMTP]
        if settings["use_ssl"]:
            factory = smtplib.SMTP_SSL
            kwargs["context"] = context
        else:
            factory = smtplib.SMTP
        with factory(**kwargs) as client:
            if not settings["use_ssl"] and settings["starttls"]:
                client.starttls(context=context)
                client.ehlo()
            if conn.login and conn.password:
                client.login(conn.login, conn.password)
            return client.send_message(msg, from_addr=sender, to_addrs=to)
