"""Threshold rules: direction, levels, minimum samples, labels and the summary line."""

from __future__ import annotations

import pytest

from promptops.contracts.metric_table import OVERALL
from promptops.detection.rules import GPU_UTILIZATION_PCT, MetricHistory, evaluate
from tests.helpers.rules import HOUR, config, metrics

NO_HISTORY = MetricHistory()

SUCCESS = {"kind": "threshold", "metric": "success_rate", "direction": "below",
           "unit": "ratio", "warning": 0.99, "critical": 0.95, "min_samples": 100,
           "heal": "api_timeouts", "for": 2, "keep_firing_for": 3,
           "runbook": "check error codes"}
LATENCY = {"kind": "threshold", "metric": "latency_mean_ms", "direction": "above",
           "unit": "ms", "warning": 2000, "critical": 5000, "min_samples": 10}


def test_direction_below_and_worst_severity_only():
    table = metrics([
        ("success_rate", OVERALL, "*", 0.995, 5000),        # fine
        ("success_rate", "model", "gpt-4o", 0.912, 1234),   # below critical
        ("success_rate", "model", "llama-3-70b", 0.97, 800),  # below warning only
        ("success_rate", "model", "claude-3-haiku", 0.99, 800),  # exactly at the level: fine
    ])
    found = evaluate(config(success_rate=SUCCESS), table, NO_HISTORY, HOUR)
    assert [(f.labels["slice"], f.severity) for f in found] == [
        ("gpt-4o", "critical"), ("llama-3-70b", "warning")]
    crit = found[0]
    assert crit.summary == "success rate 91.2% < 95.0% on model=gpt-4o (1,234 calls)"
    assert crit.labels == {"metric": "success_rate", "dimension": "model", "slice": "gpt-4o",
                           "service": "platform-api", "model": "gpt-4o"}
    assert (crit.rule, crit.kind, crit.value, crit.threshold) == (
        "success_rate", "threshold", 0.912, 0.95)
    assert (crit.pending_for, crit.keep_firing_for) == (2, 3)
    assert crit.annotations["heal_playbook"] == "api_timeouts"
    assert crit.annotations["window"] == "1h"
    assert crit.annotations["runbook"] == "check error codes"
    assert crit.annotations["levels"] == "warning < 99.0%, critical < 95.0%"
    # Heal is suggested from critical up (heal_on default), not for the warning.
    assert "heal_playbook" not in found[1].annotations


def test_direction_above_and_overall_labels():
    table = metrics([("latency_mean_ms", OVERALL, "*", 2345.67, 6000),
                     ("latency_mean_ms", "region", "eu-west-1", 1999.0, 900),
                     ("latency_mean_ms", "region", "us-east-1", 5100.0, 900)])
    found = evaluate(config(latency_mean=LATENCY), table, NO_HISTORY, HOUR)
    assert [(f.labels["slice"], f.severity) for f in found] == [
        ("*", "warning"), ("us-east-1", "critical")]
    assert found[0].summary == "mean latency 2,345.7 ms > 2,000.0 ms overall (6,000 calls)"
    assert found[0].labels == {"metric": "latency_mean_ms", "dimension": "overall",
                               "slice": "*", "service": "platform-api"}
    assert found[1].labels["region"] == "us-east-1"


def test_minimum_samples_and_unknown_values_are_not_judged():
    table = metrics([("success_rate", "app", "tiny", 0.5, 99),      # too few calls
                     ("success_rate", "app", "enough", 0.5, 100),   # exactly the minimum
                     ("success_rate", "app", "unknown", None, 5000)])
    found = evaluate(config(success_rate=SUCCESS), table, NO_HISTORY, HOUR)
    assert [f.labels["slice"] for f in found] == ["enough"]


def test_dimensions_filter_and_disabled_rules():
    rule = {**LATENCY, "dimensions": ["model"]}
    table = metrics([("latency_mean_ms", OVERALL, "*", 9000.0, 100),
                     ("latency_mean_ms", "model", "gpt-4o", 9000.0, 100)])
    assert [f.labels["dimension"] for f in
            evaluate(config(latency_mean=rule), table, NO_HISTORY, HOUR)] == ["model"]
    assert evaluate(config(latency_mean={**rule, "enabled": False}), table, NO_HISTORY,
                    HOUR) == []


