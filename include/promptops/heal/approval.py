"""A heal's approval, without Airflow: the text a person is asked, and what their answer
decides.

The Airflow side (the ApprovalOperator that asks in the UI, its Slack announcement) is
:mod:`promptops.airflow_adapters.heal_approval`; it stores each answer as
:func:`answer_from_event` makes it, and the heal DAG's later steps read that record with
:func:`applying_decision` and :func:`answer_decision`. No I/O; cheap to import.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

#: The options a person chooses from; no answer in time counts as :data:`REJECT`.
APPROVE = "Approve"
REJECT = "Reject"


def approval_body(plan: Mapping[str, Any], gate_result: Mapping[str, Any],
                  timeout: timedelta) -> str:
    """The approval request's body (Markdown): the plan, who asked and why, the policy's
    reasons, and how long the request waits."""
    return "\n".join(
        [f"**{plan['summary']}**", "", f"Requested by: {plan['requested_by']}", "",
         f"Reason: {plan['reason'] or '(none given)'}", ""]
        + [f"- {r}" for r in gate_result["reasons"]]
        + ["", f"No answer within {timeout} counts as a rejection."])


def answer_from_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The answer an approval event carries, as a plain record (XCom-safe): the chosen
    options, who answered and when, and whether nobody did in time."""
    user = event.get("responded_by_user")
    responded = event.get("responded_at")
    return {
        "chosen_options": list(event.get("chosen_options") or []),
        "responded_by_user": dict(user) if user else None,
        "responded_at": responded.isoformat() if responded else None,
        # The scheduler's timeout sweep answers with the defaults and no user.
        "timed_out": bool(event.get("timedout")) or not user,
    }


def _chosen(answer: Mapping[str, Any]) -> str | None:
    return (answer.get("chosen_options") or [None])[0]


def _responder(answer: Mapping[str, Any]) -> str | None:
    user = answer.get("responded_by_user") or {}
    return user.get("name") or user.get("id") if user else None


def answer_decision(answer: Mapping[str, Any] | None) -> tuple[str, str | None]:
    """``(decision, decided_by)`` of a heal that waited for a person: ``approved`` or
    ``rejected`` by them, ``timed_out`` (nobody answered in time) or ``no_answer`` (no
    record of an answer at all)."""
    if answer is None:
        return "no_answer", None
    decided_by = _responder(answer)
    if answer.get("timed_out"):
        return "timed_out", None
    if _chosen(answer) == APPROVE:
        return "approved", decided_by
    if decided_by is None:
        return "timed_out", None
    return "rejected", decided_by


def applying_decision(answer: Mapping[str, Any] | None) -> tuple[str, str | None]:
    """``(decision, decided_by)`` the apply step acts under: the person's approval, else the
    policy's (the apply step runs only after an approval or when none was needed)."""
    if answer and _chosen(answer) == APPROVE:
        return "approved", _responder(answer)
    return "auto_approved", "policy"
