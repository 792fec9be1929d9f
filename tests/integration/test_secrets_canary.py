"""Secrets canary: canary values in the platform key, the Slack webhook URL and the judge key
(connections in URI and JSON form), errors forced on every external call (refused
connections, 4xx, 5xx), the DAGs run; then the task output, the metadata database (XCom,
rendered template fields, run confs, HITL details), the lake, the reports and the state
directory are searched for the canaries. Zero hits.

Each run forces a different failure, so between them every external endpoint fails:
- hourly, platform healthy (key = canary), judge answers 401 (wrong key), Slack 5xx;
- health, platform answers 503 on everything (connection in JSON form);
- heal, platform answers 401 to the ops action, Slack answers 404 (URI forms);
- hourly and daily with every connection refused (nothing listens on the ports).
Tasks do not retry here (the DAG objects are loaded with retries=0), so failures are quick.
"""

from __future__ import annotations

import json
import secrets
import socket
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest
import yaml

from promptops.simulator import SimulatorProcess, SlackSinkProcess
from tests.helpers import ROOT

SCENARIO = Path(__file__).parent / "scenarios" / "model_error_burst.yaml"
BURST_HOUR = datetime(2026, 11, 20, 4, tzinfo=UTC)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connections are refused


def http_uri(host_url: str, password: str, conn_type: str = "http") -> str:
    """A connection in URI form: ``http://:<password>@127.0.0.1:PORT``."""
    hostport = host_url.split("://", 1)[1]
    return f"{conn_type}://:{quote(password, safe='')}@{hostport}"


def slack_uri(webhook: str) -> str:
    return f"slackwebhook://:{quote(webhook, safe='')}@"


def find_canaries(canaries: list[str], *, text: str, files: list[Path]) -> list[str]:
    """Where any canary shows up: in ``text``, or in a file (Parquet files are read as
    tables, so values inside compressed pages are seen too)."""
    hits = [f"output: {c}" for c in canaries if c in text]
    for path in files:
        if path.suffix == ".parquet":
            try:
                content = json.dumps(pq.read_table(path).to_pylist(), default=str)
            except Exception:  # a half-written temp file: search its bytes instead
                content = path.read_bytes().decode("latin-1")
        else:
            content = path.read_bytes().decode("latin-1")
        hits += [f"{path}: {c}" for c in canaries if c in content]
    return hits


def db_dump(db: Path) -> str:
    """Every text value of every table of the metadata database."""
    con = sqlite3.connect(db)
    try:
        out = []
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for row in con.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - our own DB
                out.append(repr(row))
        return "\n".join(out)
    finally:
        con.close()


