"""Fixtures: the fixture lake with its report built once, and a real Slack-compatible sink."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests

from promptops.lake.store import Lake
from promptops.reports.cost_report import ReportResult, build_report
from promptops.simulator.slack_sink import SlackSinkServer
from tests.helpers.reports import DAY, NOW, build_fixture_lake


@pytest.fixture(scope="session")
def report_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    return build_fixture_lake(f"file://{tmp_path_factory.mktemp('report-lake')}")


@pytest.fixture(scope="session")
def report(report_lake: Lake) -> ReportResult:
    """The report of the fixture day (and, for the list view, of the day before)."""
    build_report(report_lake, DAY - timedelta(days=1), budget_tokens=100_000,
                 budget_cost_usd=1000, now=NOW)
    return build_report(report_lake, DAY, budget_tokens=100_000, budget_cost_usd=1000,
                        now=NOW, run_url="http://airflow.example/dags/promptops_daily/runs/r1")


@pytest.fixture()
def sink(sink_server: SlackSinkServer) -> Iterator[str]:
    requests.delete(sink_server.url + "/messages", timeout=5)
    requests.delete(sink_server.url + "/_faults", timeout=5)
    yield sink_server.url
    requests.delete(sink_server.url + "/_faults", timeout=5)
