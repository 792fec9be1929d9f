"""Metrics out: each evaluation's key metrics pushed to a Prometheus Pushgateway.

A batch job cannot be scraped, so it pushes (Prometheus' documented path for batch jobs):
after the hourly metrics, the run's hour goes to ``PROMPTOPS_PUSHGATEWAY_URL`` with
``prometheus_client.push_to_gateway``, grouped by ``job="promptops"``, ``dag`` and
``scope``, so each push replaces the previous one of its DAG and scope. Off unless the URL
is set; a failed push warns and never fails the run.

Names follow Prometheus' conventions: ``promptops_`` prefix, base units in the name
(seconds, USD, ratio), gauges of the evaluated hour (``promptops_hour_*``), labels
``dimension`` and ``slice`` only, with the metric table's own bounded cardinality (its top
users; call ids never). Latency quantiles share one name with a ``quantile`` label.
``promptops_hour_start_timestamp_seconds`` says which hour the values are of.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from promptops.contracts import metric_table as mt

if TYPE_CHECKING:
    import pyarrow as pa
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

JOB = "promptops"
#: The metric table's dimensions pushed by default (``user`` is left out: a label per user
#: is the cardinality Prometheus warns against, even cut to the top users).
DEFAULT_DIMENSIONS = (mt.OVERALL, "model", "provider", "app", "team", "region", "template")
#: metric table name -> (Prometheus name, help, factor to the base unit, extra labels).
PUSHED: dict[str, tuple[str, str, float, dict[str, str]]] = {
    mt.COST_USD: ("promptops_hour_cost_usd", "Priced cost of the hour's calls (USD).", 1.0,
                  {}),
    mt.TOTAL_TOKENS: ("promptops_hour_tokens", "Prompt plus completion tokens of the hour.",
                      1.0, {}),
    mt.REQUESTS: ("promptops_hour_requests", "Calls in the hour.", 1.0, {}),
    mt.SUCCESS_RATE: ("promptops_hour_success_ratio", "Share of the hour's calls that "
                      "succeeded.", 1.0, {}),
    "latency_p50_ms": ("promptops_hour_latency_seconds", "Latency quantile of the hour's "
                       "calls.", 1e-3, {"quantile": "0.5"}),
    mt.LATENCY_P95_MS: ("promptops_hour_latency_seconds", "", 1e-3, {"quantile": "0.95"}),
    "latency_p99_ms": ("promptops_hour_latency_seconds", "", 1e-3, {"quantile": "0.99"}),
    mt.INTENT_ACCURACY: ("promptops_hour_intent_accuracy_ratio", "Share of labelled calls "
                         "whose predicted intent was right.", 1.0, {}),
    mt.RELEVANCE_MEAN: ("promptops_hour_relevance_score", "Mean answer relevance (1-5) of "
                        "the scored calls.", 1.0, {}),
}


def hour_registry(table: pa.Table, hour: datetime,
                  dimensions: Sequence[str] = DEFAULT_DIMENSIONS,
                  bands: pa.Table | None = None) -> CollectorRegistry:
    """A registry holding the hour's pushed metrics (rows with a value, in ``dimensions``)
    and, with the daily run's ``bands`` of that hour, each pushed metric's baseline:
    ``promptops_baseline_expected`` / ``_lower`` / ``_upper`` (label ``metric``, in the
    metric's base unit)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    for name, help_, _, extra in PUSHED.values():
        if name not in gauges:
            gauges[name] = Gauge(name, help_ or name, ["dimension", "slice", *extra],
                                 registry=registry)
    rows = table.select(["metric", "dimension", "slice", "value"]).to_pylist()
    for row in _wanted(rows, set(dimensions)):
        name, _, factor, extra = PUSHED[row["metric"]]
        gauges[name].labels(dimension=row["dimension"], slice=row["slice"],
                            **extra).set(row["value"] * factor)
    Gauge("promptops_hour_start_timestamp_seconds", "Start of the hour the values are of.",
          registry=registry).set(hour.timestamp())
    if bands is not None and bands.num_rows:
        _baseline_gauges(registry, bands, set(dimensions))
    return registry


#: The 5-minute health sensor's rows (metric table name -> Prometheus name, help, factor,
#: extra labels), of the dimensions in :data:`HEALTH_DIMENSIONS` (never per user).
HEALTH_PUSHED: dict[str, tuple[str, str, float, dict[str, str]]] = {
    "api_up": ("promptops_api_up", "1 when the platform's /health said ok at the last "
               "5-minute check, else 0.", 1.0, {}),
    "api_health_latency_ms": ("promptops_api_health_latency_seconds", "Latency of the last "
                              "/health answer.", 1e-3, {}),
    mt.REQUESTS: ("promptops_5m_requests", "Calls in the last 5 minutes.", 1.0, {}),
    mt.SUCCESS_RATE: ("promptops_5m_success_ratio", "Share of the last 5 minutes' calls that "
                      "succeeded.", 1.0, {}),
    mt.LATENCY_P95_MS: ("promptops_5m_latency_seconds", "Latency quantile of the last 5 "
                        "minutes' calls.", 1e-3, {"quantile": "0.95"}),
    "gpu_utilization_pct": ("promptops_gpu_utilization_ratio", "GPU utilisation at the last "
                            "check.", 1e-2, {}),
    "gpu_memory_used_pct": ("promptops_gpu_memory_used_ratio", "Share of GPU memory in use at "
                            "the last check.", 1e-2, {}),
    "gpu_temperature_c": ("promptops_gpu_temperature_celsius", "GPU temperature at the last "
                          "check.", 1.0, {}),
}
HEALTH_DIMENSIONS = (mt.OVERALL, "gpu", "gpu_node")


def health_registry(table: pa.Table, at: datetime) -> CollectorRegistry:
    """The 5-minute evaluation's rows: API up and latency, the last 5 minutes' calls,
    success and p95, and each GPU's utilisation, memory and temperature."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    rows = table.select(["metric", "dimension", "slice", "value"]).to_pylist()
    for row in rows:
        spec = HEALTH_PUSHED.get(row["metric"])
        if spec is None or row["dimension"] not in HEALTH_DIMENSIONS or row["value"] is None:
            continue
        name, help_, factor, extra = spec
        if name not in gauges:
            gauges[name] = Gauge(name, help_, ["dimension", "slice", *extra],
                                 registry=registry)
        gauges[name].labels(dimension=row["dimension"], slice=row["slice"],
                            **extra).set(row["value"] * factor)
    Gauge("promptops_health_evaluated_timestamp_seconds", "When the 5-minute sensor's values "
          "were taken.", registry=registry).set(at.timestamp())
    return registry


def ingest_registry(summary: dict, finished_at: datetime) -> CollectorRegistry:
    """An ingest run's counts (``IngestSummary.as_dict()``): records received, written,
    duplicate and rejected (by reason, the quarantine's), and its lag: how long after its
    window's end the window was in the lake."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    for key, name, help_ in (
            ("received", "received", "Records the last ingest run received."),
            ("written", "written", "Records the last ingest run wrote to the lake."),
            ("duplicates", "duplicate", "Records the last ingest run dropped as duplicates.")):
        Gauge(f"promptops_ingest_{name}_records", help_, registry=registry).set(
            float(summary.get(key) or 0))
    rejected = Gauge("promptops_ingest_rejected_records", "Records the last ingest run kept "
                     "aside in the quarantine, by reason.", ["reason"], registry=registry)
    for reason, n in sorted((summary.get("rejected") or {}).items()):
        rejected.labels(reason=reason).set(float(n))
    end = summary.get("window_end")
    if end:
        end_ts = datetime.fromisoformat(end).timestamp()
        Gauge("promptops_ingest_window_end_timestamp_seconds", "End of the window the last "
              "ingest run covered.", registry=registry).set(end_ts)
        Gauge("promptops_ingest_lag_seconds", "How long after its window's end the last "
              "ingest run finished.", registry=registry).set(
                  max(0.0, finished_at.timestamp() - end_ts))
    Gauge("promptops_ingest_last_success_timestamp_seconds", "When the last ingest run "
          "finished.", registry=registry).set(finished_at.timestamp())
    return registry


def budgets_registry(outcome: dict) -> CollectorRegistry:
    """The budgets as judged by an hourly run (``BudgetOutcome.as_dict()``): per budget
    and kept scope (at most 20 per budget, the nearest their amount: bounded), the amount,
    what is spent and the end-of-period projection with its interval, in the budget's
    unit (USD or tokens)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    names = ["budget", "dimension", "slice", "metric", "period"]
    amount = Gauge("promptops_budget_amount", "The budget's amount for the scope (USD or "
                   "tokens, per metric).", names, registry=registry)
    spent = Gauge("promptops_budget_spent", "Spent this period so far.", names,
                  registry=registry)
    projected = Gauge("promptops_budget_projected", "End-of-period projection: expected, "
                      "lower and upper end of its interval.", [*names, "bound"],
                      registry=registry)
    for row in outcome.get("rows", []):
        labels = {"budget": row["budget"], "dimension": row["dimension"],
                  "slice": row["value"], "metric": row["metric"], "period": row["period"]}
        amount.labels(**labels).set(row["amount"])
        spent.labels(**labels).set(row["spent"])
        for bound, key in (("expected", "projected"), ("lower", "lower"), ("upper", "upper")):
            projected.labels(**labels, bound=bound).set(row[key])
    return registry


def _baseline_gauges(registry: CollectorRegistry, bands: pa.Table,
                     dimensions: set[str]) -> None:
    from prometheus_client import Gauge

    names = ("expected", "lower", "upper")
    gauges = {n: Gauge(f"promptops_baseline_{n}", f"The Holt-Winters baseline's {n} value "
                       f"of the hour (the metric's base unit).",
                       ["metric", "dimension", "slice"], registry=registry) for n in names}
    for row in bands.select(["metric", "dimension", "slice", *names]).to_pylist():
        if row["metric"] not in PUSHED or row["dimension"] not in dimensions:
            continue
        factor = PUSHED[row["metric"]][2]
        for n in names:
            if row[n] is not None:
                gauges[n].labels(metric=row["metric"], dimension=row["dimension"],
                                 slice=row["slice"]).set(row[n] * factor)


def alerts_registry(outcome: dict) -> CollectorRegistry:
    """Open incidents and firing alerts by severity, from an alert engine outcome
    (``EvaluationOutcome.as_dict()``): an incident counts at its worst member's severity."""
    from prometheus_client import CollectorRegistry, Gauge

    from promptops.contracts.findings import SEVERITY_ORDER

    registry = CollectorRegistry()
    incidents = Gauge("promptops_open_incidents", "Incidents with a firing member, by their "
                      "worst severity.", ["severity"], registry=registry)
    alerts = Gauge("promptops_firing_alerts", "Firing alerts, by severity.", ["severity"],
                   registry=registry)
    worst: dict[str, str] = {}
    counts: dict[str, int] = {}
    for view in outcome.get("firing", []):
        severity = str(view.get("severity", "info"))
        counts[severity] = counts.get(severity, 0) + 1
        iid = view.get("incident_id") or view.get("fingerprint")
        if iid is not None and SEVERITY_ORDER.get(severity, -1) >= \
                SEVERITY_ORDER.get(worst.get(iid, ""), -1):
            worst[iid] = severity
    for severity in SEVERITY_ORDER:  # every severity present, 0 when none
        alerts.labels(severity=severity).set(counts.get(severity, 0))
        incidents.labels(severity=severity).set(sum(1 for v in worst.values()
                                                    if v == severity))
    return registry


def _wanted(rows: Iterable[dict], dimensions: set[str]) -> Iterable[dict]:
    for row in rows:
        if row["metric"] in PUSHED and row["dimension"] in dimensions \
                and row["value"] is not None:
            yield row


def push(registry: CollectorRegistry, url: str, *, grouping_key: dict[str, str],
         timeout_s: float = 5.0) -> bool:
    """Push ``registry`` to the gateway at ``url`` (replacing its group); False and a
    warning, naming the gateway without any credentials in its URL, when it fails."""
    from prometheus_client import push_to_gateway

    try:
        push_to_gateway(url, job=JOB, registry=registry, grouping_key=grouping_key,
                        timeout=timeout_s)
    except Exception as exc:  # a monitoring side channel must never fail the run
        log.warning("metrics not pushed to the Pushgateway at %s (%s: %s); the run goes on",
                    shown_url(url), type(exc).__name__, str(exc).replace(url, shown_url(url)))
        return False
    return True


def push_hour(table: pa.Table, hour: datetime, url: str | None, *, dag: str,
              scope: str = "hourly", timeout_s: float = 5.0,
              bands: pa.Table | None = None) -> bool | None:
    """Push the hour's metrics (and baselines) to ``url`` grouped by DAG and scope; None when
    no URL is set (pushing is off), else whether it went through."""
    if not url:
        return None
    return push(hour_registry(table, hour, bands=bands), url,
                grouping_key={"dag": dag, "scope": scope}, timeout_s=timeout_s)


def push_alerts(outcome: dict, url: str | None, *, dag: str, scope: str,
                timeout_s: float = 5.0) -> bool | None:
    """Push the evaluation's open incidents and firing alerts (their own group, ``part``
    ``alerts``, so the hour's metrics stay); None when no URL is set."""
    if not url:
        return None
    return push(alerts_registry(outcome), url,
                grouping_key={"dag": dag, "scope": scope, "part": "alerts"},
                timeout_s=timeout_s)


def push_health(table: pa.Table, at: datetime, url: str | None, *, dag: str,
                scope: str = "health", timeout_s: float = 5.0) -> bool | None:
    """Push the 5-minute sensor's values, grouped by DAG and scope; None when no URL is set."""
    if not url:
        return None
    return push(health_registry(table, at), url, grouping_key={"dag": dag, "scope": scope},
                timeout_s=timeout_s)


def push_ingest(summary: dict, finished_at: datetime, url: str | None, *, dag: str,
                scope: str = "hourly", timeout_s: float = 5.0) -> bool | None:
    """Push an ingest run's counts and lag (group ``part="ingest"``); None when no URL."""
    if not url:
        return None
    return push(ingest_registry(summary, finished_at), url,
                grouping_key={"dag": dag, "scope": scope, "part": "ingest"},
                timeout_s=timeout_s)


def push_budgets(outcome: dict, url: str | None, *, dag: str = "promptops_hourly",
                 scope: str = "hourly", timeout_s: float = 5.0) -> bool | None:
    """Push the hour's budgets (group ``part="budgets"``); None when no URL is set."""
    if not url:
        return None
    return push(budgets_registry(outcome), url,
                grouping_key={"dag": dag, "scope": scope, "part": "budgets"},
                timeout_s=timeout_s)


def shown_url(url: str) -> str:
    """The URL without user and password (for messages)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
