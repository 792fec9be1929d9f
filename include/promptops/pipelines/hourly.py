"""The analysis half of the hourly run, as library calls the DAG tasks stay thin around.

- :func:`analyse_hour`: the hour's calls partition -> tidy metrics (plus, when enabled, the
  relevance judge's rows) -> the hour's ``metrics`` partition (replaced, so reruns never
  duplicate), and the hour's exact spend per user, team, app and key (``spend``).
- :func:`check_budgets`: the budgets of ``budgets.yaml`` judged at the hour's end.
- :func:`findings_for_hour`: the hour's metrics and the history the rules need -> findings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from promptops.contracts.datasets import CALLS, HEAL_REQUESTS, METRICS
from promptops.contracts.findings import Finding
from promptops.detection.rules import MetricHistory, evaluate
from promptops.detection.thresholds import ThresholdsConfig, load_thresholds
from promptops.errors import InvalidInput, MissingData
from promptops.lake.store import Lake
from promptops.metrics.hourly import (
    INPUT_COLUMNS,
    MissingCallsPartition,
    compute_hourly_metrics,
    metrics_summary,
    write_hourly_metrics,
)
from promptops.metrics.judge import JudgeConfig, JudgeFactory, judge_hour
from promptops.metrics.pricing import PriceTable, load_price_table
from promptops.timeutil import as_utc, hour_floor

if TYPE_CHECKING:
    from promptops.alerts.slack import SlackWebhooks
    from promptops.alerts.targets import TargetConnections

log = logging.getLogger(__name__)

_JUDGE_COLUMNS = ("call_id", "status", "relevance_score", "prompt_text", "response_text")


def judge_price_lookup(prices: PriceTable) -> Callable[[str], tuple[float, float] | None]:
    """The judge's (input, output) USD per token from the project's price table."""
    def lookup(model: str) -> tuple[float, float] | None:
        price = prices.get(model)
        if price is None:
            return None
        return price.input_cost_per_token, price.output_cost_per_token
    return lookup


def analyse_hour(lake: Lake, hour: datetime, *, prices: PriceTable | None = None,
                 top_n_users: int = 20, judge: JudgeConfig | None = None,
                 judge_factory: JudgeFactory | None = None) -> dict:
    """Compute and write the hour's metrics partition; return a small summary for XCom.
    ``judge_factory`` builds the relevance judge when it is enabled (see :func:`judge_hour`)."""
    hour = hour_floor(hour)
    prices = prices if prices is not None else load_price_table()
    judge = judge if judge is not None else JudgeConfig()
    from promptops.metrics import spend

    columns = list(dict.fromkeys(INPUT_COLUMNS + spend.INPUT_COLUMNS
                                 + (_JUDGE_COLUMNS if judge.enabled else ())))
    calls = lake.read_partition(CALLS, hour, columns=columns)
    if calls is None:
        raise MissingCallsPartition(
            f"no calls partition for {hour.isoformat()} in {lake.partition_dir(CALLS, hour)}; "
            f"run the ingest for [{hour.isoformat()}, {(hour + timedelta(hours=1)).isoformat()}) "
            f"first (clear the ingest task of that run in the UI, or backfill the hour)")
    table = compute_hourly_metrics(calls, hour, prices, top_n_users)
    summary = metrics_summary(table)
    if judge.enabled:
        verdicts = judge_hour(calls, hour, judge, price_lookup=judge_price_lookup(prices),
                              judge_factory=judge_factory)
        table = pa.concat_tables([table, verdicts.metrics().cast(table.schema)])
        summary["judge"] = verdicts.summary()
    info = write_hourly_metrics(lake, hour, table)
    # Exact spend per user, team, app and key (every value): what budgets sum.
    spent = spend.hour_spend(calls, hour, prices)
    spend.write_hour_spend(lake, hour, spent)
    summary.update(uri=info.uri, rows=table.num_rows, spend_rows=spent.num_rows)
    return summary


def check_budgets(lake: Lake, at: datetime,
                  variable_overrides: Mapping[str, Any] | None = None) -> tuple[list[Finding],
                                                                               dict]:
    """Judge ``budgets.yaml`` (plus the Variable's overrides) at ``at``, the evaluated
    hour's end: the findings of thresholds crossed for the first time this period, and the
    outcome for the run's XCom and the daily report."""
    from promptops.detection.budgets.config import load_budgets
    from promptops.detection.budgets.evaluate import evaluate_budgets

    config = load_budgets(variable_overrides=variable_overrides)
    if not config.budgets:
        return [], {"rows": [], "scopes": {}}
    outcome = evaluate_budgets(lake, config, at)
    result = outcome.as_dict()
    from promptops.metrics.prometheus import push_budgets
    from promptops.settings import get_settings

    settings = get_settings()  # to the Pushgateway when one is set; never fails the run
    push_budgets(result, settings.pushgateway_url, timeout_s=settings.pushgateway_timeout_s)
    return outcome.findings, result


def push_hour_metrics(lake: Lake, hour: datetime, *, dag: str = "promptops_hourly",
                      scope: str = "hourly") -> bool | None:
    """Push the hour's metrics partition to the Pushgateway (``PROMPTOPS_PUSHGATEWAY_URL``);
    None when none is set, False (and a warning) when the push failed: never raises for it."""
    from promptops.metrics.prometheus import push_hour
    from promptops.settings import get_settings

    settings = get_settings()
    if not settings.pushgateway_url:
        return None
    from promptops.detection.baselines.bands import read_bands

    table = lake.read_partition(METRICS, hour_floor(hour))
    if table is None:
        return False
    try:
        bands = read_bands(lake, hour)
    except Exception as exc:  # the baseline is context; the metrics still go out
        log.warning("baselines of %s not pushed: %s", hour.isoformat(), exc)
        bands = None
    return push_hour(table, hour_floor(hour), settings.pushgateway_url, dag=dag, scope=scope,
                     timeout_s=settings.pushgateway_timeout_s, bands=bands)


def push_ingest_summary(summary: dict, *, dag: str = "promptops_hourly",
                        scope: str = "hourly") -> bool | None:
    """An ingest run's counts, rejects and lag to the Pushgateway, when one is set."""
    from promptops.metrics.prometheus import push_ingest
    from promptops.settings import get_settings

    settings = get_settings()
    return push_ingest(summary, datetime.now(UTC), settings.pushgateway_url, dag=dag,
                       scope=scope, timeout_s=settings.pushgateway_timeout_s)


def push_alert_outcome(outcome: dict, *, dag: str, scope: str) -> bool | None:
    """Open incidents and firing alerts of an evaluation to the Pushgateway, when one is set."""
    from promptops.metrics.prometheus import push_alerts
    from promptops.settings import get_settings

    settings = get_settings()
    return push_alerts(outcome, settings.pushgateway_url, dag=dag, scope=scope,
                       timeout_s=settings.pushgateway_timeout_s)


def findings_for_hour(lake: Lake, hour: datetime,
                      config: ThresholdsConfig | None = None, *,
                      baselines: bool = True, root_cause: bool = True,
                      prices: PriceTable | None = None) -> list[Finding]:
    """Evaluate the hour: the rules of ``thresholds.yaml``, the Holt-Winters bands fitted by
    the daily run (none until it has run), then the likely root cause of each finding."""
    hour = hour_floor(hour)
    config = config if config is not None else load_thresholds()
    current = lake.read_partition(METRICS, hour)
    if current is None:
        raise MissingData(f"no metrics partition for {hour.isoformat()} in "
                          f"{lake.partition_dir(METRICS, hour)}; run the metrics task first")
    history = MetricHistory.from_lake(lake, hour, config)
    findings = evaluate(config, current, history, hour)
    # Per-caller rules: a caller's recurring load at this time of day is not abuse.
    from promptops.detection.caller_history import apply_own_history

    findings = apply_own_history(lake, findings, hour, hour + timedelta(hours=1),
                                 config).findings
    if baselines:
        from promptops.detection.baselines.band_findings import band_findings
        from promptops.detection.baselines.bands import read_bands

        findings += band_findings(current, read_bands(lake, hour), hour)
    if root_cause and findings:
        findings = with_root_cause(lake, hour, findings, prices=prices)
    return findings


def with_root_cause(lake: Lake, hour: datetime, findings: list[Finding], *,
                    prices: PriceTable | None = None) -> list[Finding]:
    """Annotate findings with the root cause of their own slice and what the IsolationForest
    saw move on it (:func:`promptops.detection.root_cause.findings.annotate_findings`).
    Never fails the evaluation."""
    from promptops.detection.root_cause.findings import annotate_findings

    return annotate_findings(lake, hour_floor(hour), findings, prices=prices)


#: Heal requests raised by alerts (dataset HEAL_REQUESTS): one record file per request, in
#: the folder of the hour its alert fired (see :func:`write_heal_requests`).
HEAL_REQUESTS_SCHEMA = pa.schema([
    pa.field("requested_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("fingerprint", pa.string(), nullable=False),
    pa.field("rule", pa.string(), nullable=False),
    pa.field("severity", pa.string(), nullable=False),
    pa.field("playbook", pa.string(), nullable=False),
    pa.field("labels", pa.string(), nullable=False),
    pa.field("summary", pa.string()),
    pa.field("newly_fired", pa.bool_()),
    pa.field("run_id", pa.string()),
    #: The evaluating DAG: scheduled run ids repeat across DAGs, so they name no run alone.
    pa.field("dag_id", pa.string()),
    pa.field("fired_at", pa.timestamp("us", tz="UTC")),
])


def alert_on_findings(lake: Lake, findings: list[Finding], now: datetime, *, run_id: str,
                      webhooks: SlackWebhooks,
                      variable_reader: Callable[[str], str | None] | None = None,
                      run_url: str | None = None, scope: str = "hourly",
                      targets: TargetConnections | None = None) -> dict:
    """Run the alert engine on one evaluation; returns its outcome as a JSON-safe dict.
    ``webhooks``: the Slack connections; ``variable_reader``: reads the silences Variable;
    ``targets``: the connections of the alert targets beside Slack (all three from
    ``airflow_adapters.resources`` in a DAG task; without ``targets`` a route's target
    fails, saying its connection does not exist)."""
    # Imported here: slack_sdk and the engine are only needed by the evaluating task.
    from promptops.alerts.config import load_alerting_config
    from promptops.alerts.engine import AlertEngine
    from promptops.alerts.silences import SilenceSource
    from promptops.alerts.slack import SlackNotifier
    from promptops.alerts.store import AlertStore
    from promptops.alerts.targets import NO_TARGET_CONNECTIONS, TargetNotifier

    config = load_alerting_config()
    notifier = TargetNotifier(config, SlackNotifier.from_config(config, webhooks=webhooks),
                              targets if targets is not None else NO_TARGET_CONNECTIONS)
    engine = AlertEngine(config, AlertStore(lake, scope=scope), notifier,
                         silences=SilenceSource.from_config(config,
                                                            variable_reader=variable_reader))
    outcome = engine.evaluate(findings, now, run_id=run_id, run_url=run_url)
    for warning in outcome.warnings:
        log.warning("alert engine: %s", warning)
    return outcome.as_dict()


def write_heal_requests(lake: Lake, requested_at: datetime | str, requests: list[dict], *,
                        dag_id: str, run_id: str) -> list[str]:
    """Keep an evaluation's heal requests in the lake, each once.

    A request is identified by its natural key: the evaluating DAG, the alert's fingerprint
    and the time the alert fired. Its record file is named by a hash of that key, in the
    folder of the fire hour, and created only if it does not exist yet (exclusive create,
    as the alert store's claims). So reruns of an interval under any run id, concurrent
    runs, and later evaluations of the same firing alert find it there and add nothing,
    while two DAGs that share a run id keep their own requests. Nothing is ever rewritten.

    ``requested_at`` is the evaluation time (the engine's ``evaluated_at``). Returns the URIs
    of the records this call created (empty when every request was already kept)."""
    import hashlib
    import json

    from promptops.alerts.store import blob_store, io_retry

    if not dag_id:
        raise InvalidInput("write_heal_requests needs the evaluating DAG's dag_id (scheduled run "
                         "ids repeat across DAGs); pass context['dag_run'].dag_id")
    requested_at = _utc(requested_at)
    records = []
    for i, r in enumerate(requests):
        missing = [k for k in ("fingerprint", "rule", "severity", "playbook") if not r.get(k)]
        if missing:
            raise InvalidInput(f"heal request #{i} ({r.get('rule') or 'unknown rule'}) lacks "
                             f"{', '.join(missing)}; pass the alert engine's heal_requests "
                             f"unchanged (nothing was written)")
        # A request without a fire time was raised by this evaluation.
        fired_at = _utc(r["fired_at"]) if r.get("fired_at") else requested_at
        key = json.dumps([dag_id, r["fingerprint"], fired_at.isoformat()])
        row = {"requested_at": requested_at, "fingerprint": r["fingerprint"], "rule": r["rule"],
               "severity": r["severity"], "playbook": r["playbook"],
               "labels": json.dumps(r.get("labels", {}), sort_keys=True),
               "summary": r.get("summary"), "newly_fired": bool(r.get("newly_fired")),
               "run_id": run_id, "dag_id": dag_id, "fired_at": fired_at}
        records.append((fired_at, hashlib.sha256(key.encode()).hexdigest()[:32], row))

    created, kept = [], 0
    for fired_at, name, row in records:
        folder = lake.partition_dir(HEAL_REQUESTS, fired_at)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([row], schema=HEAL_REQUESTS_SCHEMA), sink)
        if io_retry(blob_store(folder, local=lake.is_local).create)(
                f"{name}.parquet", sink.getvalue().to_pybytes()):
            created.append(str(folder / f"{name}.parquet"))
        else:
            kept += 1
    if requests:
        log.info("heal requests of %s run %s: %d recorded, %d already recorded (a rerun, "
                 "another run of the interval, or the same alert still firing)",
                 dag_id, run_id, len(created), kept)
    return created


def read_heal_requests(lake: Lake, start: datetime, end: datetime) -> pa.Table | None:
    """The heal requests whose alerts fired in ``[start, end)``, as one table (oldest first);
    None when there are none."""
    table = lake.read_records(HEAL_REQUESTS, start, end)
    if table is None:
        return None
    # Files written before dag_id existed lack it (read as null; absent if all are old).
    return table.sort_by([(c, "ascending") for c in ("requested_at", "dag_id", "fingerprint")
                          if c in table.column_names])


def _utc(ts: datetime | str) -> datetime:
    return as_utc(datetime.fromisoformat(ts) if isinstance(ts, str) else ts)


def response_for(outcome: dict) -> str:
    """What the hourly run does next: ``request_heal``, ``alerts_sent`` or ``all_clear``."""
    if outcome.get("heal_requests"):
        return "request_heal"
    # A backfill filling a gap in the history posts only what still fires now (its
    # notifications); the rest it saw firing is over, logged for the report.
    live_firing = outcome.get("firing") and outcome.get("replay") != "gap"
    if outcome.get("notifications") or live_firing:
        return "alerts_sent"
    return "all_clear"