def _evaluations(db: Path) -> list[str]:
    """The alert evaluations' outcomes (XCom of ``evaluate_alerts``), as text."""
    con = sqlite3.connect(db)
    try:
        return [repr(v) for (v,) in con.execute(
            "SELECT value FROM xcom WHERE task_id = 'evaluate_alerts'")]
    finally:
        con.close()


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags[dag_id]
    for task in dag.tasks:
        task.retries = 0
    return dag


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_no_secret_leaks_when_every_external_call_fails(airflow_db, tmp_path, monkeypatch,
                                                        capfd):
    from promptops.settings import get_settings

    tag = secrets.token_hex(6)
    platform_key = f"canary-platform-{tag}"
    slack_secret = f"canary-slack-{tag}"
    judge_key = f"canary-judge-{tag}"
    # The alert targets' secrets: PagerDuty's routing key, the webhook's HMAC secret, the
    # SMTP and Alertmanager passwords.
    routing_key = f"canary-pd-{tag}"
    hmac_secret = f"canary-hmac-{tag}"
    smtp_password = f"canary-smtp-{tag}"
    am_password = f"canary-am-{tag}"
    canaries = [platform_key, slack_secret, judge_key, routing_key, hmac_secret,
                smtp_password, am_password]
    lake_dir, state_dir = tmp_path / "lake", tmp_path / "state"
    monkeypatch.setenv("PROMPTOPS_LAKE_URI", f"file://{lake_dir}")
    monkeypatch.setenv("PROMPTOPS_STATE_DIR", str(state_dir))
    monkeypatch.setenv("PROMPTOPS_THRESHOLD__daily_tokens__budget", "500000000")
    monkeypatch.setenv("PROMPTOPS_JUDGE_ENABLED", "true")
    monkeypatch.setenv("PROMPTOPS_HEALTH_WAIT_S", "3")
    monkeypatch.setenv("PROMPTOPS_MAX_RETRIES", "1")
    monkeypatch.setenv("PROMPTOPS_BACKOFF_FACTOR_S", "0.05")
    states: dict[str, str] = {}

    def run(name: str, dag_id: str, **kwargs) -> None:
        get_settings.cache_clear()
        dagrun = load_dag(dag_id).test(**kwargs)
        states[name] = dagrun.state

    # Every target on the critical route, each failing: PagerDuty refuses the key (400),
    # the webhook receiver the signature (401), SMTP and Alertmanager refuse connections.
    from promptops.simulator import pagerduty_sink, webhook_sink

    pd = pagerduty_sink.start_in_thread("127.0.0.1", 0)
    hook = webhook_sink.start_in_thread("127.0.0.1", 0, "not-the-canary-secret")
    config = yaml.safe_load((ROOT / "include" / "config" / "alerting.yaml").read_text())
    for route in config["routes"]:
        if route["matchers"] == ['severity="critical"']:
            route["targets"] = ["pagerduty", "alertmanager", "webhook", "oncall_email"]
    config["silences_file"] = None
    (tmp_path / "alerting.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("PROMPTOPS_ALERTING_FILE", str(tmp_path / "alerting.yaml"))
    monkeypatch.setenv("AIRFLOW_CONN_PAGERDUTY_EVENTS", json.dumps(
        {"conn_type": "pagerduty_events", "host": pd.url, "password": routing_key}))
    monkeypatch.setenv("AIRFLOW_CONN_PROMPTOPS_WEBHOOK", http_uri(hook.url, hmac_secret))
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": closed_port(), "login": "promptops",
         "password": smtp_password, "extra": {"from_email": "p@example.com",
                                               "disable_ssl": True}}))
    monkeypatch.setenv("AIRFLOW_CONN_ALERTMANAGER_DEFAULT", json.dumps(
        {"conn_type": "http", "host": f"http://127.0.0.1:{closed_port()}", "login": "am",
         "password": am_password}))

    with SimulatorProcess("--scenario", str(SCENARIO), api_key=platform_key,
                          seed=None) as sim, SlackSinkProcess() as sink:
        webhook = f"{sink.url}/services/T000/B000/{slack_secret}"
        # 1. hourly: platform fine, the judge refuses the key (401), Slack answers 500.
        monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", http_uri(sim.url, platform_key))
        monkeypatch.setenv("AIRFLOW_CONN_RELEVANCE_JUDGE", http_uri(sim.url, judge_key))
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
            {"conn_type": "slackwebhook", "password": webhook}))
        sink.add_faults({"mode": "server_error", "status": 500, "count": None})
        run("hourly-5xx", "promptops_hourly", logical_date=BURST_HOUR + timedelta(hours=1))

        # 2. health: the platform answers 503 everywhere (connection in JSON form).
        sim.set_faults([{"kind": "bare_status", "status": 503, "path_prefix": "/"}])
        monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
            {"conn_type": "http", "host": sim.url, "password": platform_key}))
        run("health-503", "promptops_health", logical_date=BURST_HOUR)
        sim.clear_faults()

        # 3. heal: the ops action is refused (401: the key is not the platform's) and the
        # Slack webhook is rejected (404), both connections in URI form.
        sink.clear_faults()
        sink.add_faults({"mode": "invalid_webhook", "status": 404, "count": None})
        monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM",
                           http_uri(sim.url, f"{platform_key}-wrong"))
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", slack_uri(webhook))
        run("heal-401", "promptops_heal", run_conf={
            "action": "rate_limit", "target": "user-042", "dry_run": False,
            "reason": "canary"})
        posted = sink.messages()

    # 4. everything refused: nothing listens any more.
    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", http_uri(dead, platform_key))
    monkeypatch.setenv("AIRFLOW_CONN_RELEVANCE_JUDGE", json.dumps(
        {"conn_type": "http", "host": dead, "password": judge_key}))
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": f"{dead}/services/T000/B000/{slack_secret}"}))
    run("hourly-refused", "promptops_hourly", logical_date=BURST_HOUR + timedelta(hours=2))
    run("daily-refused", "promptops_daily",
        logical_date=BURST_HOUR.replace(hour=0) + timedelta(days=1, minutes=30))
    get_settings.cache_clear()

    # The failures really happened (so the search covers error paths, not a happy run).
    assert states["hourly-5xx"] == "success"   # alerts undelivered are retried next run
    assert states["health-503"] == "success"   # a down platform is a finding, not a crash
    assert states["heal-401"] == "failed"
    assert states["hourly-refused"] == "failed"
    assert posted == []  # Slack never accepted a message in this test
    # The targets were tried and refused (PagerDuty's 400 and the webhook's 401 are
    # answered without storing anything).
    pd.shutdown()
    hook.shutdown()
    assert pd.book.events() == [] and hook.messages.list() == []
    tried = [ti for ti in _evaluations(airflow_db) if "pagerduty" in ti]
    assert tried, "no alert reached the targets: the search would cover nothing"

    out = capfd.readouterr()
    text = out.out + out.err + db_dump(airflow_db)
    files = [p for d in (lake_dir, state_dir, Path(airflow_db).parent / "airflow_home" / "logs")
             if d.exists() for p in d.rglob("*") if p.is_file()]
    assert any("alert_log" in p.parts for p in files)  # the alert log was written
    assert any("reports" in p.parts for p in files), "the daily report was not written"
    # The search itself works: a planted canary is found.
    planted = tmp_path / "planted.txt"
    planted.write_text(f"x {slack_secret} y")
    assert find_canaries(canaries, text="", files=[planted]) == [f"{planted}: {slack_secret}"]
    hits = find_canaries(canaries, text=text, files=files)
    assert hits == [], hits
