"""The analysis half of the hourly run, as library calls the DAG tasks stay thin around.

- :func:`analyse_hour`: the hour's calls partition -> tidy metrics (plus, when enabled, the
  relevance judge's rows) -> the hour's ``metrics`` partition (replaced, so reruns never
  duplicate).
- :func:`findings_for_hour`: the hour's metrics and the history the rules need -> findings.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pyarrow as pa

from promptops.findings import Finding
from promptops.hourly_metrics import (
    CALLS,
    INPUT_COLUMNS,
    MissingCallsPartition,
    compute_hourly_metrics,
    metrics_summary,
    write_hourly_metrics,
)
from promptops.judge import JudgeConfig, judge_hour
from promptops.lake import Lake, hour_floor
from promptops.metric_table import METRICS
from promptops.pricing import PriceTable, load_price_table
from promptops.rules import MetricHistory, evaluate
from promptops.thresholds import ThresholdsConfig, load_thresholds

log = logging.getLogger(__name__)

_JUDGE_COLUMNS = ("call_id", "status", "relevance_score", "prompt_text", "response_text")


def judge_price_lookup(prices: PriceTable):
    """The judge's (input, output) USD per token from the project's price table."""
    def lookup(model: str) -> tuple[float, float] | None:
        price = prices.get(model)
        if price is None:
            return None
        return price.input_cost_per_token, price.output_cost_per_token
    return lookup


def analyse_hour(lake: Lake, hour: datetime, *, prices: PriceTable | None = None,
                 top_n_users: int = 20, judge: JudgeConfig | None = None) -> dict:
    """Compute and write the hour's metrics partition; return a small summary for XCom."""
    hour = hour_floor(hour)
    prices = prices if prices is not None else load_price_table()
    judge = judge if judge is not None else JudgeConfig()
    columns = list(dict.fromkeys(INPUT_COLUMNS + (_JUDGE_COLUMNS if judge.enabled else ())))
    calls = lake.read_partition(CALLS, hour, columns=columns)
    if calls is None:
        raise MissingCallsPartition(
            f"no calls partition for {hour.isoformat()} in {lake.partition_dir(CALLS, hour)}; "
            f"run the ingest for [{hour.isoformat()}, {(hour + timedelta(hours=1)).isoformat()}) "
            f"first (clear the ingest task of that run in the UI, or backfill the hour)")
    table = compute_hourly_metrics(calls, hour, prices, top_n_users)
    summary = metrics_summary(table)
    if judge.enabled:
        verdicts = judge_hour(calls, hour, judge, price_lookup=judge_price_lookup(prices))
        table = pa.concat_tables([table, verdicts.metrics().cast(table.schema)])
        summary["judge"] = verdicts.summary()
    info = write_hourly_metrics(lake, hour, table)
    summary.update(uri=info.uri, rows=table.num_rows)
    return summary


def findings_for_hour(lake: Lake, hour: datetime,
                      config: ThresholdsConfig | None = None) -> list[Finding]:
    """Evaluate the hourly rules on the hour's metrics partition."""
    hour = hour_floor(hour)
    config = config if config is not None else load_thresholds()
    current = lake.read_partition(METRICS, hour)
    if current is None:
        raise LookupError(f"no metrics partition for {hour.isoformat()} in "
                          f"{lake.partition_dir(METRICS, hour)}; run the metrics task first")
    history = MetricHistory.from_lake(lake, hour, config)
    return evaluate(config, current, history, hour)


#: Lake dataset of heal requests raised by alerts (read by the heal DAG once it exists).
HEAL_REQUESTS = "heal_requests"

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
])


def alert_on_findings(lake: Lake, findings: list[Finding], now: datetime, *, run_id: str,
                      run_url: str | None = None, scope: str = "hourly") -> dict:
    """Run the alert engine on one evaluation; returns its outcome as a JSON-safe dict."""
    # Imported here: slack_sdk and the engine are only needed by the evaluating task.
    from promptops.alert_engine import AlertEngine
    from promptops.alert_store import AlertStore
    from promptops.alerting import load_alerting_config
    from promptops.slack_notify import SlackNotifier

    config = load_alerting_config()
    engine = AlertEngine(config, AlertStore(lake, scope=scope), SlackNotifier.from_config(config))
    outcome = engine.evaluate(findings, now, run_id=run_id, run_url=run_url)
    for warning in outcome.warnings:
        log.warning("alert engine: %s", warning)
    return outcome.as_dict()


def write_heal_requests(lake: Lake, hour: datetime, requests: list[dict], *,
                        run_id: str) -> str | None:
    """Keep the hour's heal requests in the lake (replacing the hour's partition, so a rerun
    never duplicates); returns the partition URI, or None when there was nothing to keep."""
    import json

    hour = hour_floor(hour)
    if not requests:
        lake.delete_partition(HEAL_REQUESTS, hour)
        return None
    rows = {
        "requested_at": [hour + timedelta(hours=1)] * len(requests),
        "fingerprint": [r["fingerprint"] for r in requests],
        "rule": [r["rule"] for r in requests],
        "severity": [r["severity"] for r in requests],
        "playbook": [r["playbook"] for r in requests],
        "labels": [json.dumps(r.get("labels", {}), sort_keys=True) for r in requests],
        "summary": [r.get("summary") for r in requests],
        "newly_fired": [bool(r.get("newly_fired")) for r in requests],
        "run_id": [run_id] * len(requests),
    }
    info = lake.write_partition(HEAL_REQUESTS, hour,
                                pa.Table.from_pydict(rows, schema=HEAL_REQUESTS_SCHEMA))
    return info.uri


def response_for(outcome: dict) -> str:
    """What the hourly run does next: ``request_heal``, ``alerts_sent`` or ``all_clear``."""
    if outcome.get("heal_requests"):
        return "request_heal"
    if outcome.get("notifications") or outcome.get("firing"):
        return "alerts_sent"
    return "all_clear"
