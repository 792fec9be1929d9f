"""promptops heal DAG: one audited way to act on the platform, by hand or from an alert."""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, PokeReturnValue, dag, task

from promptops.airflow_adapters.context import run_url
from promptops.airflow_adapters.dag_defaults import dag_defaults
from promptops.airflow_adapters.heal_approval import HealApprovalNotifier, HealApprovalOperator
from promptops.heal.approval import REJECT
from promptops.heal.policy import ACTIONS, policy_timing

TIMING = policy_timing()
VERIFY = TIMING.verification
_PLAN = "ti.xcom_pull(task_ids='plan_heal')"


@dag(
    dag_id="promptops_heal",
    dag_display_name="promptops · heal",
    schedule=None,
    tags=["promptops", "heal", "ops"],
    **dag_defaults(
        # A rejected request fails without retrying (AirflowFailException); a retried
        # apply re-posts with the same Idempotency-Key, so it cannot act twice.
        retries=1,
        retry_delay=timedelta(seconds=20),
        execution_timeout=timedelta(minutes=5),
    ),
    params={
        "action": Param("rate_limit", type="string", enum=list(ACTIONS), title="Action",
                        description="What to do. restart_service and switch_model need "
                                    "approval; rate_limit and small scale_outs run at once."),
        "target": Param("", type="string", minLength=1, maxLength=128, title="Target",
                        description="A service (api_gateway, api_workers, intent_classifier, "
                                    "model_router), a user id (user-042), a model, or for "
                                    "run_playbook a playbook (api_timeouts, rate_limit_user, "
                                    "...) or a script in include/playbooks/."),
        "params": Param({}, type="object", title="Action parameters",
                        description='e.g. {"replicas": 6} for scale_out, '
                                    '{"requests_per_minute": 60, "ttl_minutes": 60} for '
                                    'rate_limit, {"to": "gpt-4o-mini"} for switch_model, '
                                    '{"args": ["gpu-node-02"]} for a script. Empty: the '
                                    "policy's defaults."),
        "dry_run": Param(True, type="boolean", title="Dry run",
                         description="Check and report everything, change nothing. Untick "
                                     "to act for real."),
        "reason": Param("", type="string", maxLength=2000, title="Reason",
                        description="Why: goes into the audit and the Slack report."),
        "alert": Param(None, type=["null", "object"], title="Alert",
                       description="Set by the hourly and health DAGs: the alert this heal "
                                   "answers, whose metric is re-measured afterwards.",
                       section="Set by promptops DAGs"),
        "requested_by": Param(None, type=["null", "string"], maxLength=200,
                              title="Requested by", section="Set by promptops DAGs",
                              description="Set by the DAG that triggered the heal."),
    },
)
def promptops_heal():
    """
    ### promptops heal: validated, approved, applied once, verified, audited

    Trigger it from the form (**dry run** is ticked by default) or let the hourly and health
    DAGs trigger it for a firing alert that names a playbook.

    1. **Validate and plan**: the action must be one of the enum; the target a configured
       service, a user id matching the policy's pattern, a priced model, or a playbook /
       an allowlisted script; numbers within the policy's bounds. A playbook
       (`include/config/playbooks.yaml`) becomes its ordered steps. A bad request fails
       here, before anything is posted, with a message saying what was wrong (kept in the
       audit).
    2. **Policy** (`include/config/heal_policy.yaml`): cool-down per target and a cap of
       actions per hour stop heal storms; some actions need a person.
    3. **Approval** where the policy says so: a Required Action in the UI (and a Slack
       message). No answer within the policy's `approval_timeout` counts as a rejection;
       a rejection posts nothing.
    4. **Apply**: `POST /v1/ops/actions` per step, with an `Idempotency-Key` from the run
       and the step, so retries and reruns act once; waits for the platform in reschedule
       mode (no worker held between looks).
    5. **Verify**: after the settle time, the alert's metric is re-measured over fresh call
       records with the rule that fired: *recovered* or *not recovered*.
    6. **Report** to Slack and write the audit (`heal_audit/` in the lake): who asked, the
       decision and who made it, what the platform answered, the verification.
    """

    @task(task_display_name="Validate and plan")
    def plan_heal(**context) -> dict:
        from datetime import UTC, datetime

        from airflow.sdk.exceptions import AirflowFailException

        from promptops.airflow_adapters.resources import lake, slack_webhooks
        from promptops.heal.flow import (
            invalid_audit,
            plan_heal,
            report_message,
            send_heal_message,
        )
        from promptops.heal.policy import HealConfError

        conf = dict(context["params"])
        conf["requested_by"] = _requester(conf.pop("requested_by", None), context["dag_run"])
        if conf.get("alert") is None:
            conf.pop("alert", None)
        now, run_id = datetime.now(UTC), context["run_id"]
        try:
            plan = plan_heal(conf, run_id, now)
        except HealConfError as exc:
            invalid_audit(lake(), conf, run_id, now, str(exc))
            problem = send_heal_message(report_message(
                None, {"status": "invalid"}, error=str(exc),
                run_url=run_url(context)), webhooks=slack_webhooks())
            if problem:
                print(f"Slack: {problem}")
            raise AirflowFailException(f"heal request rejected, nothing was posted: {exc}"
                                       ) from None
        print(f"plan: {plan['summary']} (requested by {plan['requested_by']})")
        return plan

    @task.branch(task_display_name="Check policy")
    def policy_gate(plan: dict, **context) -> str:
        from datetime import UTC, datetime

        from promptops.airflow_adapters.resources import lake
        from promptops.heal.approval import approval_body
        from promptops.heal.flow import gate, history_for
        from promptops.heal.policy import load_policy

        policy, now = load_policy(), datetime.now(UTC)
        result = gate(plan, history_for(lake(), now, policy, exclude_run=context["run_id"]),
                      now, policy)
        result["body"] = approval_body(plan, result, TIMING.approval_timeout)
        context["ti"].xcom_push(key="gate", value=result)
        for reason in result["reasons"]:
            print(reason)
        return {"auto": "apply_actions", "approval": "approve",
                "denied": "denied"}[result["verdict"]]

    approve = HealApprovalOperator(
        task_id="approve",
        task_display_name="Approve heal",
        subject="Approve heal: {{ " + _PLAN + "['summary'] }}",
        body="{{ ti.xcom_pull(task_ids='policy_gate', key='gate')['body'] }}",
        response_timeout=TIMING.approval_timeout,
        # No answer in time: the scheduler applies the default, a rejection.
        defaults=REJECT,
        notifiers=[HealApprovalNotifier()],
    )

    @task.sensor(
        task_display_name="Apply actions",
        mode="reschedule",
        poke_interval=VERIFY.poke_interval.total_seconds(),
        timeout=(VERIFY.action_timeout + timedelta(minutes=5)).total_seconds(),
        trigger_rule="none_failed_min_one_success",
        # Posts are serialised across runs, so the policy's last look before a post holds.
        max_active_tis_per_dag=1,
    )
    def apply_actions(plan: dict, **context) -> PokeReturnValue:
        from datetime import UTC, datetime

        from promptops.airflow_adapters.resources import lake, platform_client
        from promptops.heal.approval import applying_decision
        from promptops.heal.flow import apply_poke

        decision, decided_by = applying_decision(
            context["ti"].xcom_pull(task_ids="approve", key="answer"))
        with platform_client() as client:
            result = apply_poke(client, lake(), plan, datetime.now(UTC), decision=decision,
                                decided_by=decided_by)
        for s in result["steps"]:
            print(f"step {s['step']}: {s['what']} -> {s['status']} {s['detail'] or ''}")
        return PokeReturnValue(is_done=result["done"], xcom_value=result)

    @task.sensor(
        task_display_name="Verify recovery",
        mode="reschedule",
        poke_interval=VERIFY.poke_interval.total_seconds(),
        timeout=(VERIFY.settle + VERIFY.window + VERIFY.ingest_lag
                 + timedelta(minutes=15)).total_seconds(),
    )
    def verify_heal(plan: dict, applied: dict) -> PokeReturnValue:
        from promptops.airflow_adapters.resources import platform_client, thresholds
        from promptops.heal.flow import platform_now, remeasure, verification_window

        window = verification_window(plan, applied)
        if isinstance(window, str):
            print(f"not verified: {window}")
            return PokeReturnValue(is_done=True, xcom_value={"skipped": window})
        start, end = window
        with platform_client() as client:
            now = platform_now(client)
            if now < end + VERIFY.ingest_lag:
                print(f"re-measuring {start:%H:%M:%S}-{end:%H:%M:%S} UTC once the platform's "
                      f"clock passes its end (now {now:%H:%M:%S})")
                return PokeReturnValue(is_done=False)
            result = remeasure(client, plan["alert"], start, end, thresholds=thresholds())
        print(f"verification: {result['verification']}: {result['detail']}")
        return PokeReturnValue(is_done=True, xcom_value=result)

    @task(task_display_name="Report and audit", trigger_rule="all_done")
    def report(**context) -> dict:
        from datetime import UTC, datetime

        from airflow.sdk.exceptions import AirflowFailException

        from promptops.airflow_adapters.resources import lake, slack_webhooks
        from promptops.heal.flow import (
            finish_audit,
            outcome_of,
            report_message,
            send_heal_message,
        )

        ti = context["ti"]
        plan = ti.xcom_pull(task_ids="plan_heal")
        if plan is None:  # fail the run too: it did nothing that was asked
            raise AirflowFailException("no plan to report: the heal request was rejected (the "
                                       "Validate and plan task says why); nothing was posted")
        gate_result = ti.xcom_pull(task_ids="policy_gate", key="gate")
        verified = ti.xcom_pull(task_ids="verify_heal")
        outcome = outcome_of(plan, gate_result, ti.xcom_pull(task_ids="approve", key="answer"),
                             ti.xcom_pull(task_ids="apply_actions"),
                             verified if verified and "verification" in verified else None)
        if verified and "skipped" in verified:
            outcome["verify_skipped"] = verified["skipped"]
        written = finish_audit(lake(), plan, outcome, datetime.now(UTC), gate_result)
        message = report_message(plan, outcome, gate_result=gate_result,
                                 run_url=run_url(context))
        problem = send_heal_message(message, webhooks=slack_webhooks())
        print(f"heal {outcome['status']}: {written} audit record(s)"
              + (f"; Slack: {problem}" if problem else "; reported to Slack"))
        if outcome["status"] in ("not_applied", "action_failed"):
            # Reported and audited; the run still ends failed, so it shows red in the UI.
            raise AirflowFailException(
                f"heal {outcome['status']}: the action was approved but did not take effect "
                "(see the Apply actions task); fix the cause and clear that task to retry")
        return {**outcome, "slack_problem": problem}

    plan = plan_heal()
    gate_branch = policy_gate(plan)
    applied = apply_actions(plan)
    denied = EmptyOperator(task_id="denied", task_display_name="Denied by policy")
    gate_branch >> [approve, applied, denied]
    approve >> applied
    # Not downstream of the approval: a rejection skips the approval's direct downstream,
    # and the report must still run (it reports the rejection).
    [verify_heal(plan, applied), denied] >> report()


def _requester(given: str | None, dag_run) -> str:
    """Who asked: the triggering DAG's own name for automatic heals, else the person."""
    how = str(getattr(dag_run, "triggered_by", "") or "").rsplit(".", 1)[-1].lower()
    user = getattr(dag_run, "triggering_user_name", None)
    if given and how in ("operator", "test", ""):
        return given
    who = user or "unknown user"
    return f"{who} via {how or 'manual trigger'}" + (f" (for {given})" if given else "")


promptops_heal()
