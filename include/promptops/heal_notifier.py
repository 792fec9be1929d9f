"""The Slack message a heal sends when it starts waiting for a person's approval.

An Airflow notifier, so the approval task itself sends it as it starts to wait. Cheap to
import (the heal DAG file creates it at parse time); the work happens in :meth:`notify`.
"""

from __future__ import annotations

import logging

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


class HealApprovalNotifier(BaseNotifier):
    """Posts "heal waiting for approval" with the plan, the policy's reasons and a link to
    the run (where the Required Actions view takes the answer). Never fails the task: an
    approval request must stay answerable in the UI even when Slack is down."""

    def __init__(self, plan_task_id: str = "plan_heal", gate_task_id: str = "policy_gate"):
        super().__init__()
        self.plan_task_id = plan_task_id
        self.gate_task_id = gate_task_id

    def notify(self, context) -> None:
        try:
            from promptops.heal_flow import report_message, send_heal_message

            ti = context["ti"]
            plan = ti.xcom_pull(task_ids=self.plan_task_id)
            gate_result = ti.xcom_pull(task_ids=self.gate_task_id, key="gate")
            run_url = ti.log_url.split("/tasks/")[0]
            message = report_message(plan, {"status": "approval_needed"}, run_url=run_url,
                                     gate_result=gate_result)
            problem = send_heal_message(message)
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            log.warning("could not announce the approval request in Slack: %s", problem)
        else:
            log.info("approval request announced in Slack")
