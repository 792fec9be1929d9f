"""Human approval of heals, for real: the README's stack (airflow standalone, the scheduler,
the simulator, the Slack sink; the stack tests' shared one, its simulator's clock set to
SIM_NOW for this module), heal runs triggered and answered through Airflow's REST API.

Three heals that the policy sends to a person, side by side:
- approved: the api_timeouts playbook for an error burst; the restart ends the burst, each
  step is posted exactly once, and the verification says recovered;
- rejected: nothing is posted;
- no answer: the approval times out (the policy's approval_timeout, 3 minutes here), counts as a
  rejection, and nothing is posted.
Each one announces in Slack that it waits for approval, and each ends in the audit.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from promptops.heal.audit import read_audit
from tests.helpers.heal import SIM_NOW
from tests.helpers.stack import SharedStack

HEAL = "promptops_heal"
RUNS = ("approved", "rejected", "unanswered")
ALERT = {"rule": "success_rate", "scope": "hourly", "severity": "critical",
         "fingerprint": "feedfacefeedface",
         "labels": {"metric": "success_rate", "dimension": "model", "slice": "gpt-4o-mini",
                    "model": "gpt-4o-mini", "service": "platform-api"},
         "summary": "success rate 70.2% < 95% on model=gpt-4o-mini", "value": 0.702,
         "threshold": 0.95}


@pytest.fixture(scope="module")
def stack(airflow_stack: SharedStack):
    """The shared stack (its heal policy: short timings, a 3-minute approval timeout), the
    platform's clock at SIM_NOW while the error burst is on."""
    airflow_stack.set_sim_clock(SIM_NOW)
    try:
        yield airflow_stack, airflow_stack.lake
    finally:
        airflow_stack.set_sim_clock(None)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_approved_rejected_and_unanswered_heals(stack):
    stack, lake = stack
    api = stack.api
    stack.forget()
    earlier = stack.sim_action_ids()  # the other stack tests'

    def actions() -> list[dict]:
        return [a for a in stack.sim("/_sim/truth")["actions"] if a["action_id"] not in earlier]
    approved = {"action": "run_playbook", "target": "api_timeouts", "dry_run": False,
                "reason": "gpt-4o-mini failing", "alert": ALERT}
    rejected = {"action": "restart_service", "target": "intent_classifier", "dry_run": False,
                "reason": "try a restart"}
    unanswered = {"action": "switch_model", "target": "gpt-4o",
                  "params": {"to": "gpt-4o-mini"}, "dry_run": False, "reason": "cheaper"}
    # The form's enum refuses an unknown action before a run even exists.
    with pytest.raises(AssertionError, match="HTTP 400") as err:
        api.trigger(HEAL, "bad-action", {**rejected, "action": "reboot_everything"})
    assert "action" in str(err.value)
    for run_id, conf in zip(RUNS, (approved, rejected, unanswered), strict=True):
        api.trigger(HEAL, run_id, conf)
    for run_id in RUNS:
        api.wait_task(HEAL, run_id, "approve", {"awaiting_input"}, timeout=240)
    # Nothing reached the platform while the three wait for a person.
    assert actions() == []
    # A person answers after seconds, not within the seconds after the task parked: a task
    # process here lingers up to ~6 s after it parks before the executor reports it, and an
    # answer that reaches the scheduler first makes Airflow 3.3.2 take the resumed task for
    # a lost one and retry it (its approval request starts over and the answer is lost).
    # Let the executor's reports land first.
    time.sleep(15)

    api.respond(HEAL, "approved", "approve", "Approve")
    api.respond(HEAL, "rejected", "approve", "Reject")
    assert api.wait_run(HEAL, "rejected") == "success"
    assert api.wait_run(HEAL, "unanswered", timeout=300) == "success"
    assert api.wait_run(HEAL, "approved", timeout=400) == "success", stack.tail()

    # Exactly the approved heal's two steps reached the platform, once each.
    assert sorted((a["action"], a["target"], a["status"]) for a in actions()) == [
        ("restart_service", "api_gateway", "succeeded"),
        ("scale_out", "api_workers", "succeeded")]
    posts = [r for r in stack.sim("/_sim/requests")["requests"]
             if r["method"] == "POST" and r["path"] == "/v1/ops/actions"]
    assert len({p["idempotency_key"] for p in posts}) == 2
    for run_id in ("rejected", "unanswered"):
        states = api.task_states(HEAL, run_id)
        assert states["apply_actions"] == "skipped" and states["report"] == "success", states

    verified = api.xcom(HEAL, "approved", "verify_heal")
    assert verified["verification"] == "recovered", verified
    outcomes = {r: api.xcom(HEAL, r, "report") for r in RUNS}
    assert outcomes["approved"]["status"] == "recovered"
    assert outcomes["approved"]["decided_by"] == "admin"
    assert (outcomes["rejected"]["status"], outcomes["rejected"]["decided_by"]) == \
        ("rejected", "admin")
    assert outcomes["unanswered"]["status"] == "timed_out"

    # Slack: three "waiting for approval" messages, then three reports.
    texts = [m["body"]["text"] for m in stack.slack_messages()]
    assert sum("waiting for approval" in t for t in texts) == 3, texts
    assert any("metric recovered" in t for t in texts)
    assert any("Heal rejected" in t for t in texts)
    assert any("approval timed out" in t for t in texts)

    # The audit: who decided what, per step.
    records = read_audit(lake, SIM_NOW - timedelta(days=30), datetime.now(UTC) + timedelta(1))
    by_target = {r.target: r for r in records if r.run_id in RUNS}
    assert by_target["api_gateway"].decision == "approved"
    assert by_target["api_gateway"].decided_by == "admin"
    assert by_target["api_gateway"].verification == "recovered"
    assert by_target["intent_classifier"].decision == "rejected"
    assert by_target["intent_classifier"].action_id is None
    assert by_target["gpt-4o"].decision == "timed_out"
    assert json.loads(json.dumps(by_target["gpt-4o"].params)) == {"to": "gpt-4o-mini"}
