"""End to end: an incident of the simulator's demo scenario (the Claude error burst), run
hour by hour through the hourly DAG (dag.test) against the real simulator, goes out once to
each configured target beside Slack (Debian's Alertmanager, a PagerDuty Events v2 receiver,
a signature-checking webhook receiver, an SMTP server) and resolves once in Alertmanager
and PagerDuty."""

from __future__ import annotations

import email
import email.policy
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from promptops.simulator import SimulatorProcess, SlackSinkProcess
from tests.helpers import ROOT
from tests.helpers.alerts import route_to_sink

aiosmtpd = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd (requirements-dev)")

DEMO = ROOT / "include" / "config" / "scenarios" / "demo.yaml"
#: The simulator's clock: the demo's error burst on claude-3-5-sonnet (now-20h .. now-18h)
#: is then 2026-11-20 04:00-06:00.
SIM_NOW = datetime(2026, 11, 21, tzinfo=UTC)
BURST = SIM_NOW - timedelta(hours=20)
MODEL = "claude-3-5-sonnet"
WEBHOOK_SECRET = "canary-webhook-secret-5519"  # noqa: S105 - a test canary
ROUTING_KEY = "canaryroutingkey0123456789abcdef"  # 32 characters, as PagerDuty's are


class _Mailbox:
    """Stores what the SMTP server received (aiosmtpd handler)."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(parsed)  # type: ignore[arg-type]
        return "250 OK"


def _alerting_file(tmp_path: Path) -> Path:
    """The shipped alerting config with every target on the critical route."""
    config = yaml.safe_load((ROOT / "include" / "config" / "alerting.yaml").read_text())
    for route in config["routes"]:
        if route["matchers"] == ['severity="critical"']:
            route["targets"] = ["pagerduty", "alertmanager", "webhook", "oncall_email"]
    config["silences_file"] = None
    path = tmp_path / "alerting.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_a_demo_incident_goes_out_once_to_each_target_and_resolves_once(
        airflow_db, tmp_path, monkeypatch):
    from aiosmtpd.controller import Controller
    from airflow.dag_processing.dagbag import DagBag

    from promptops.settings import get_settings
    from promptops.simulator import pagerduty_sink, webhook_sink
    from tests.helpers.alertmanager import LOGIN, PASSWORD, WebhookReceiver, alertmanager
    from tests.helpers.prometheus import free_port

    mailbox = _Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    pd = pagerduty_sink.start_in_thread("127.0.0.1", 0)
    hook = webhook_sink.start_in_thread("127.0.0.1", 0, WEBHOOK_SECRET)
    am_receiver = WebhookReceiver()  # serves in its own thread
    try:
        with SimulatorProcess("--scenario", str(DEMO), "--now", SIM_NOW.isoformat(),
                              api_key="targets-e2e-key", seed=None) as sim, \
                SlackSinkProcess() as sink, \
                alertmanager(tmp_path, am_receiver.url + "/hook") as am:
            monkeypatch.setenv("PROMPTOPS_LAKE_URI", f"file://{tmp_path / 'lake'}")
            monkeypatch.setenv("PROMPTOPS_STATE_DIR", str(tmp_path / "state"))
            monkeypatch.setenv("PROMPTOPS_THRESHOLD__daily_tokens__budget", "500000000")
            monkeypatch.setenv("PROMPTOPS_ALERTING_FILE", str(_alerting_file(tmp_path)))
            monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
                {"conn_type": "http", "host": sim.url, "password": sim.api_key}))
            route_to_sink(monkeypatch, sink.url)
            monkeypatch.setenv("AIRFLOW_CONN_ALERTMANAGER_DEFAULT", json.dumps(
                {"conn_type": "http", "host": am.url, "login": LOGIN, "password": PASSWORD}))
            monkeypatch.setenv("AIRFLOW_CONN_PAGERDUTY_EVENTS", json.dumps(
                {"conn_type": "pagerduty_events", "host": pd.url, "password": ROUTING_KEY}))
            monkeypatch.setenv("AIRFLOW_CONN_PROMPTOPS_WEBHOOK", json.dumps(
                {"conn_type": "http", "host": hook.url + "/promptops",
                 "password": WEBHOOK_SECRET}))
            monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(
                {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp.port,
                 "extra": {"from_email": "promptops@example.com", "disable_ssl": True,
                           "disable_tls": True}}))
            get_settings.cache_clear()
            try:
                dag = DagBag(dag_folder=str(ROOT / "dags")).dags["promptops_hourly"]
                # A healthy hour, the two burst hours, then two quiet ones (all clear).
                for i in range(-1, 4):
                    hour = BURST + timedelta(hours=i)
                    run = dag.test(logical_date=hour + timedelta(hours=1))
                    assert run.state == "success", f"run for {hour} ended {run.state}"
                slack = sink.messages()
                # Alertmanager notifies on its own schedule (1 s group wait and interval).
                am_notified = am_receiver.wait_for(2)
                am_alerts = am.alerts()
            finally:
                get_settings.cache_clear()
    finally:
        smtp.stop()
        pd.shutdown()
        hook.shutdown()
        am_receiver.shutdown()

    pages = [m for m in slack if m["path"].endswith("/critical")]
    page_text = [json.dumps(m["body"]) for m in pages]
    assert len(pages) == 2 and MODEL in page_text[0], [t[:200] for t in page_text]
    incident_ids = {a["labels"]["incident_id"] for n in am_notified for a in n["alerts"]}
    assert len(incident_ids) == 1, incident_ids  # the one paging incident, nothing else
    [incident] = incident_ids

    # PagerDuty: one incident under the incident's dedup key, resolved once.
    incidents = pd.book.incidents()
    assert [i["dedup_key"] for i in incidents] == [f"promptops-{incident}"]
    assert incidents[0]["status"] == "resolved"
    assert [e["event_action"] for e in pd.book.events()] == ["trigger", "resolve"]

    # Alertmanager: its receiver heard of the incident firing once and resolved once, and
    # Alertmanager holds no active alert of it any more.
    statuses = [n["status"] for n in am_notified]
    assert statuses.count("firing") == 1 and statuses.count("resolved") == 1, statuses
    assert not [a for a in am_alerts if a["status"]["state"] == "active"
                and a["labels"].get("incident_id") == incident]

    # The webhook: signed (the sink refuses anything else), the opening once, no duplicate.
    bodies = [m["body"] for m in hook.messages.list()]
    assert [b["reason"] for b in bodies] == ["new", "resolved"]
    assert {b["incident"]["id"] for b in bodies} == {incident}
    assert hook.duplicates == 0

    # Email: the opening once and the all-clear, threaded under the opening.
    subjects = [str(m["Subject"]) for m in mailbox.messages]
    assert len(subjects) == 2 and "FIRING" in subjects[0] and "RESOLVED" in subjects[1]
    assert MODEL in subjects[0]
    assert mailbox.messages[1]["In-Reply-To"] == mailbox.messages[0]["Message-ID"]
