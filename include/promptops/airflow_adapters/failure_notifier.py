"""The Airflow side of "tell someone when promptops itself fails".

Every DAG gets three things from here:

- :data:`PERMANENT_ERRORS_FAIL`, a task ``retry_policy``: errors another try cannot fix (a
  wrong key, missing permissions, a request the platform refuses, no platform connection;
  :data:`promptops.errors.PERMANENT_ERRORS`) fail the task at once, like an
  ``AirflowFailException``, instead of being retried. Everything else keeps its retries.
- :func:`record_task_failure`, a task ``on_failure_callback``: keeps the failed task's error
  (type and message, secrets blanked) in XCom. It runs in the task's process before the
  failure is reported to Airflow, so the run cannot be marked failed before the record is
  there.
- :class:`RunFailureNotifier`, the DAG's ``on_failure_callback``: Airflow calls it once when
  a run fails; it posts one Slack message with the DAG, the failed tasks, their causes and
  the link to the run, to the route of a critical alert (``slack_alerts_critical``, else
  ``slack_alerts``). Posting never raises: a failure alert that cannot be sent is logged.
  The same failure again (same DAG, tasks and causes, digits aside) is posted at most once
  per the route's ``repeat_interval``: a wrong key fails the 5-minute health DAG every run,
  and twelve identical pages an hour teach people to mute the channel.

Only names from ``airflow.sdk`` and :mod:`promptops.errors` are imported at module level,
so DAG files stay cheap to parse.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseNotifier, ExceptionRetryPolicy, RetryAction, RetryRule

from promptops.airflow_adapters.context import run_url
from promptops.alerts.failure import (
    FAILURE_XCOM_KEY,
    NO_RECORDED_CAUSE,
    TaskFailure,
    describe_error,
    failure_message,
    failure_signature,
)
from promptops.errors import PERMANENT_ERRORS

log = logging.getLogger(__name__)

PERMANENT_ERRORS_FAIL = ExceptionRetryPolicy(rules=[RetryRule(
    exception=list(PERMANENT_ERRORS), action=RetryAction.FAIL,
    reason="a permanent error that another try cannot fix: fix the key, the permissions, "
           "the request or the connection, then clear the task")])

#: The labels a failed run is routed by in alerting.yaml: a critical alert.
RUN_FAILED_LABELS = {"rule": "promptops_run_failed", "severity": "critical"}
#: The route when alerting.yaml cannot be read (that may be why the run failed).
FALLBACK_CONNECTIONS = ["slack_alerts_critical", "slack_alerts"]
FALLBACK_REPEAT = timedelta(hours=4)


def record_task_failure(context: Any) -> None:
    """Task ``on_failure_callback``: keep this task's cause for the run's failure alert."""
    try:
        ti = context["ti"]
        failure = TaskFailure(task_id=ti.task_id, map_index=ti.map_index,
                              try_number=ti.try_number,
                              cause=describe_error(context.get("exception"), known_secrets()))
        ti.xcom_push(key=FAILURE_XCOM_KEY, value=failure.as_dict())
    except Exception as exc:  # a callback must not hide the task's own failure
        log.warning("could not record the task's failure for the failure alert (%s)",
                    type(exc).__name__)


class RunFailureNotifier(BaseNotifier):
    """DAG ``on_failure_callback``: one Slack message per failed run (see the module)."""

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # Nothing to render, and under dag.test() the context's DAG is a serialized one that
        # cannot build a template environment: rendering would fail the callback.
        return None

    def notify(self, context: Any) -> None:
        dag_id = getattr(context.get("dag"), "dag_id", "?")
        try:
            problem = self._post(context)
        except Exception as exc:  # never raise out of a callback; the type names the bug
            problem = f"could not build or send it ({type(exc).__name__})"
        if isinstance(problem, RepeatedFailure):
            log.info("failure alert for %s run %s not posted: %s", dag_id,
                     context.get("run_id"), problem)
        elif problem:
            log.warning("failure alert for %s run %s not sent: %s", dag_id,
                        context.get("run_id"), problem)
        else:
            log.info("failure alert for %s run %s sent", dag_id, context.get("run_id"))

    def _post(self, context: Any) -> str | None:
        from promptops.airflow_adapters.resources import slack_webhooks
        from promptops.alerts.slack import send_to_first

        dag, run_id, ti = context["dag"], context["run_id"], context.get("ti")
        failures = recorded_failures(dag, run_id)
        if ti is not None and not any(f.task_id == ti.task_id for f in failures):
            map_index = ti.map_index if isinstance(ti.map_index, int) else -1
            failures.append(TaskFailure(task_id=ti.task_id, cause=NO_RECORDED_CAUSE,
                                        map_index=map_index))
        secrets = known_secrets()
        connections, repeat = alert_route_and_repeat()
        ledger = RepeatLedger.from_lake()
        claim = ledger.claim(dag.dag_id, failure_signature(dag.dag_id, failures,
                                                           context.get("reason")), repeat)
        if claim is None:
            return RepeatedFailure(f"the same failure was posted within the last "
                                   f"{_span(repeat)} (alerting.yaml repeat_interval)")
        message = failure_message(dag_id=dag.dag_id, run_id=run_id, failures=failures,
                                  run_url=run_url(context),
                                  reason=context.get("reason"), secrets=secrets,
                                  repeat_note=f"The same failure again is posted at most once "
                                              f"every {_span(repeat)}.")
        problem = send_to_first(message, connections, what="the failure alert",
                                webhooks=slack_webhooks())
        if problem:
            ledger.release(claim)  # not posted: the next failure may try again
        return problem


class RepeatedFailure(str):
    """Why a failure alert was not posted: it repeats one posted a moment ago."""


class RepeatLedger:
    """Which failures were posted when: one object per (DAG, failure, repeat window), created
    only if it does not exist yet, in the lake beside the alert engine's state. Two runs
    failing alike at once post one message; the lake out of reach never stops a post."""

    def __init__(self, blobs: Any) -> None:
        self.blobs = blobs

    @classmethod
    def from_lake(cls) -> RepeatLedger:
        from promptops.airflow_adapters.resources import lake as make_lake
        from promptops.alerts.store import blob_store
        from promptops.contracts.datasets import ALERT_STATE

        lake = make_lake()
        return cls(blob_store(lake.root / ALERT_STATE / "failure_alerts", local=lake.is_local))

    def claim(self, dag_id: str, signature: str, repeat: timedelta,
              now: datetime | None = None) -> str | None:
        """The claim's key when this run should post; None when the failure was posted in
        the current window already."""
        now = now or datetime.now(UTC)
        window = int(now.timestamp() // max(repeat.total_seconds(), 60))
        key = f"{dag_id}/{signature}/{window}.json"
        try:
            created = self.blobs.create(key, json.dumps({"posted_at": now.isoformat()}).encode())
        except Exception as exc:  # an unreachable lake must not silence the alert
            log.warning("failure-alert ledger unavailable (%s); posting anyway",
                        type(exc).__name__)
            return ""
        return key if created else None

    def release(self, key: str) -> None:
        if key:
            try:
                self.blobs.delete(key)
            except Exception as exc:
                log.warning("could not release the failure-alert claim (%s)",
                            type(exc).__name__)


def _span(td: timedelta) -> str:
    minutes = int(td.total_seconds() // 60)
    return f"{minutes // 60} h" if minutes % 60 == 0 and minutes >= 60 else f"{minutes} min"


def recorded_failures(dag: Any, run_id: str) -> list[TaskFailure]:
    """The failures the run's tasks recorded (:func:`record_task_failure`)."""
    from airflow.sdk.execution_time import task_runner

    if hasattr(task_runner, "SUPERVISOR_COMMS"):  # a dag-processor or worker: ask Airflow
        from airflow.sdk.execution_time.xcom import XCom

        docs = [doc for task_id in dag.task_ids
                for doc in XCom.get_all(key=FAILURE_XCOM_KEY, dag_id=dag.dag_id,
                                        task_id=task_id, run_id=run_id) or []]
    else:  # dag.test() runs DAG callbacks inline, beside the metadata database
        docs = _failure_xcoms_from_db(dag.dag_id, run_id)
    return [f for f in map(TaskFailure.from_dict, docs) if f is not None]


