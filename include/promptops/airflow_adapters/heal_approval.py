"""The heal DAG's approval step: Airflow's ApprovalOperator, announced in Slack, with the
answer kept for the report and the audit. What the request says and what an answer
decides are :mod:`promptops.heal.approval`'s.

Cheap to import (the heal DAG file creates both at parse time); the work happens when the
task runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import BaseNotifier

from promptops.airflow_adapters.context import run_url
from promptops.heal.approval import answer_from_event

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)


class HealApprovalNotifier(BaseNotifier):
    """Posts "heal waiting for approval" with the plan, the policy's reasons and a link to
    the run (where the Required Actions view takes the answer). Never fails the task: an
    approval request must stay answerable in the UI even when Slack is down."""

    def __init__(self, plan_task_id: str = "plan_heal", gate_task_id: str = "policy_gate"):
        super().__init__()
        self.plan_task_id = plan_task_id
        self.gate_task_id = gate_task_id

    def notify(self, context: Context) -> None:
        try:
            from promptops.airflow_adapters.resources import slack_webhooks
            from promptops.heal.flow import report_message, send_heal_message

            ti = context["ti"]
            plan = ti.xcom_pull(task_ids=self.plan_task_id)
            gate_result = ti.xcom_pull(task_ids=self.gate_task_id, key="gate")
            message = report_message(plan, {"status": "approval_needed"},
                                     run_url=run_url(context), gate_result=gate_result)
            problem = send_heal_message(message, webhooks=slack_webhooks())
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            log.warning("could not announce the approval request in Slack: %s", problem)
        else:
            log.info("approval request announced in Slack")


class HealApprovalOperator(ApprovalOperator):
    """ApprovalOperator that keeps the answer in XCom (key ``answer``) whatever it is.

    A rejection skips the downstream tasks by raising, so the stock operator leaves no
    return value behind; the report needs to tell *rejected by whom* from *timed out*.
    """

    def execute_complete(self, context, event):
        if "error" not in event:
            context["ti"].xcom_push(key="answer", value=answer_from_event(event))
        return super().execute_complete(context, event)
