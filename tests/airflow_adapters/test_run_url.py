"""One way to link a task's DAG run: promptops.airflow_adapters.context.run_url."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.helpers import ROOT


def test_run_url_is_the_task_log_url_up_to_its_task():
    from promptops.airflow_adapters.context import run_url

    ti = SimpleNamespace(log_url="http://airflow.example/dags/d/runs/r%2B1/tasks/t?try=2")
    assert run_url({"ti": ti}) == "http://airflow.example/dags/d/runs/r%2B1"


def test_run_url_without_a_task_comes_from_the_api_base_url(monkeypatch):
    """A DAG's failure callback has no task instance: the run's page under [api] base_url."""
    from promptops.airflow_adapters.context import run_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080/")
    context = {"dag": SimpleNamespace(dag_id="promptops_hourly"),
               "run_id": "scheduled__2026-11-20T10:00:00+00:00"}
    assert run_url(context) == ("http://airflow.example:8080/dags/promptops_hourly/runs/"
                                "scheduled__2026-11-20T10%3A00%3A00%2B00%3A00")


def test_only_the_adapter_reads_log_urls():
    """Static: the link is cut from ``log_url`` in one place."""
    readers = [p.relative_to(ROOT) for folder in ("dags", "include", "plugins")
               for p in (ROOT / folder).rglob("*.py") if "log_url" in p.read_text()]
    assert readers == [Path("include/promptops/airflow_adapters/context.py")]
