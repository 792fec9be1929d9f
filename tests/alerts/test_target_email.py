"""The email target against a real SMTP server: aiosmtpd's Controller on 127.0.0.1, whose
handler keeps every envelope it accepts; the messages are parsed back with ``email``."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from promptops.alerts.config import TargetConfig
from promptops.alerts.email import EmailSender
from promptops.alerts.engine import Notification
from promptops.alerts.targets import TargetConnection

PASSWORD = "smtp-canary-pass-4d2f8e"  # noqa: S105 - a test secret the assertions look for
SENDER = EmailSender(backoff_s=0.01)

ALERT: dict[str, Any] = {
    "fingerprint": "fp-success-gpt4o", "rule": "success_rate", "severity": "critical",
    "kind": "threshold",
    "labels": {"metric": "success_rate", "dimension": "model", "slice": "gpt-4o"},
    "summary": "success rate 81% for model=gpt-4o <script>alert(1)</script>",
    "value": 0.81, "threshold": 0.95,
    "annotations": {"root_cause": "provider 5xx from upstream",
                    "runbook": "https://runbooks.example/success-rate"},
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
        opened_at="2026-12-01T10:00:00+00:00", target="ops_mail")
    fields.update(over)
    return Notification(**fields)


def resolved_notification(nid: str = "n-9") -> Notification:
    gone = {**ALERT, "status": "resolved", "resolved_at": "2026-12-01T12:00:00+00:00"}
    return notification(nid, reason="resolved", firing=[], resolved=[gone], new=[])


def target(**over: Any) -> TargetConfig:
    return TargetConfig(type="email", connection="promptops_smtp",
                        **{"to": ["oncall@example.com"], "max_retries": 2, **over})


@dataclass
class Store:
    """An aiosmtpd handler: keeps accepted envelopes; can answer 451 to the next DATA
    commands, or refuse a recipient."""

    envelopes: list[Envelope] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    busy: int = 0
    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.busy:
            self.busy -= 1
            return "451 4.3.0 mailbox busy, try again later"
        if session.auth_data is not None:
            self.logins.append(cast(LoginPassword, session.auth_data).login.decode())
        self.envelopes.append(envelope)
        return "250 OK queued"

    def messages(self) -> list[EmailMessage]:
        return [cast(EmailMessage, message_from_bytes(cast(bytes, e.original_content),
                                                      policy=policy.default))
                for e in self.envelopes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _authenticator(server: Any, session: Session, envelope: Envelope, mechanism: str,
                   auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"promptops" \
        and auth_data.password == PASSWORD.encode()
    # auth_data is what the session keeps (session.auth_data) after a successful login;
    # handled=False on failure lets aiosmtpd answer 535 itself.
    return AuthResult(success=ok, handled=ok, auth_data=auth_data if ok else None)


@pytest.fixture()
def smtp() -> Iterator[tuple[Store, int]]:
    store = Store()
    port = _free_port()
    controller = Controller(store, hostname="127.0.0.1", port=port)
    controller.start()
    yield store, port
    controller.stop()


@pytest.fixture()
def smtp_auth() -> Iterator[tuple[Store, int]]:
    store = Store()
    port = _free_port()
    controller = Controller(store, hostname="127.0.0.1", port=port,
                            authenticator=_authenticator, auth_required=True,
                            auth_require_tls=False)
    controller.start()
    yield store, port
    controller.stop()


def conn(port: int, **over: Any) -> TargetConnection:
    extra = {"from_email": "promptops@example.com", "disable_ssl": True, "disable_tls": True,
             **over.pop("extra", {})}
    fields: dict[str, Any] = {"conn_id": "promptops_smtp", "conn_type": "smtp",
                              "host": "127.0.0.1", "port": port, "extra": extra, **over}
    return TargetConnection(**fields)


def test_incident_email_parts_subject_and_envelope(smtp: tuple[Store, int]) -> None:
    store, port = smtp
    delivery = SENDER.deliver(notification(), target(to=["oncall@example.com",
                                                         "lead@example.com"]), conn(port))
    assert delivery.ok and delivery.attempts == 1 and delivery.connection_id == "promptops_smtp"
    [envelope] = store.envelopes
    assert envelope.mail_from == "promptops@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com", "lead@example.com"]
    [msg] = store.messages()
    assert msg["Subject"] == ("[promptops] [FIRING:1] CRITICAL incident model=gpt-4o: success "
                              "rate 81% for model=gpt-4o <script>alert(1)</script>")
    assert msg["From"] == "promptops@example.com"
    assert msg["To"] == "oncall@example.com, lead@example.com"
    assert msg["Message-ID"] == "<incident-inc-1@promptops>"
    assert msg["In-Reply-To"] is None  # the opening starts the thread
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    text = cast(EmailMessage, msg.get_body(("plain",))).get_content()
    html = cast(EmailMessage, msg.get_body(("html",))).get_content()
    for part in (text, html):
        for expected in ("CRITICAL", "model=gpt-4o", "A new incident opened", "81.00%",
                         "95.00%", "provider 5xx from upstream", "inc-1", "hourly",
                         "https://runbooks.example/success-rate",
                         "http://localhost:8080/dags/promptops_hourly/runs/x"):
            assert expected in part, (expected, part)
    assert "[CRITICAL] success_rate (dimension=model, metric=success_rate, slice=gpt-4o)" in text
    # The HTML escapes what an alert's text holds; the plain part shows it as it is.
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" in text
    assert '<a href="https://runbooks.example/success-rate">' in html


def test_message_ids_are_stable_and_thread_the_incident(smtp: tuple[Store, int]) -> None:
    store, port = smtp
    update = notification("n-5", reason="update")
    for n in (notification(), update, update, resolved_notification()):
        assert SENDER.deliver(n, target(), conn(port)).ok
    opening, first, again, resolved = store.messages()
    # The same notification sent twice carries the same id: a duplicate is recognisable.
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"].startswith("<n-5.") and first["Message-ID"].endswith("@promptops>")
    assert resolved["Message-ID"] not in (first["Message-ID"], opening["Message-ID"])
    for later in (first, resolved):
        assert later["In-Reply-To"] == opening["Message-ID"]
        assert later["References"] == opening["Message-ID"]
    assert resolved["Subject"].startswith("[promptops] [RESOLVED] CRITICAL incident model=gpt-4o")
    assert "Resolved" in cast(EmailMessage, resolved.get_body(("plain",))).get_content()


def test_label_group_threads_on_its_key(smtp: tuple[Store, int]) -> None:
    store, port = smtp
    for nid in ("g-1", "g-2"):
        n = notification(nid, incident_id=None, group_key="labels:rule=success_rate",
                         cause="", opened_at=None)
        assert SENDER.deliver(n, target(subject_prefix="[llm]"), conn(port)).ok
    one, two = store.messages()
    assert one["Message-ID"] != two["Message-ID"]
    assert one["References"] == two["References"] and one["References"].startswith("<group-")
    assert one["Subject"].startswith("[llm] [FIRING:1] CRITICAL alert group platform-wide:")


def test_subject_is_one_line_of_at_most_200_characters(smtp: tuple[Store, int]) -> None:
    store, port = smtp
    long = {**ALERT, "summary": "spend\nrose " + "sharply on model gpt-4o " * 20}
    assert SENDER.deliver(notification(firing=[long]), target(), conn(port)).ok
    [msg] = store.messages()
    assert len(msg["Subject"]) == 200 and "\n" not in msg["Subject"]
    assert msg["Subject"].endswith("…") and "spend rose" in msg["Subject"]


def test_recipients_from_the_connection_extra(smtp: tuple[Store, int]) -> None:
    store, port = smtp
    delivery = SENDER.deliver(notification(), target(to=[]), conn(
        port, extra={"to": "a@example.com; b@example.com"}))
    assert delivery.ok
    assert store.envelopes[0].rcpt_tos == ["a@example.com", "b@example.com"]


def test_no_recipients_or_sender_is_permanent(smtp: tuple[Store, int]) -> None:
    store, port = smtp
    nobody = SENDER.deliver(notification(), target(to=[]), conn(port))
    assert not nobody.ok and nobody.permanent and nobody.attempts == 0
    assert nobody.error is not None and "to:" in nobody.error and "extra to" in nobody.error
    anonymous = SENDER.deliver(notification(), target(), conn(port, extra={"from_email": ""}))
    assert not anonymous.ok and anonymous.permanent
    assert anonymous.error is not None and "from_email" in anonymous.error
    assert store.envelopes == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_login_and_wrong_password(smtp_auth: tuple[Store, int],
                                  caplog: pytest.LogCaptureFixture) -> None:
    store, port = smtp_auth
    good = SENDER.deliver(notification(), target(), conn(port, login="promptops",
                                                         password=PASSWORD))
    assert good.ok and store.logins == ["promptops"]
    wrong = "wrong-canary-pass-0b7d"  # noqa: S105
    with caplog.at_level(logging.DEBUG):
        bad = SENDER.deliver(notification("n-2"), target(),
                             conn(port, login="promptops", password=wrong))
    assert not bad.ok and bad.permanent and bad.attempts == 1
    assert bad.error is not None and "535" in bad.error and "'promptops_smtp'" in bad.error
    assert "login and password" in bad.error
    for secret in (wrong, PASSWORD):
        assert secret not in bad.error and secret not in caplog.text
    # Without a login the server refuses the sender: permanent too (530).
    anonymous = SENDER.deliver(notification("n-3"), target(), conn(port))
    assert not anonymous.ok and anonymous.permanent and "530" in (anonymous.error or "")
    assert len(store.envelopes) == 1


def test_busy_server_is_retried(smtp: tuple[Store, int]) -> None:
    store, port = smtp
    store.busy = 1
    delivery = SENDER.deliver(notification(), target(), conn(port))
    assert delivery.ok and delivery.attempts == 2
    assert len(store.envelopes) == 1


def test_busy_forever_is_transient(smtp: tuple[Store, int]) -> None:
    store, port = smtp
    store.busy = 100
    delivery = SENDER.deliver(notification(), target(max_retries=2), conn(port))
    assert not delivery.ok and not delivery.permanent and delivery.attempts == 3
    assert delivery.error is not None and "451" in delivery.error
    assert store.envelopes == []


def test_refused_recipient_is_permanent(smtp: tuple[Store, int]) -> None:
    store, port = smtp
    store.refuse = {"oncall@example.com"}
    delivery = SENDER.deliver(notification(), target(), conn(port))
    assert not delivery.ok and delivery.permanent and delivery.attempts == 1
    assert delivery.error is not None and "550" in delivery.error
    assert "oncall@example.com" in delivery.error


def test_server_that_hangs_up_is_transient() -> None:
    # A listener that closes every connection before the SMTP greeting.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # so the thread sees `done` (close() does not wake accept())
    port = listener.getsockname()[1]
    done = threading.Event()
    hung_up = 0

    def hang_up() -> None:
        nonlocal hung_up
        while not done.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            client.close()
            hung_up += 1

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        delivery = SENDER.deliver(notification(), target(max_retries=2), conn(port))
    finally:
        done.set()
        thread.join(5)
        listener.close()
    assert not delivery.ok and not delivery.permanent and delivery.attempts == 3
    assert hung_up == 3
    assert delivery.error is not None and "SMTPServerDisconnected" in delivery.error


def test_unreachable_server_is_transient() -> None:
    delivery = SENDER.deliver(notification(), target(max_retries=1), conn(_free_port()))
    assert not delivery.ok and not delivery.permanent and delivery.attempts == 2
    assert delivery.error is not None and "refused" in delivery.error


def test_tls_against_a_plain_server_is_permanent(smtp: tuple[Store, int]) -> None:
    _, port = smtp
    delivery = SENDER.deliver(notification(), target(), conn(
        port, extra={"disable_ssl": False}))
    assert not delivery.ok and delivery.permanent
    assert delivery.error is not None and "disable_ssl" in delivery.error
