"""One 5-minute health evaluation, as library calls the health DAG's tasks stay thin around.

Tasks hand each other small lists of metric rows (a few hundred at most), never tables;
:func:`evaluate_health` writes them to ``health_metrics`` in one step, judges them with the
``source: health`` rules of ``thresholds.yaml`` (:func:`judge_health`: per-caller rules
against the caller's own history too) and runs the alert engine (scope ``health``).
:func:`health_findings` is the judging alone, for callers without Slack (the quality bench).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from promptops.contracts.metric_table import METRICS_SCHEMA
from promptops.lake.store import Lake
from promptops.timeutil import as_utc

if TYPE_CHECKING:
    from promptops.alerts.slack import SlackWebhooks
    from promptops.alerts.targets import TargetConnections
    from promptops.contracts.findings import Finding
    from promptops.detection.caller_history import CallerHistoryConfig
    from promptops.detection.thresholds import ThresholdsConfig
    from promptops.platform.client import PlatformClient


@dataclass(frozen=True)
class PlatformLook:
    """One look at ``/health`` for the hourly DAG's sensor
    (``airflow_adapters.platform_sensor.poke_platform``)."""

    ready: bool
    status: str
    #: What was seen, as the task log says it; the cause when not ready.
    said: str


def look_at_platform(client_factory: Callable[[], PlatformClient]) -> PlatformLook:
    """``/health`` once, through a client from ``client_factory``. A platform that does not
    answer (yet) is a look that says why, not an error: the sensor waits for it."""
    from promptops.errors import PlatformUnreachable, UpstreamTimeout

    try:
        with client_factory() as client:
            health = client.health()
    except (PlatformUnreachable, UpstreamTimeout) as exc:
        return PlatformLook(False, "no_answer", f"platform not answering: {exc}")
    said = (f"platform health: {health.status} ({health.latency_ms:.0f} ms)"
            + (f", reason: {health.reason}" if health.reason else ""))
    return PlatformLook(health.ok, health.status, said)


def rows_of(table: pa.Table) -> list[dict]:
    """A metric table as JSON-safe rows for XCom (times as ISO strings)."""
    out = []
    for row in table.to_pylist():
        row["hour"] = as_utc(row["hour"]).isoformat()
        out.append(row)
    return out


def table_of(rows: list[dict]) -> pa.Table:
    fixed = [{**r, "hour": datetime.fromisoformat(r["hour"])} for r in rows]
    return pa.Table.from_pylist(fixed, schema=METRICS_SCHEMA)


def gpu_rows_at(at: datetime, client: PlatformClient | None = None) -> dict:
    """GPU rows from NVML, or from the platform when NVML is missing; never raises for a
    missing GPU or an unanswering platform (the health run must not fail on it)."""
    from promptops.metrics.gpu import NvmlUnavailable, collect_gpu_metrics

    try:
        summary = collect_gpu_metrics(at, client=client)
    except NvmlUnavailable as exc:
        return {"source": None, "rows": [], "notes": [str(exc)]}
    except Exception as exc:  # the platform's /v1/gpu_metrics failed: report, do not fail
        return {"source": None, "rows": [], "notes": [f"no GPU readings: {exc}"]}
    return {"source": summary.source, "rows": rows_of(summary.table), "notes": summary.notes}


def api_rows_at(at: datetime, client: PlatformClient | Any, minutes: int = 5, *,
                platform: bool = True) -> dict:
    """/health plus success, latency and abuse over the last ``minutes`` of call records.
    ``platform`` False: ``client`` is another record source (spans, spend logs), which has
    no /health to ask; the calls' own rows remain."""
    from promptops.errors import PERMANENT_ERRORS
    from promptops.metrics.health import api_health_rows, fetch_recent_calls, recent_call_rows

    tables = [api_health_rows(client, at)] if platform else []
    notes = []
    try:
        calls = fetch_recent_calls(client, at, minutes=minutes)
        tables.append(recent_call_rows(calls, at, minutes=minutes))
    except PERMANENT_ERRORS:
        raise  # a key the platform refuses is promptops' own failure: fail the run, alert
    except Exception as exc:  # API down: api_up=0 already says it
        notes.append(f"no call records for the last {minutes} minutes: {exc}")
    if not tables:
        return {"rows": [], "notes": notes}
    return {"rows": rows_of(pa.concat_tables([t.cast(METRICS_SCHEMA) for t in tables])),
            "notes": notes}


@dataclass(frozen=True)
class HealthJudgement:
    """What one health evaluation's rows amount to, before any alerting."""

    findings: list[Finding]
    #: Per-caller findings dropped as the caller's recurring load (JSON-safe, logged).
    recurring_load_suppressed: list[dict]


def judge_health(lake: Lake, at: datetime, table: pa.Table,
                 config: ThresholdsConfig | None = None, *,
                 caller_history: CallerHistoryConfig | None = None) -> HealthJudgement:
    """The ``source: health`` rules on one evaluation's rows, with the per-caller rules
    judged against the caller's own history (:mod:`promptops.detection.caller_history`).
    Reads the caller profile only; writes nothing."""
    from promptops.detection.caller_history import apply_own_history
    from promptops.detection.rules import MetricHistory, evaluate
    from promptops.detection.thresholds import load_thresholds

    at = as_utc(at)
    config = config if config is not None else load_thresholds()
    findings = evaluate(config, table, MetricHistory.from_tables({}), at, source="health")
    judged = apply_own_history(lake, findings, at, at, config, caller_history)
    return HealthJudgement(judged.findings, judged.suppressed)


def health_findings(lake: Lake, at: datetime, table: pa.Table,
                    config: ThresholdsConfig | None = None) -> list[Finding]:
    """The findings of one health evaluation (see :func:`judge_health`); no Slack, no
    writes: the quality bench calls it after storing the rows itself."""
    return judge_health(lake, at, table, config).findings


def evaluate_health(lake: Lake, at: datetime, rows: list[dict], *, run_id: str,
                    webhooks: SlackWebhooks,
                    variable_reader: Callable[[str], str | None] | None = None,
                    thresholds_loader: Callable[[], ThresholdsConfig] | None = None,
                    run_url: str | None = None,
                    targets: TargetConnections | None = None) -> dict:
    """Store the evaluation's rows, judge them (:func:`judge_health`), alert; returns the
    engine's outcome plus ``findings`` and ``recurring_load_suppressed`` (counts).
    ``thresholds_loader`` loads the rules once the rows are stored (default: the file's; a
    DAG task's adds the Variable's overrides); ``webhooks`` and ``variable_reader`` go to
    :func:`promptops.pipelines.hourly.alert_on_findings`, as do ``targets``."""
    from promptops.detection.thresholds import load_thresholds
    from promptops.metrics.health import write_health_metrics
    from promptops.pipelines.hourly import alert_on_findings

    at = as_utc(at)
    table = table_of(rows)
    write_health_metrics(lake, at, table)
    from promptops.metrics.prometheus import push_health
    from promptops.settings import get_settings

    settings = get_settings()  # the sensor's values to the Pushgateway, when one is set
    push_health(table, at, settings.pushgateway_url, dag="promptops_health",
                timeout_s=settings.pushgateway_timeout_s)
    judged = judge_health(lake, at, table, (thresholds_loader or load_thresholds)())
    outcome = alert_on_findings(lake, judged.findings, at, run_id=run_id, run_url=run_url,
                                scope="health", webhooks=webhooks,
                                variable_reader=variable_reader, targets=targets)
    outcome["findings"] = len(judged.findings)
    outcome["recurring_load_suppressed"] = len(judged.recurring_load_suppressed)
    return outcome
