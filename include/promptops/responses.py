"""How an evaluating DAG ends: a branch to nothing to do, alerts sent, or a heal request.

Shared by the hourly and the health DAGs so both read the same in the UI. Cheap to import
(Airflow only): the task bodies import the library when they run.
"""

from __future__ import annotations

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import task


def respond(outcome) -> None:
    """Wire the response tasks after ``outcome`` (the alert engine's outcome XCom)."""

    @task.branch(task_display_name="Choose response")
    def choose_response(outcome: dict) -> str:
        from promptops.hourly_analysis import response_for

        return response_for(outcome)

    @task(task_display_name="Request heal")
    def request_heal(outcome: dict, **context) -> str | None:
        """Keep the heal requests in the lake; the Slack message already names the playbook."""
        from promptops.hourly_analysis import write_heal_requests
        from promptops.lake import Lake

        for r in outcome["heal_requests"]:
            print(f"heal requested: playbook {r['playbook']} for {r['summary']}")
        return write_heal_requests(Lake(), context["data_interval_start"],
                                   outcome["heal_requests"], run_id=context["run_id"])

    choose_response(outcome) >> [
        EmptyOperator(task_id="all_clear", task_display_name="Nothing to do"),
        EmptyOperator(task_id="alerts_sent", task_display_name="Alerts sent"),
        request_heal(outcome),
    ]
