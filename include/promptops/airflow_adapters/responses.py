"""How an evaluating DAG ends: a branch to nothing to do, alerts sent, or a heal request.

Shared by the hourly and the health DAGs so both read the same in the UI. Cheap to import
(Airflow only): the task bodies import the library when they run.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import task

HEAL_DAG_ID = "promptops_heal"


# ``outcome`` is an XComArg; Airflow types a task's call by the value it resolves to (a dict).
def respond(outcome: Any, scope: str) -> None:
    """Wire the response tasks after ``outcome`` (the alert engine's outcome XCom);
    ``scope`` names the evaluation (``hourly`` or ``health``) in the heals it triggers."""

    @task.branch(task_display_name="Choose response")
    def choose_response(outcome: dict) -> str:
        from promptops.pipelines.hourly import response_for

        return response_for(outcome)

    @task(task_display_name="Request heal")
    def request_heal(outcome: dict, **context: Any) -> list[dict]:
        """Keep the heal requests in the lake and say which heal runs to trigger."""
        from promptops.airflow_adapters.resources import lake, platform_client
        from promptops.heal.flow import heal_triggers, platform_clock
        from promptops.pipelines.hourly import write_heal_requests

        for r in outcome["heal_requests"]:
            print(f"heal requested: playbook {r['playbook']} for {r['summary']}")
        # Each request once per (DAG, alert, fire time): reruns and other DAGs' runs of the
        # same run id neither double nor drop any.
        write_heal_requests(lake(), outcome["evaluated_at"], outcome["heal_requests"],
                            dag_id=context["dag_run"].dag_id, run_id=context["run_id"])
        # Heal only from a current evaluation (its age on the platform's clock); a stale
        # one is reported here and kept in the heal audit.
        triggers, notes = heal_triggers(
            outcome["heal_requests"], scope=scope, now=platform_clock(platform_client),
            lake=lake(),
            evaluated_at=context.get("data_interval_end") or context["dag_run"].run_after)
        for note in notes:
            print(note)
        for t in triggers:
            print(f"triggering {HEAL_DAG_ID} run {t['trigger_run_id']}")
        return triggers

    triggers = request_heal(outcome)
    choose_response(outcome) >> [
        EmptyOperator(task_id="all_clear", task_display_name="Nothing to do"),
        EmptyOperator(task_id="alerts_sent", task_display_name="Alerts sent"),
        triggers,
    ]
    # One heal run per firing alert; a run that exists already (the same alert still firing,
    # or this task rerun) is skipped, not triggered twice.
    TriggerDagRunOperator.partial(
        task_id="trigger_heal", task_display_name="Trigger heal",
        trigger_dag_id=HEAL_DAG_ID, skip_when_already_exists=True,
        wait_for_completion=False, logical_date=None,
        # The heal DAG validates its conf strictly: nothing extra in it.
        openlineage_inject_parent_info=False,
    ).expand_kwargs(triggers)
