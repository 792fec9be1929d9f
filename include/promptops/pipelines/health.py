"""One 5-minute health evaluation, as library calls the health DAG's tasks stay thin around.

Tasks hand each other small lists of metric rows (a few hundred at most), never tables;
:func:`evaluate_health` writes them to ``health_metrics`` in one step, judges them with the
``source: health`` rules of ``thresholds.yaml`` and runs the alert engine (scope
``health``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from promptops.contracts.metric_table import METRICS_SCHEMA
from promptops.lake.store import Lake
from promptops.timeutil import as_utc


@dataclass(frozen=True)
class PlatformLook:
    """One look at ``/health`` for the hourly DAG's sensor."""

    ready: bool
    status: str
    #: What was seen, as the task log says it; the cause when not ready.
    said: str


def look_at_platform(client_factory: Any = None) -> PlatformLook:
    """``/health`` once. A platform that does not answer (yet) is a look that says why,
    not an error: the sensor waits for it."""
    from promptops.errors import PlatformUnreachable, UpstreamTimeout
    from promptops.platform.client import PlatformClient

    try:
        with (client_factory or PlatformClient.from_airflow)() as client:
            health = client.health()
    except (PlatformUnreachable, UpstreamTimeout) as exc:
        return PlatformLook(False, "no_answer", f"platform not answering: {exc}")
    said = (f"platform health: {health.status} ({health.latency_ms:.0f} ms)"
            + (f", reason: {health.reason}" if health.reason else ""))
    return PlatformLook(health.ok, health.status, said)


def poke_platform(context: Any) -> Any:
    """The hourly DAG's *Wait for platform health* sensor: done when ``/health`` says ok.

    When the sensor's time is up after a look that was not ok, it fails naming what that
    look saw (Airflow's own timeout says only "Sensor has timed out"); a timed-out sensor is
    not retried.
    """
    from airflow.sdk import PokeReturnValue
    from airflow.sdk.exceptions import AirflowSensorTimeout

    look = look_at_platform()
    print(look.said)
    if not look.ready and _sensor_time_is_up(context):
        timeout = context["task"].timeout
        raise AirflowSensorTimeout(f"the platform was not ready within the sensor's timeout "
                                   f"of {timeout:g} s; the last look said: {look.said}")
    return PokeReturnValue(is_done=look.ready, xcom_value=look.status)


#: Airflow checks the sensor's timeout right after the poke returns: a moment later.
_TIMEOUT_MARGIN = timedelta(seconds=1)


def _sensor_time_is_up(context: Any) -> bool:
    """Whether Airflow would time the sensor out after this poke: its timeout counts from
    the first poke (reschedule mode) or from the start of the try (poke mode)."""
    task, ti = context["task"], context["ti"]
    now = datetime.now(UTC)
    started = (ti.get_first_reschedule_date(context) if task.reschedule else None) \
        or ti.start_date or now
    return now + _TIMEOUT_MARGIN - started >= timedelta(seconds=task.timeout)


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


def gpu_rows_at(at: datetime, client=None) -> dict:
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


def api_rows_at(at: datetime, client, minutes: int = 5) -> dict:
    """/health plus success, latency and abuse over the last ``minutes`` of call records."""
    from promptops.errors import PERMANENT_ERRORS
    from promptops.metrics.health import api_health_rows, fetch_recent_calls, recent_call_rows

    tables = [api_health_rows(client, at)]
    notes = []
    try:
        calls = fetch_recent_calls(client, at, minutes=minutes)
        tables.append(recent_call_rows(calls, at, minutes=minutes))
    except PERMANENT_ERRORS:
        raise  # a key the platform refuses is promptops' own failure: fail the run, alert
    except Exception as exc:  # API down: api_up=0 already says it
        notes.append(f"no call records for the last {minutes} minutes: {exc}")
    return {"rows": rows_of(pa.concat_tables([t.cast(METRICS_SCHEMA) for t in tables])),
            "notes": notes}


def evaluate_health(lake: Lake, at: datetime, rows: list[dict], *, run_id: str,
                    run_url: str | None = None) -> dict:
    """Store the evaluation's rows, judge them, alert; returns the engine's outcome."""
    from promptops.detection.rules import MetricHistory, evaluate
    from promptops.detection.thresholds import load_thresholds
    from promptops.metrics.health import write_health_metrics
    from promptops.pipelines.hourly import alert_on_findings

    at = as_utc(at)
    table = table_of(rows)
    write_health_metrics(lake, at, table)
    findings = evaluate(load_thresholds(), table, MetricHistory.from_tables({}), at,
                        source="health")
    outcome = alert_on_findings(lake, findings, at, run_id=run_id, run_url=run_url,
                                scope="health")
    outcome["findings"] = len(findings)
    return outcome
