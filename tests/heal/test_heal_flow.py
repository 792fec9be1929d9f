"""The heal DAG's library steps without a scheduler: plan, gate, outcome, report, triggers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from promptops.heal.audit import AuditRecord
from promptops.heal.flow import (
    gate,
    heal_triggers,
    outcome_of,
    plan_heal,
    report_message,
    verification_window,
)
from promptops.heal.policy import HealConfError, idempotency_key, load_policy

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def test_a_playbook_becomes_ordered_steps_with_keys_from_run_and_step(policy):
    plan = plan_heal({"action": "run_playbook", "target": "api_timeouts", "dry_run": False,
                      "reason": "timeouts"}, "run-1", NOW, policy=policy)
    assert [(s["step"], s["request"]["action"], s["request"]["target"]) for s in plan["steps"]] \
        == [("1", "restart_service", "api_gateway"), ("2", "scale_out", "api_workers")]
    assert [s["key"] for s in plan["steps"]] == [idempotency_key("run-1", 1),
                                                 idempotency_key("run-1", 2)]
    assert plan["summary"] == ("restart_service api_gateway; then scale_out api_workers "
                               "(replicas=6)")
    again = plan_heal({"action": "run_playbook", "target": "api_timeouts", "dry_run": False},
                      "run-1", NOW, policy=policy)
    assert [s["key"] for s in again["steps"]] == [s["key"] for s in plan["steps"]]


def test_the_alert_labels_fill_the_playbook(policy):
    alert = {"fingerprint": "ab12cd34ef56ab78", "rule": "abusive_caller_5m", "scope": "health",
             "labels": {"metric": "peak_calls_per_minute", "dimension": "user",
                        "slice": "user-042", "user": "user-042"}}
    plan = plan_heal({"action": "run_playbook", "target": "rate_limit_user", "dry_run": False,
                      "alert": alert, "requested_by": "promptops_health:abusive_caller_5m"},
                     "r", NOW, policy=policy)
    [step] = plan["steps"]
    assert step["request"]["target"] == "user-042"
    assert step["request"]["params"] == {"requests_per_minute": 60, "ttl_minutes": 60}
    assert plan["alert_fingerprint"] == "ab12cd34ef56ab78"
    assert plan["requested_by"] == "promptops_health:abusive_caller_5m"


def test_a_script_is_one_step(policy):
    plan = plan_heal({"action": "run_playbook", "target": "drain_node.sh",
                      "params": {"args": ["gpu-node-02"]}}, "r", NOW, policy=policy)
    assert [(s["kind"], s["request"]["target"]) for s in plan["steps"]] == \
        [("script", "drain_node.sh")]
    assert plan["dry_run"] is True and plan["summary"].startswith("[dry run] run script")


@pytest.mark.parametrize(("conf", "needle"), [
    ({"action": "reboot_everything", "target": "api_gateway"}, "action"),
    ({"action": "restart_service", "target": "api_gateway && curl evil"}, "shell metachar"),
    ({"action": "restart_service", "target": "../../etc/passwd"}, "path traversal"),
    ({"action": "scale_out", "target": "api_workers", "params": {"replicas": 500}},
     "params.replicas: 500 is out of range; must be an integer from 1 to 12"),
    ({"action": "scale_out", "target": "api_workers", "params": {"replicas": "6"}},
     "out of range"),
    ({"action": "run_playbook", "target": "../../../bin/sh"}, "path traversal"),
    ({"action": "run_playbook", "target": "rm"}, "neither a playbook"),
    ({"action": "rate_limit", "target": "team:ml-ops"}, "is not a user id"),
    ({"action": "switch_model", "target": "gpt-4o", "params": {"to": "gpt-9"}},
     "unknown model 'gpt-9'"),
    ({"action": "rate_limit", "target": "user-001", "alert": {"rule": ""}}, "alert.rule"),
    ({"action": "rate_limit", "target": "user-001", "surprise": 1}, "surprise"),
])
def test_bad_confs_are_refused_with_what_was_wrong(policy, conf, needle):
    with pytest.raises(HealConfError) as err:
        plan_heal(conf, "r", NOW, policy=policy)
    assert needle in str(err.value)


def _applied(target, minutes_ago):
    return AuditRecord(idempotency_key=f"k-{target}-{minutes_ago}",
                       requested_at=NOW - timedelta(minutes=minutes_ago), action="rate_limit",
                       target=target, decision="auto_approved", dry_run=False,
                       action_id="act-1", run_id="other")


def test_gate_auto_approval_and_denial(policy):
    auto = plan_heal({"action": "rate_limit", "target": "user-001", "dry_run": False}, "r",
                     NOW, policy=policy)
    assert gate(auto, [], NOW, policy)["verdict"] == "auto"
    restart = plan_heal({"action": "run_playbook", "target": "api_timeouts", "dry_run": False},
                        "r", NOW, policy=policy)
    g = gate(restart, [], NOW, policy)
    assert g["verdict"] == "approval" and g["needs_approval"]
    assert "needs approval by policy" in g["reasons"][0]
    g = gate(auto, [_applied("user-001", 10)], NOW, policy)
    assert g["verdict"] == "denied" and g["denied_steps"] == ["1"]
    assert "cooling down" in g["reasons"][0]
    # The plan's own first step counts against the hourly cap of its second.
    full = [_applied(f"user-{i:03d}", 40 + i) for i in range(5)]
    g = gate(restart, full, NOW, policy)
    assert g["verdict"] == "denied" and g["denied_steps"] == ["2"]
    assert "hourly cap" in g["reasons"][1]
    # A dry run ignores cool-down and cap.
    dry = plan_heal({"action": "rate_limit", "target": "user-001"}, "r", NOW, policy=policy)
    assert gate(dry, [_applied("user-001", 1)], NOW, policy)["verdict"] == "auto"


def test_outcome_tells_approved_rejected_and_timed_out_apart(policy):
    plan = plan_heal({"action": "restart_service", "target": "api_gateway", "dry_run": False},
                     "r", NOW, policy=policy)
    g = {"verdict": "approval", "reasons": []}
    step = {"step": "1", "what": "restart_service api_gateway", "status": "succeeded"}
    person = {"id": "7", "name": "alice"}
    approved = outcome_of(plan, g, {"chosen_options": ["Approve"], "responded_by_user": person},
                          {"steps": [step]}, {"verification": "recovered", "detail": "ok"})
    assert (approved["status"], approved["decision"], approved["decided_by"]) == \
        ("recovered", "approved", "alice")
    rejected = outcome_of(plan, g, {"chosen_options": ["Reject"], "responded_by_user": person},
                          None, None)
    assert (rejected["status"], rejected["decided_by"]) == ("rejected", "alice")
    timed_out = outcome_of(plan, g, {"chosen_options": ["Reject"], "responded_by_user": None},
                           None, None)
    assert timed_out["status"] == "timed_out" and timed_out["decided_by"] is None
    failed = outcome_of(plan, {"verdict": "auto"}, None,
                        {"steps": [{**step, "status": "failed"}]}, None)
    assert failed["status"] == "action_failed"


def test_report_message_is_valid_block_kit_and_says_what_happened(policy):
    plan = plan_heal({"action": "rate_limit", "target": "user-042", "dry_run": False,
                      "reason": "flood <script>"}, "r", NOW, policy=policy)
    outcome = {"status": "not_recovered", "decision": "auto_approved", "decided_by": "policy",
               "steps": [{"step": "1", "what": "rate_limit user-042", "status": "succeeded",
                          "detail": "limited"}],
               "verification": {"verification": "not_recovered", "detail": "still 300/min"}}
    msg = report_message(plan, outcome, run_url="http://airflow/run")
    assert "NOT recovered" in msg["text"]
    body = str(msg["blocks"])
    assert "still 300/min" in body and "&lt;script&gt;" in body and "http://airflow/run" in body


def test_verification_window_and_why_not(policy):
    plan = {"dry_run": False, "alert": {"rule": "x", "labels": {"metric": "success_rate"}}}
    applied = {"steps": [{"step": "1", "status": "succeeded",
                          "finished_at": "2026-11-20T10:05:00+00:00"}]}
    start, end = verification_window(plan, applied, policy)
    assert start == datetime(2026, 11, 20, 10, 7, tzinfo=UTC)
    assert end - start == timedelta(minutes=5)
    assert "dry run" in verification_window({**plan, "dry_run": True}, applied, policy)
    assert "no alert" in verification_window({"dry_run": False, "alert": None}, applied, policy)
    failed = {"steps": [{"step": "1", "status": "failed", "finished_at": None}]}
    assert "ended failed" in verification_window(plan, failed, policy)


def _request(rule="abusive_caller_5m", playbook="rate_limit_user", labels=None):
    return {"fingerprint": "0123456789abcdef0123", "rule": rule, "severity": "warning",
            "playbook": playbook, "summary": "peak 400/min on user=user-042",
            "labels": labels or {"metric": "peak_calls_per_minute", "dimension": "user",
                                 "slice": "user-042", "user": "user-042"},
            "value": 400.0, "threshold": 100.0, "fired_at": "2026-11-20T10:10:00+00:00"}


#: An evaluation at 10:10 judged moments later: fresh (see test_heal_freshness.py).
FRESH = {"evaluated_at": datetime(2026, 11, 20, 10, 10, tzinfo=UTC),
         "now": datetime(2026, 11, 20, 10, 11, tzinfo=UTC)}


def test_heal_triggers_one_run_per_firing_alert(policy):
    triggers, notes = heal_triggers([_request()], scope="health", **FRESH, policy=policy)
    assert notes == []
    [t] = triggers
    assert t["trigger_run_id"] == \
        "heal__health__abusive_caller_5m__0123456789abcdef__20261120T1010"
    assert t["conf"]["target"] == "rate_limit_user" and t["conf"]["dry_run"] is False
    assert t["conf"]["alert"]["scope"] == "health"
    again, _ = heal_triggers([_request()], scope="health", **FRESH, policy=policy)
    assert again == triggers
    # A budget alert names no user: left to a person, with the reason.
    budget = _request("daily_tokens", "high_token_usage",
                      {"metric": "total_tokens", "dimension": "overall", "slice": "all"})
    triggers, notes = heal_triggers([budget], scope="hourly", **FRESH, policy=policy)
    assert triggers == [] and "needs label 'user_id'" in notes[0]
    off = policy.model_copy(update={"auto_heal": policy.auto_heal.model_copy(
        update={"enabled": False})})
    assert heal_triggers([_request()], scope="health", **FRESH, policy=off)[0] == []
