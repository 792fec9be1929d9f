"""The ``@dag`` arguments every promptops DAG shares.

A DAG file passes ``**dag_defaults(...)`` with its own retry timing and task timeout; the
owner, the retry policy and the failure callbacks come from here, so a new DAG cannot forget
them. Cheap to import (Airflow and :mod:`promptops.errors` only), like the DAG files.
"""

from __future__ import annotations

from typing import Any

import pendulum

from promptops.airflow_adapters.failure_notifier import (
    PERMANENT_ERRORS_FAIL,
    RunFailureNotifier,
    record_task_failure,
)

#: Before any promptops data exists; runs are never caught up (backfills are explicit).
START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def dag_defaults(**task_defaults: Any) -> dict[str, Any]:
    """``start_date``, ``catchup``, the run's failure callback and ``default_args``, with
    ``task_defaults`` (``retries``, ``retry_delay``, ``execution_timeout``...) merged in."""
    return {
        "start_date": START_DATE,
        "catchup": False,
        # One Slack message per failed run, naming the failed tasks and their causes.
        "on_failure_callback": RunFailureNotifier(),
        "default_args": {
            "owner": "promptops",
            # Errors a retry cannot fix (wrong key, no permission) fail at once; every task
            # failure keeps its cause for that message.
            "retry_policy": PERMANENT_ERRORS_FAIL,
            "on_failure_callback": record_task_failure,
            "retry_exponential_backoff": 2.0,
            **task_defaults,
        },
    }
