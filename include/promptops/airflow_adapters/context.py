"""What promptops reads from an Airflow task's context, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def run_url(context: Mapping[str, Any]) -> str:
    """The UI page of the context's DAG run, for links in Slack messages and reports.

    A task's log URL is that page plus ``/tasks/...``. A DAG's failure callback has no task
    instance: the page is then built from ``[api] base_url``."""
    ti = context.get("ti")
    if ti is not None:
        return ti.log_url.split("/tasks/")[0]
    from urllib.parse import quote

    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")
    return f"{base}/dags/{context['dag'].dag_id}/runs/{quote(context['run_id'])}"
