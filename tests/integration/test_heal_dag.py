"""The heal DAG under dag.test() against a real simulator and Slack sink.

- Abuse end to end: the health DAG catches a flooding caller and triggers a heal run; that
  run's conf, executed, rate-limits the user (auto-approved by policy), the simulator's next
  minute shows the user capped, and the verification says recovered.
- An error burst healed with the wrong action (more workers) is reported *not recovered*.
- Idempotency: the same heal twice acts once (cool-down); a lost response is retried with
  the same Idempotency-Key and the platform acts once.
- A bad conf fails before anything is posted, says why, and is kept in the audit.

The heal policy is the shipped one with short verification timings (settle 0 s, a 1-minute
window), so each verified heal takes about a minute of wall time.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from promptops.heal.audit import read_audit
from promptops.lake.store import Lake
from promptops.metrics.health import fetch_recent_calls
from promptops.platform.client import PlatformClient
from promptops.simulator import SimulatorProcess, SlackSinkProcess
from tests.helpers import ROOT
from tests.helpers.heal import SIM_NOW, short_policy

SCENARIO = """
seed: 9
calls_per_hour: 15000
data_faults: {malformed_rate: 0.0, duplicate_rate: 0.0, late_rate: 0.0}
incidents:
  - {name: flood, kind: user_flood, start: 2026-11-20T10:00:00Z, end: 2026-11-20T12:00:00Z,
     slice: {user_id: user-042}, params: {calls_per_minute: 400}}
  - {name: mini-errors, kind: error_burst, start: 2026-11-20T10:00:00Z,
     end: 2026-11-20T12:00:00Z, slice: {model: gpt-4o-mini},
     params: {error_rate: 0.3, error_codes: [5000]}}
