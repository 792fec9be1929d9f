"""Composite rules (all conditions on the same slice) and budget projections."""

from __future__ import annotations

from datetime import timedelta

import pytest

from promptops.contracts.metric_table import OVERALL
from promptops.detection.rules import MetricHistory, evaluate
from tests.helpers.rules import HOUR, config, metrics

LATENCY = {"kind": "threshold", "metric": "latency_mean_ms", "direction": "above",
           "unit": "ms", "warning": 2000, "critical": 5000, "min_samples": 10,
           "dimensions": ["overall"]}
DEGRADED = {"kind": "composite", "severity": "critical", "dimensions": ["model"],
            "min_samples": 100, "heal": "api_timeouts", "conditions": [
                {"metric": "latency_mean_ms", "level": "warning"},
                {"metric": "error_rate", "op": ">", "value": 0.05, "unit": "ratio"}]}


def test_composite_needs_every_condition_on_the_same_slice():
    table = metrics([
        ("latency_mean_ms", "model", "both", 2600.0, 500),
        ("error_rate", "model", "both", 0.08, 500),
        ("latency_mean_ms", "model", "slow_only", 2600.0, 500),
        ("error_rate", "model", "slow_only", 0.01, 500),
        ("latency_mean_ms", "model", "failing_only", 800.0, 500),
        ("error_rate", "model", "failing_only", 0.30, 500),
        # Each condition holds, but on different slices of the app dimension.
        ("latency_mean_ms", "app", "x", 9000.0, 500), ("error_rate", "app", "y", 0.5, 500),
        # Both hold but on too few calls.
        ("latency_mean_ms", "model", "tiny", 9000.0, 50), ("error_rate", "model", "tiny", 0.5, 50),
    ])
    found = evaluate(config(latency_mean=LATENCY, model_degraded=DEGRADED), table,
                     MetricHistory(), HOUR)
    # latency_mean's own dimensions (overall) do not limit the composite's (model).
    assert [(f.rule, f.labels["slice"]) for f in found] == [("model_degraded", "both")]
    f = found[0]
    assert (f.severity, f.kind, f.labels["model"], f.labels["metric"]) == (
        "critical", "composite", "both", "latency_mean_ms+error_rate")
    assert f.summary == ("mean latency 2,600.0 ms > 2,000.0 ms AND error rate 8.0% > 5.0% "
                         "on model=both")
    assert f.annotations["heal_playbook"] == "api_timeouts"


def test_composite_at_critical_level():
    cfg = config(latency_mean=LATENCY, model_degraded={
        **DEGRADED, "conditions": [{"metric": "latency_mean_ms", "level": "critical"},
                                   {"metric": "error_rate", "op": ">=", "value": 0.05}]})
    table = metrics([("latency_mean_ms", "model", "a", 2600.0, 500),
                     ("error_rate", "model", "a", 0.05, 500),
                     ("latency_mean_ms", "model", "b", 5600.0, 500),
                     ("error_rate", "model", "b", 0.05, 500)])
    assert [f.labels["slice"] for f in evaluate(cfg, table, MetricHistory(), HOUR)] == ["b"]


TOKENS = {"kind": "budget", "metric": "total_tokens", "unit": "tokens", "budget": 100_000,
          "warning": 1.0, "critical": 1.5, "min_hours": 3, "heal": "high_token_usage",
          "service": "billing", "dimensions": ["overall", "team"]}


def day(hours: dict[int, list[tuple]]) -> MetricHistory:
    start = HOUR.replace(hour=0)
    return MetricHistory.from_tables(
        {start + timedelta(hours=h): metrics(rows, start + timedelta(hours=h))
         for h, rows in hours.items()})


def test_budget_projection_from_the_burn_so_far():
    # 13:00 evaluated: hours 00..12 in history, 13 is current; 14 hours of 5,000 tokens.
    history = day({h: [("total_tokens", OVERALL, "*", 5000.0, 100)] for h in range(13)})
    now = metrics([("total_tokens", OVERALL, "*", 5000.0, 100)])
    (f,) = evaluate(config(daily_tokens=TOKENS), now, history, HOUR)
    # spent 70,000 in 14 h -> 120,000 by midnight: over budget (warning), under 1.5x.
    assert (f.kind, f.severity, f.value, f.threshold) == ("budget", "warning", 120_000, 100_000)
    assert f.summary == ("daily tokens projected 120,000 tokens by end of day vs budget "
                         "100,000 tokens (x1.2); spent 70,000 tokens by 13:59 UTC overall")
    assert f.annotations["budget"] == (
        "spent 70,000 tokens over 14 observed hour(s) of 14 since 00:00 UTC; projected = "
        "spent / 14 x 24 = 120,000 tokens")
    assert f.annotations["missing_hours"] == "none"
    assert f.labels["service"] == "billing"
    assert "heal_playbook" not in f.annotations  # heal from critical up


