"""The heal DAG's typed hand-offs against XCom values written before they were typed.

``heal_handoffs_v1.json`` holds what the heal tasks of commit c34acfa handed each other for
an approved two-step playbook heal (plan, policy gate with the approval text, the
approver's answer, the apply step's result against the simulator, the verification and the
outcome): a run waiting for approval over a deploy resumes with values like these.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from promptops.heal.flow import gate, outcome_of, plan_heal, report_message, verification_window
from promptops.heal.policy import load_policy
from promptops.heal.state import (
    ApplyResult,
    GateResult,
    HealOutcome,
    HealPlan,
    Verification,
)

FIXTURE = Path(__file__).with_name("heal_handoffs_v1.json")
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy():
    return load_policy()


@pytest.fixture()
def old() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize(("model", "key"), [
    (HealPlan, "plan"), (GateResult, "gate"), (ApplyResult, "applied"),
    (Verification, "verified"), (HealOutcome, "outcome")])
def test_each_hand_off_converts_back_to_the_same_xcom(old, model, key):
    assert model.of(old[key]).to_xcom() == old[key]


def test_the_plan_is_typed_inside(old):
    plan = HealPlan.of(old["plan"])
    assert plan.planned_at == NOW and plan.alert is not None and plan.alert.metric == \
        "timeout_rate"
    assert [(s.step, s.kind, s.request["target"]) for s in plan.steps] == [
        ("1", "platform", "api_gateway"), ("2", "platform", "api_workers")]


def test_a_new_plan_has_the_shape_of_an_old_one(old, policy):
    plan = plan_heal({"action": "run_playbook", "target": "api_timeouts", "dry_run": False,
                      "alert": old["plan"]["alert"]}, "run-1", NOW, policy=policy)
    assert set(plan) == set(old["plan"])
    assert [set(s) for s in plan["steps"]] == [set(s) for s in old["plan"]["steps"]]
    assert plan["planned_at"] == old["plan"]["planned_at"] == NOW.isoformat()


def test_the_steps_read_old_values(old, policy):
    decided = gate(old["plan"], [], NOW, policy)
    assert decided == {k: v for k, v in old["gate"].items() if k != "body"}
    start, end = verification_window(old["plan"], old["applied"], policy)
    assert start == datetime.fromisoformat(old["applied"]["steps"][1]["finished_at"]) \
        + policy.verification.settle
    outcome = outcome_of(old["plan"], old["gate"], old["answer"], old["applied"],
                         old["verified"])
    assert outcome == old["outcome"]
    assert (outcome["status"], outcome["decision"], outcome["decided_by"]) == \
        ("recovered", "approved", "alice")
    message = report_message(old["plan"], {**outcome, "verify_skipped": None},
                             gate_result=old["gate"])
    assert "metric recovered" in message["text"]
    assert end - start == policy.verification.window > timedelta(0)
