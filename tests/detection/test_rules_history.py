"""MetricHistory from a real lake, and the shipped config on whole hours of metrics."""

from __future__ import annotations

from datetime import timedelta

from promptops.contracts.metric_table import METRICS, OVERALL
from promptops.detection.rules import MetricHistory, evaluate, needed_history
from promptops.detection.thresholds import load_thresholds
from promptops.lake.store import Lake
from tests.helpers.rules import HOUR, metrics

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3-70b")


def healthy_hour(hour, bad: dict[tuple, float] | None = None, *,
                 tokens: float = 3_000.0) -> list[tuple]:
    """A plausible hour: overall and per-model rows inside every default level."""
    rows = []
    for dim, slc in [(OVERALL, "*")] + [("model", m) for m in MODELS]:
        n = 6000 if dim == OVERALL else 1500
        values = {"requests": n, "error_rate": 0.002, "success_rate": 0.998,
                  "latency_mean_ms": 900.0, "latency_p95_ms": 1800.0,
                  "total_tokens": tokens if dim == OVERALL else tokens / 4,
                  "cost_usd": 1.0, "relevance_mean": 4.7, "intent_accuracy": 0.97}
        for metric, value in values.items():
            value = (bad or {}).get((metric, slc), value)
            samples = 300 if metric in ("relevance_mean", "intent_accuracy") else n
            bound = (value - 0.01, value + 0.01) if metric == "intent_accuracy" else (None, None)
            rows.append((metric, dim, slc, value, samples, *bound))
    rows.append(("peak_calls_per_minute", "user", "u1", 12.0, 400))
    return rows


def test_history_reads_only_what_the_rules_need(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    # Budgets are off by default (no day hours to read); with one set, the day is read.
    hours, _ = needed_history(load_thresholds(env={}), HOUR)
    assert hours == {HOUR - timedelta(hours=1), HOUR - timedelta(days=1),
                     HOUR - timedelta(weeks=1)}
    cfg = load_thresholds(env={"PROMPTOPS_THRESHOLD__daily_tokens__budget": "500000000"})
    for h in range(24 * 8 + 1):
        hour = HOUR - timedelta(hours=h)
        lake.write_partition(METRICS, hour, metrics(healthy_hour(hour), hour))
    lake.delete_partition(METRICS, HOUR - timedelta(hours=5))  # 08:00 is missing
    history = MetricHistory.from_lake(lake, HOUR, cfg)
    day_hours = {HOUR.replace(hour=h) for h in range(13) if h != 8}
    assert set(history.frames) == day_hours | {HOUR - timedelta(days=1),
                                               HOUR - timedelta(weeks=1)}
    # Only metrics some comparison or budget reads are kept in memory.
    hours, wanted = needed_history(cfg, HOUR)
    assert set(history.frame(HOUR - timedelta(days=1)).by_metric) == wanted
    assert "relevance_mean" not in wanted and "total_tokens" in wanted
    # A healthy day on the shipped config finds nothing ...
    current = metrics(healthy_hour(HOUR))
    assert evaluate(cfg, current, history, HOUR) == []
    # ... a lower budget trips (3,000 tokens/h -> 72,000 by midnight), naming the missing hour.
    busy = load_thresholds(env={"PROMPTOPS_THRESHOLD__daily_tokens__budget": "40000"})
    (f,) = evaluate(busy, current, history, HOUR)
    assert f.rule == "daily_tokens" and f.severity == "critical"
    assert f.annotations["missing_hours"] == "08:00"


def test_shipped_config_on_a_bad_hour(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    cfg = load_thresholds(env={})
    for offset in (timedelta(hours=1), timedelta(days=1), timedelta(weeks=1)):
        lake.write_partition(METRICS, HOUR - offset, metrics(healthy_hour(HOUR - offset),
                                                             HOUR - offset))
    current = metrics(healthy_hour(HOUR, {
        ("latency_mean_ms", "gpt-4o"): 2600.0, ("error_rate", "gpt-4o"): 0.08,
        ("success_rate", "gpt-4o"): 0.92, ("relevance_mean", "*"): 4.3}))
    found = evaluate(cfg, current, MetricHistory.from_lake(lake, HOUR, cfg), HOUR)
    got = {(f.rule, f.labels["slice"], f.severity) for f in found}
    assert got == {
        ("success_rate", "gpt-4o", "critical"),
        ("latency_mean", "gpt-4o", "warning"),
        ("latency_mean_vs_last_week", "gpt-4o", "warning"),   # 900 -> 2,600 ms: x2.9
        ("error_rate_vs_previous_hour", "gpt-4o", "critical"),  # 0.2% -> 8%
        ("model_degraded", "gpt-4o", "critical"),
        ("relevance", "*", "warning"),
    }
    for f in found:
        assert {"metric", "dimension", "slice", "service"} <= set(f.labels)
        assert f.annotations["window"] == "1h" and f.annotations["runbook"]
