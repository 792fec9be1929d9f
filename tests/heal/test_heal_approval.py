"""A heal's approval without Airflow: the text a person is asked, what the answer decides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from promptops.heal.approval import (
    answer_decision,
    answer_from_event,
    applying_decision,
    approval_body,
)
from tests.helpers import ROOT

ALICE = {"id": "7", "name": "alice"}


def test_the_approval_body_says_what_who_why_and_until_when():
    plan = {"summary": "restart_service api_gateway", "requested_by": "promptops_hourly",
            "reason": ""}
    gate_result = {"reasons": ["restart_service needs approval by policy"]}
    assert approval_body(plan, gate_result, timedelta(minutes=30)) == (
        "**restart_service api_gateway**\n\nRequested by: promptops_hourly\n\n"
        "Reason: (none given)\n\n- restart_service needs approval by policy\n\n"
        "No answer within 0:30:00 counts as a rejection.")


def test_an_answer_event_becomes_a_plain_record():
    at = datetime(2026, 11, 20, 10, 5, tzinfo=UTC)
    answered = answer_from_event({"chosen_options": ("Approve",), "responded_by_user": ALICE,
                                  "responded_at": at})
    assert answered == {"chosen_options": ["Approve"], "responded_by_user": ALICE,
                        "responded_at": "2026-11-20T10:05:00+00:00", "timed_out": False}
    # The scheduler's timeout sweep answers with the defaults and no user.
    swept = answer_from_event({"chosen_options": ["Reject"], "responded_by_user": None,
                               "timedout": True})
    assert swept == {"chosen_options": ["Reject"], "responded_by_user": None,
                     "responded_at": None, "timed_out": True}
    assert answer_from_event({"chosen_options": ["Reject"]})["timed_out"]


@pytest.mark.parametrize(("answer", "decided"), [
    (None, ("no_answer", None)),
    ({"chosen_options": ["Approve"], "responded_by_user": ALICE}, ("approved", "alice")),
    ({"chosen_options": ["Approve"], "responded_by_user": {"id": "7"}}, ("approved", "7")),
    ({"chosen_options": ["Reject"], "responded_by_user": ALICE}, ("rejected", "alice")),
    ({"chosen_options": ["Reject"], "responded_by_user": None}, ("timed_out", None)),
    ({"chosen_options": ["Approve"], "responded_by_user": ALICE, "timed_out": True},
     ("timed_out", None)),
    ({"chosen_options": [], "responded_by_user": None}, ("timed_out", None)),
])
def test_what_an_answer_decides(answer, decided):
    assert answer_decision(answer) == decided


def test_apply_acts_on_an_approval_or_by_policy():
    assert applying_decision({"chosen_options": ["Approve"], "responded_by_user": ALICE}) == \
        ("approved", "alice")
    assert applying_decision(None) == ("auto_approved", "policy")
    assert applying_decision({"chosen_options": ["Reject"], "responded_by_user": ALICE}) == \
        ("auto_approved", "policy")


def test_the_airflow_side_neither_words_nor_decodes_the_approval():
    """Static: the DAG file and the adapter leave text and decoding to promptops.heal."""
    for path in (ROOT / "dags" / "promptops_heal.py",
                 ROOT / "include" / "promptops" / "airflow_adapters" / "heal_approval.py"):
        text = path.read_text()
        for spelled_out in ("chosen_options", "responded_by_user", "Requested by: "):
            assert spelled_out not in text, f"{path.name} spells out {spelled_out}"
