"""Fixtures: a real Slack-compatible sink (HTTP, in a thread) and the Slack connections."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from promptops.simulator.slack_sink import SlackSinkServer
from tests.helpers.alerts import SECRET_PATH, slack_connection


@pytest.fixture()
def sink(sink_server: SlackSinkServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The sink's base URL, empty, with no faults; ``slack_alerts`` points at it and
    ``slack_alerts_critical`` does not exist."""
    requests.delete(sink_server.url + "/messages", timeout=5)
    requests.delete(sink_server.url + "/_faults", timeout=5)
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", slack_connection(sink_server.url + SECRET_PATH))
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS_CRITICAL", raising=False)
    yield sink_server.url
    requests.delete(sink_server.url + "/_faults", timeout=5)


@pytest.fixture()
def lake(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'lake'}"