def test_budget_names_missing_hours_instead_of_counting_them_as_zero():
    # Two hours have no partition: the projection uses the 12 observed hours.
    history = day({h: [("total_tokens", OVERALL, "*", 5000.0, 100)] for h in range(13)
                   if h not in (3, 7)})
    now = metrics([("total_tokens", OVERALL, "*", 5000.0, 100)])
    (f,) = evaluate(config(daily_tokens=TOKENS), now, history, HOUR)
    assert f.value == 120_000  # 60,000 / 12 x 24, not 60,000 / 14 x 24
    assert f.annotations["missing_hours"] == "03:00, 07:00"
    assert f.summary.endswith("; 2 hour(s) missing: 03:00, 07:00")
    assert "over 12 observed hour(s) of 14" in f.annotations["budget"]


def test_budget_critical_slices_and_absent_rows():
    # The finance team only appears at 13:00: earlier hours have partitions without its row,
    # so they count as zero (no traffic), not as missing.
    history = day({h: [("total_tokens", OVERALL, "*", 1000.0, 10)] for h in range(13)})
    now = metrics([("total_tokens", OVERALL, "*", 1000.0, 10),
                   ("total_tokens", "team", "finance", 90_000.0, 10)])
    found = evaluate(config(daily_tokens=TOKENS), now, history, HOUR)
    assert [(f.labels["slice"], f.severity) for f in found] == [("finance", "critical")]
    f = found[0]
    assert f.value == pytest.approx(90_000 / 14 * 24)
    assert f.labels["team"] == "finance"
    assert f.annotations["heal_playbook"] == "high_token_usage"
    assert f.annotations["missing_hours"] == "none"


def test_budget_before_min_hours_judges_what_was_spent():
    start = HOUR.replace(hour=1)
    history = day({0: [("total_tokens", OVERALL, "*", 40_000.0, 10)]})
    # 01:00: 2 observed hours (< min_hours 3). 80,000 spent: projection would be 960,000
    # (critical), but judged on spending it is below budget: nothing.
    now = metrics([("total_tokens", OVERALL, "*", 40_000.0, 10)], start)
    assert evaluate(config(daily_tokens=TOKENS), now, history, start) == []
    # 110,000 actually spent already: warning on spending.
    now = metrics([("total_tokens", OVERALL, "*", 70_000.0, 10)], start)
    (f,) = evaluate(config(daily_tokens=TOKENS), now, history, start)
    assert (f.severity, f.value) == ("warning", 110_000)
    assert f.summary.startswith("daily tokens spent 110,000 tokens by 01:59 UTC vs budget")
    assert "judged on what was spent" in f.annotations["budget"]


def test_cost_budget_with_unknown_hour():
    cost = {"kind": "budget", "metric": "cost_usd", "unit": "usd", "budget": 100.0,
            "dimensions": ["model"], "min_hours": 1}
    # A slice whose cost was unknown (unpriced) in an hour: that hour is missing for it.
    history = day({h: [("cost_usd", "model", "m", None if h == 5 else 5.0, 10)]
                   for h in range(13)})
    now = metrics([("cost_usd", "model", "m", 5.0, 10)])
    (f,) = evaluate(config(daily_cost=cost), now, history, HOUR)
    assert f.value == pytest.approx(65.0 / 13 * 24)
    assert f.annotations["missing_hours"] == "05:00"
    assert "projected $120.00 by end of day vs budget $100.00" in f.summary


def test_a_budget_is_off_until_a_person_sets_one():
    """``budget: null`` (the shipped default): no finding however much is spent; the same
    rule with a budget set fires as before."""
    history = day({h: [("total_tokens", OVERALL, "*", 5e9, 100)] for h in range(13)})
    now = metrics([("total_tokens", OVERALL, "*", 5e9, 100)])
    unset = {k: v for k, v in TOKENS.items() if k != "budget"}
    assert evaluate(config(daily_tokens=unset), now, history, HOUR) == []
    assert evaluate(config(daily_tokens={**unset, "budget": None}), now, history, HOUR) == []
    (f,) = evaluate(config(daily_tokens=TOKENS), now, history, HOUR)
    assert f.severity == "critical"