def _failure_xcoms_from_db(dag_id: str, run_id: str) -> list[Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run_id, key=FAILURE_XCOM_KEY,
                                                  dag_ids=dag_id)).all()
        return [XComModel.deserialize_value(row) for row in rows]


def alert_route() -> list[str]:
    """The connections a critical alert goes to (alerting.yaml), first existing one wins."""
    return alert_route_and_repeat()[0]


def alert_route_and_repeat() -> tuple[list[str], timedelta]:
    """The critical route's connections and its repeat interval (alerting.yaml)."""
    from promptops.alerts.config import load_alerting_config

    try:
        config = load_alerting_config()
        route = config.route_for(RUN_FAILED_LABELS)[1]
        return list(route.connections), config.repeat_interval_for(route)
    except Exception as exc:  # a broken alerting.yaml must not silence the failure alert
        log.warning("alerting config unreadable (%s); failure alert goes to %s",
                    type(exc).__name__, ", ".join(FALLBACK_CONNECTIONS))
        return FALLBACK_CONNECTIONS, FALLBACK_REPEAT


def known_secrets() -> set[str]:
    """The secrets promptops holds: the platform and judge keys and the Slack webhooks,
    wherever they are configured, so that no error text carries one anywhere."""
    from promptops.airflow_adapters.connections import connection_password
    from promptops.alerts.slack import secret_parts
    from promptops.metrics.judge import JudgeConfig
    from promptops.settings import get_settings

    conn_ids = {get_settings().platform_conn_id, JudgeConfig().conn_id,
                *FALLBACK_CONNECTIONS, *alert_route()}
    secrets = {os.environ.get("PROMPT_API_KEY") or ""}
    for conn_id in conn_ids:
        password = connection_password(conn_id)
        if password:
            secrets |= secret_parts(password) if "://" in password else {password}
    return {s for s in secrets if len(s) >= 4}  # blanking tiny strings would garble text
