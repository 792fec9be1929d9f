"""Shared helpers for the alert tests: findings, a fake clock, engines built from a lake."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from promptops.airflow_adapters.resources import slack_webhooks
from promptops.alerts.config import AlertingConfig, parse_alerting_config
from promptops.alerts.engine import AlertEngine
from promptops.alerts.silences import Silence
from promptops.alerts.slack import SlackNotifier
from promptops.alerts.store import AlertStore
from promptops.contracts.findings import Finding
from promptops.lake.store import Lake

T0 = datetime(2026, 11, 20, 13, tzinfo=UTC)
SECRET_PATH = "/services/T0SECRET/B0SECRET/canaryWebhookToken42"

#: The shipped config minus silences (tests pass their own) and with a short claim lease.
BASE_CONFIG: dict[str, Any] = {
    "grouping": "labels",
    "group_by": ["rule"],
    "repeat_interval": "4h",
    "send_resolved": True,
    "routes": [
        {"matchers": ['severity="critical"'],
         "connections": ["slack_alerts_critical", "slack_alerts"]},
        {"matchers": ['severity="warning"'], "connections": ["slack_alerts"]},
    ],
    "default_connections": ["slack_alerts"],
    "inhibit_rules": [
        {"name": "api-down-mutes-latency",
         "source_matchers": ['rule=~"api_down|api_unavailable"'],
         "target_matchers": ['metric=~"latency.*"'], "equal": ["service"]},
        {"name": "critical-mutes-warning", "source_matchers": ['severity="critical"'],
         "target_matchers": ['severity="warning"'],
         "equal": ["rule", "metric", "dimension", "slice"]},
    ],
    "silences_variable": "",
    "claim_timeout": "10m",
}


class Clock:
    """The fake clock: evaluation times one step apart (the hourly DAG's data intervals)."""

    def __init__(self, start: datetime = T0, step: timedelta = timedelta(hours=1)) -> None:
        self.now = start
        self.step = step

    def tick(self, n: int = 1) -> datetime:
        self.now += self.step * n
        return self.now


def config(**overrides: Any) -> AlertingConfig:
    return parse_alerting_config({**BASE_CONFIG, **overrides}, "<test config>")


def finding(rule: str = "success_rate", severity: str = "critical", *, slice_: str = "gpt-4o",
            dimension: str = "model", metric: str | None = None, value: float = 0.8,
            threshold: float = 0.95, pending_for: int = 1, keep_firing_for: int = 0,
            annotations: dict[str, str] | None = None, **labels: str) -> Finding:
    return Finding(
        rule=rule, severity=severity, kind="threshold",  # type: ignore[arg-type]
        labels={"metric": metric or rule, "dimension": dimension, "slice": slice_, **labels},
        summary=f"{rule} on {dimension}={slice_} is {value} (threshold {threshold})",
        value=value, threshold=threshold, pending_for=pending_for,
        keep_firing_for=keep_firing_for, annotations={"comparison": "<", **(annotations or {})})


def engine(lake_uri: str, cfg: AlertingConfig | None = None, *, scope: str = "hourly",
           silences: list[Silence] | None = None, store: AlertStore | None = None,
           **notifier_kwargs: Any) -> AlertEngine:
    """A fresh engine (as a new Airflow task process would build it) on the given lake."""
    cfg = cfg or config()
    notifier_kwargs.setdefault("backoff_s", 0.01)
    notifier_kwargs.setdefault("timeout_s", 5)
    return AlertEngine(cfg, store or AlertStore(Lake(lake_uri), scope),
                       SlackNotifier.from_config(cfg, webhooks=slack_webhooks(),
                                                 **notifier_kwargs),
                       silences=silences if silences is not None else [])


def slack_connection(url: str) -> str:
    return json.dumps({"conn_type": "slackwebhook", "password": url})


def route_to_sink(monkeypatch: Any, sink_url: str) -> None:
    """The two Slack connections as the DAGs read them (env), on the local sink: critical
    alerts page on their own channel, warnings go to the team's."""
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS_CRITICAL", json.dumps(
        {"conn_type": "slackwebhook", "password": sink_url + "/services/PAGE/critical"}))
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": sink_url + "/services/TEAM/warning"}))


def set_faults(sink_url: str, *faults: dict[str, Any]) -> None:
    requests.post(sink_url + "/_faults", json=list(faults), timeout=5).raise_for_status()


def sink_messages(sink_url: str) -> list[dict[str, Any]]:
    return requests.get(sink_url + "/messages", timeout=5).json()["messages"]


def header(message: dict[str, Any]) -> str:
    return message["body"]["blocks"][0]["text"]["text"]


def evaluate_in_subprocess(lake_uri: str, sink_url: str, nows: list[str], run_id: str,
                           barrier: Any, results: Any) -> None:
    """Target of the concurrency test: a separate process evaluating the same findings at
    the same times as its twin, each evaluation started together through ``barrier``."""
    os.environ["AIRFLOW_CONN_SLACK_ALERTS"] = slack_connection(sink_url + SECRET_PATH)
    eng = engine(lake_uri)
    findings = [finding(slice_=m) for m in ("gpt-4o", "claude-3-5-sonnet", "llama-3-70b")]
    for now in nows:
        barrier.wait(timeout=60)
        outcome = eng.evaluate(findings, datetime.fromisoformat(now), run_id=run_id)
        results.put(outcome.as_dict())
