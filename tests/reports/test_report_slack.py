"""The daily summary for Slack: Block Kit that Slack accepts, the headline numbers, and a
real delivery to the Slack-compatible sink (webhook URL never in errors)."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
import requests
from slack_sdk.models.blocks import Block

from promptops.airflow_adapters.resources import slack_webhooks
from promptops.contracts import metric_table as mt
from promptops.lake.store import Lake
from promptops.reports.cost_report import (
    ReportError,
    build_report,
    report_url,
    send_slack_summary,
    slack_summary,
)
from tests.helpers.reports import DAY, DAY_START, NOW

SECRET_PATH = "/services/T0REPORT/B0REPORT/reportWebhookToken42"
URL = "http://127.0.0.1:8080/promptops-reports/2026-11-09/"


def _fields(message: dict) -> dict[str, str]:
    out = {}
    for block in message["blocks"]:
        for f in block.get("fields", []):
            title, _, value = f["text"].partition("\n")
            out[title] = value
    return out


def test_summary_validates_and_has_the_headline_numbers(report):
    message = slack_summary(report, URL)
    for raw in message["blocks"]:
        Block.parse(raw).validate_json()  # raises if Slack would refuse it
    fields = _fields(message)
    assert fields["*Cost* (21/24 h)"] == "$63.00"
    assert fields["*Tokens vs budget*"] == "210,000 of 100,000 (210%)"
    assert fields["*Day over day*"] == "+50.0% vs 2026-11-08 (same 21 h)"
    assert fields["*vs 7-day average*"] == "+50.0% (6 complete days)"
    assert fields["*Month to date*"] == "$443.00"
    assert fields["*Projected month end*"] == "$1,511.66"
    assert fields["*Missing hours*"] == "*3*: 03:00, 04:00, 17:00"
    assert fields["*Unpriced models*"] == "llama-selfhosted (105 req)"
    assert fields["*Incidents*"] == "2 (1 critical)"
    body = json.dumps(message)
    for cmd in report.summary["backfill_commands"]:
        assert cmd in body
    button = next(b for b in message["blocks"] if b["type"] == "actions")["elements"][0]
    assert button["url"] == URL
    assert URL in message["text"] and "$63.00" in message["text"]


def test_summary_of_a_complete_day_has_no_backfill(report_lake):
    result = build_report(report_lake, DAY - timedelta(days=1), budget_tokens=100_000,
                          budget_cost_usd=1000, now=NOW)
    message = slack_summary(result, None)
    fields = _fields(message)
    assert fields["*Missing hours*"] == "none"
    assert fields["*Cost* (24/24 h)"] == "$48.00"
    assert "backfill" not in json.dumps(message)
    assert not any(b["type"] == "actions" for b in message["blocks"])  # no link given


def test_summary_without_a_token_budget_says_so(report_lake, tmp_path, monkeypatch):
    """Budgets are off until set: the summary shows the tokens and "no budget set"."""
    for name in [n for n in os.environ if n.startswith("PROMPTOPS_THRESHOLD__")]:
        monkeypatch.delenv(name)
    lake = Lake(f"file://{tmp_path}")
    lake.write_partition(mt.METRICS, DAY_START, report_lake.read_partition(mt.METRICS, DAY_START))
    result = build_report(lake, DAY, now=NOW)
    message = slack_summary(result, None)
    assert _fields(message)["*Tokens vs budget*"].endswith("(no budget set)")
    assert "(no budget set)" in message["text"]


def test_report_url_points_at_the_plugin_route():
    assert report_url("http://127.0.0.1:8080/", DAY) == URL


def test_send_posts_the_summary_to_the_webhook(report, sink, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": sink + SECRET_PATH}))
    message = slack_summary(report, URL)
    send_slack_summary(message, webhooks=slack_webhooks())
    posted = requests.get(sink + "/messages", timeout=5).json()["messages"]
    assert len(posted) == 1
    assert posted[0]["path"] == SECRET_PATH
    assert posted[0]["body"] == message


def test_send_failures_name_the_connection_not_the_url(report, sink, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": sink + SECRET_PATH}))
    requests.post(sink + "/_faults", json=[{"mode": "invalid_webhook", "status": 404}],
                  timeout=5).raise_for_status()
    with pytest.raises(ReportError) as err:
        send_slack_summary(slack_summary(report, URL), webhooks=slack_webhooks())
    assert "HTTP 404" in str(err.value) and "'slack_alerts'" in str(err.value)
    assert "reportWebhookToken42" not in str(err.value) and sink not in str(err.value)

    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS")
    with pytest.raises(ReportError, match="'slack_alerts' does not exist"):
        send_slack_summary(slack_summary(report, URL), webhooks=slack_webhooks())