def test_interval_bound_makes_small_samples_alert_only_when_confident():
    rule = {"kind": "threshold", "metric": "intent_accuracy", "direction": "below",
            "unit": "ratio", "warning": 0.95, "critical": 0.90, "min_samples": 20,
            "use_bound": True, "service": "intent-classifier"}
    table = metrics([
        # 92% on 50 labels, but the Wilson interval reaches 97%: not confidently bad.
        ("intent_accuracy", "model", "a", 0.92, 50, 0.81, 0.97),
        # 85% on 2,000 labels, upper bound 86.5%: confidently below critical.
        ("intent_accuracy", "model", "b", 0.85, 2000, 0.834, 0.865),
        # 93% with a tight interval: warning.
        ("intent_accuracy", "model", "c", 0.93, 5000, 0.923, 0.937),
    ])
    found = evaluate(config(intent_accuracy=rule), table, NO_HISTORY, HOUR)
    assert [(f.labels["slice"], f.severity) for f in found] == [("b", "critical"),
                                                                ("c", "warning")]
    assert found[0].summary == ("intent accuracy 85.0% (upper bound 86.5%) < 90.0% on "
                                "model=b (2,000 labelled calls)")
    assert found[0].labels["service"] == "intent-classifier"


def test_gpu_rule_without_rows_gives_nothing_and_sources_are_separate():
    gpu = {"kind": "threshold", "metric": GPU_UTILIZATION_PCT, "direction": "above",
           "unit": "pct", "warning": 80, "critical": 95, "source": "health", "window": "5m",
           "dimensions": ["gpu_node"], "service": "gpu"}
    cfg = config(gpu_utilization=gpu, latency_mean=LATENCY)
    hourly = metrics([("latency_mean_ms", OVERALL, "*", 100.0, 100)])
    assert evaluate(cfg, hourly, NO_HISTORY, HOUR, source="health") == []
    health = metrics([(GPU_UTILIZATION_PCT, "gpu_node", "gpu-node-01", 97.5, 10),
                      (GPU_UTILIZATION_PCT, "gpu_node", "gpu-node-02", 50.0, 10)])
    # The hourly evaluation does not run health rules ...
    assert evaluate(cfg, health, NO_HISTORY, HOUR) == []
    # ... the health evaluation does.
    (f,) = evaluate(cfg, health, NO_HISTORY, HOUR, source="health")
    assert f.summary == "GPU utilisation 97.5% > 95.0% on gpu_node=gpu-node-01 (10 readings)"
    assert f.labels["gpu_node"] == "gpu-node-01" and f.annotations["window"] == "5m"


def test_empty_table_and_bad_tables():
    cfg = config(success_rate=SUCCESS)
    assert evaluate(cfg, metrics([]), NO_HISTORY, HOUR) == []
    dup = metrics([("success_rate", "model", "m", 0.5, 500),
                   ("success_rate", "model", "m", 0.6, 500)])
    with pytest.raises(ValueError, match=r"1 duplicate row\(s\), e.g. metric=success_rate model=m"):
        evaluate(cfg, dup, NO_HISTORY, HOUR)
    with pytest.raises(ValueError, match=r"missing column\(s\) samples"):
        evaluate(cfg, metrics([]).drop_columns(["samples"]), NO_HISTORY, HOUR)


def test_the_calls_without_a_user_and_the_rest_beyond_the_top_users_are_no_caller():
    """A source without user ids puts every call in user=(none), and the users beyond the
    top ones are 'other': many callers together, never judged as one abusive caller."""
    rule = {"kind": "threshold", "metric": "peak_calls_per_minute", "direction": "above",
            "warning": 100, "critical": 300, "min_samples": 1, "dimensions": ["user"],
            "use_bound": False, "unit": "calls/min"}
    table = metrics([("peak_calls_per_minute", "user", "(none)", 900.0, 50_000),
                     ("peak_calls_per_minute", "user", "other", 600.0, 30_000),
                     ("peak_calls_per_minute", "user", "user-042", 350.0, 9_000),
                     ("success_rate", "team", "(none)", 0.5, 5_000)])
    found = evaluate(config(abusive=rule), table, NO_HISTORY, HOUR)
    assert [f.labels["slice"] for f in found] == ["user-042"]
    # Other dimensions keep their (none) slice: calls without a team still fail.
    found = evaluate(config(success_rate={**SUCCESS, "dimensions": ["team"]}), table,
                     NO_HISTORY, HOUR)
    assert [f.labels["slice"] for f in found] == ["(none)"]