faults: []
"""


@pytest.fixture()
def stack(airflow_db, tmp_path, monkeypatch):
    """Simulator (clock at SIM_NOW, 1 s actions), Slack sink, a private lake, the short
    policy; yields what the tests need and a way to run a DAG."""
    from promptops.settings import get_settings

    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    with SimulatorProcess("--scenario", str(scenario), "--now", SIM_NOW.isoformat(),
                          "--action-duration-s", "1", api_key="heal-key", seed=None) as sim, \
            SlackSinkProcess() as sink:
        lake_uri = f"file://{tmp_path / 'lake'}"
        monkeypatch.setenv("PROMPTOPS_LAKE_URI", lake_uri)
        monkeypatch.setenv("PROMPTOPS_HEAL_POLICY_FILE", str(short_policy(tmp_path)))
        monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
            {"conn_type": "http", "host": sim.url, "password": sim.api_key}))
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
            {"conn_type": "slackwebhook", "password": sink.url + "/services/T/B/heal"}))
        get_settings.cache_clear()
        try:
            yield {"sim": sim, "sink": sink, "lake": Lake(lake_uri)}
        finally:
            get_settings.cache_clear()


def run_dag(dag_id: str, **kwargs):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags[dag_id]
    run = dag.test(**kwargs)
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def xcom(run, task_id: str):
    ti = next(t for t in run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id)


def actions(sim: SimulatorProcess) -> list[dict]:
    return [a for a in sim.truth()["actions"]]


def audit(lake: Lake) -> list:
    return read_audit(lake, SIM_NOW - timedelta(days=30), datetime.now(UTC) + timedelta(days=1))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_flooding_caller_is_rate_limited_and_verified_recovered(stack):
    from airflow.models import DagRun

    sim, sink, lake = stack["sim"], stack["sink"], stack["lake"]
    # 1. The health sensor's run for 10:05-10:10 catches user-042 and triggers a heal.
    health, states = run_dag("promptops_health", logical_date=SIM_NOW - timedelta(minutes=7))
    assert health.state == "success", states
    assert states["request_heal"] == "success" and states["trigger_heal"] == "success", states
    triggered = [r for r in DagRun.find(dag_id="promptops_heal")
                 if r.run_id.startswith("heal__health__") and "20261120T10" in r.run_id]
    assert len(triggered) == 1, [r.conf for r in triggered]
    conf = triggered[0].conf
    assert triggered[0].run_id.startswith("heal__health__abusive_caller_5m__")
    assert conf["action"] == "run_playbook" and conf["target"] == "rate_limit_user"
    assert conf["dry_run"] is False and conf["requested_by"] == "promptops_health:abusive_caller_5m"
    assert conf["alert"]["labels"]["slice"] == "user-042"

    # 2. That conf, run: auto-approved rate limit, applied once, verified recovered.
    sink.clear()
    run, states = run_dag("promptops_heal", run_conf=conf)
    assert run.state == "success", states
    assert states["approve"] == "skipped" and states["denied"] == "skipped", states
    done = actions(sim)
    assert [(a["action"], a["target"], a["params"], a["dry_run"], a["status"]) for a in done] \
        == [("rate_limit", "user-042", {"requests_per_minute": 60, "ttl_minutes": 60}, False,
             "succeeded")]
    verified = xcom(run, "verify_heal")
    assert verified["verification"] == "recovered", verified
    assert verified["value"] <= 60

    # 3. The simulator's minutes after the action: the user is capped, others are not.
    created = datetime.fromisoformat(done[0]["created_at"].replace("Z", "+00:00"))
    start = created.replace(second=0, microsecond=0) + timedelta(minutes=1)
    with PlatformClient(sim.url, sim.api_key) as client:
        after = fetch_recent_calls(client, start + timedelta(minutes=1), minutes=1)
        before = fetch_recent_calls(client, SIM_NOW - timedelta(minutes=3), minutes=1)
    def per_user(t):
        return Counter(t.column("user_id").to_pylist())
    assert per_user(before)["user-042"] > 300
    assert 0 < per_user(after)["user-042"] <= 60

    # 4. The report and the audit say the same.
    texts = [m["body"]["text"] for m in sink.messages()]
    assert len(texts) == 1 and "metric recovered" in texts[0], texts
    assert "user-042" in json.dumps(sink.messages()[0]["body"])
    [rec] = audit(lake)
    assert (rec.action, rec.target, rec.decision, rec.decided_by, rec.dry_run) == \
        ("rate_limit", "user-042", "auto_approved", "policy", False)
    assert rec.requested_by == "promptops_health:abusive_caller_5m"
    assert rec.action_id == done[0]["action_id"] and rec.platform_status == "succeeded"
    assert rec.verification == "recovered" and rec.alert_fingerprint == conf["alert"]["fingerprint"]


MINI_ALERT = {"rule": "success_rate", "scope": "hourly", "severity": "critical",
                "labels": {"metric": "success_rate", "dimension": "model",
                           "slice": "gpt-4o-mini", "model": "gpt-4o-mini",
                           "service": "platform-api"},
                "summary": "success rate 70.1% < 95% on model=gpt-4o-mini",
                "value": 0.701, "threshold": 0.95}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_heal_that_does_not_fix_the_errors_is_reported_not_recovered(stack):
    sim, sink, lake = stack["sim"], stack["sink"], stack["lake"]
    conf = {"action": "scale_out", "target": "api_workers", "params": {"replicas": 4},
            "dry_run": False, "reason": "try more workers", "alert": MINI_ALERT}
    run, states = run_dag("promptops_heal", run_conf=conf)
    assert run.state == "success", states
    assert [(a["action"], a["status"]) for a in actions(sim)] == [("scale_out", "succeeded")]
    verified = xcom(run, "verify_heal")
    assert verified["verification"] == "not_recovered", verified
    assert "gpt-4o-mini" in verified["detail"]
    assert verified["value"] < 0.9
    [rec] = audit(lake)
    assert rec.verification == "not_recovered" and rec.decision == "auto_approved"
    [message] = sink.messages()
    assert "NOT recovered" in message["body"]["text"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_same_heal_twice_and_a_lost_response_act_once(stack):
    sim, lake = stack["sim"], stack["lake"]
    conf = {"action": "rate_limit", "target": "user-007", "params": {}, "dry_run": False,
            "reason": "twice"}
    # The first POST is carried out but its answer is lost: the client retries with the
    # same key and gets the first answer back.
    sim.set_faults([{"kind": "lost_response", "path_prefix": "/v1/ops/actions",
                     "method": "POST", "times": 1}])
    first, states = run_dag("promptops_heal", run_conf=conf)
    assert first.state == "success", states
    posts = [r for r in sim.requests_log() if r["method"] == "POST"
             and r["path"] == "/v1/ops/actions"]
    assert posts[0]["fault"] == "lost_response" and posts[0]["status"] is None
    assert len({p["idempotency_key"] for p in posts}) == 1 and len(posts) >= 2
    # Triggered again: the policy's cool-down refuses it, nothing is posted.
    second, states = run_dag("promptops_heal", run_conf=conf)
    assert second.state == "success", states
    assert states["denied"] == "success" and states["apply_actions"] == "skipped", states
    assert [(a["action"], a["target"]) for a in actions(sim)] == [("rate_limit", "user-007")]
    records = audit(lake)
    assert [r.decision for r in records] == ["auto_approved", "denied"]
    assert "cooling down" in records[1].decision_reason


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_bad_conf_fails_before_anything_is_posted(stack):
    sim, sink, lake = stack["sim"], stack["sink"], stack["lake"]
    conf = {"action": "restart_service", "target": "api_gateway; rm -rf /", "params": {},
            "dry_run": False, "reason": "injection"}
    run, states = run_dag("promptops_heal", run_conf=conf)
    assert run.state == "failed"
    assert states["plan_heal"] == "failed" and states["apply_actions"] == "upstream_failed"
    assert not [r for r in sim.requests_log() if r["path"].startswith("/v1/ops")]
    [rec] = audit(lake)
    assert rec.decision == "invalid" and "shell metacharacter" in rec.decision_reason
    assert rec.target == "api_gateway; rm -rf /"
    # The heal report, and the failed run's own alert (promptops.airflow_adapters.failure_notifier).
    [message, alert] = sink.messages()
    assert alert["body"]["text"].startswith("promptops run failed: promptops_heal · plan_heal")
    assert "invalid" in message["body"]["text"]
    assert "shell metacharacter" in json.dumps(message["body"])
