"""Comparison rules: previous hour, same hour yesterday, same hour last week; ratio AND change
on enough volume at both ends."""

from __future__ import annotations

from datetime import timedelta

import pytest

from promptops.detection.rules import MetricHistory, evaluate
from tests.helpers.rules import HOUR, config, metrics


def rule(against: str, **extra) -> dict:
    return {"kind": "comparison", "metric": "latency_mean_ms", "direction": "above",
            "against": against, "unit": "ms", "warning": {"ratio": 1.5, "change": 20},
            "critical": {"ratio": 3.0, "change": 25}, "min_samples": 100, **extra}


@pytest.mark.parametrize(("against", "offset", "words"), [
    ("previous_hour", timedelta(hours=1), "previous hour"),
    ("same_hour_yesterday", timedelta(days=1), "same hour yesterday"),
    ("same_hour_last_week", timedelta(weeks=1), "same hour last week"),
])
def test_each_baseline(against, offset, words):
    then = HOUR - offset
    history = MetricHistory.from_tables([metrics([
        ("latency_mean_ms", "model", "gpt-4o", 12.0, 500),
        ("latency_mean_ms", "model", "mini", 12.0, 500)], then)])
    now = metrics([("latency_mean_ms", "model", "gpt-4o", 38.4, 1234),
                   ("latency_mean_ms", "model", "mini", 12.5, 1234)])
    (f,) = evaluate(config(lat=rule(against)), now, history, HOUR)
    assert (f.rule, f.kind, f.severity, f.labels["model"]) == ("lat", "comparison", "critical",
                                                              "gpt-4o")
    assert f.annotations["comparison"] == f"x3.2 vs {words}: 12.0 ms -> 38.4 ms"
    assert f.annotations["baseline_hour"] == f"{then:%Y-%m-%dT%H:%MZ}"
    assert f.summary == (f"mean latency 38.4 ms is x3.2 the {words} (12.0 ms) on "
                         "model=gpt-4o (1,234 calls)")
    assert (f.value, f.threshold) == (38.4, 36.0)
    # Other baselines are not consulted: the same history is an hour the rule does not read.
    other = "previous_hour" if against != "previous_hour" else "same_hour_last_week"
    assert evaluate(config(lat=rule(other)), now, history, HOUR) == []


def test_ratio_and_change_must_both_be_exceeded():
    history = MetricHistory.from_tables({HOUR - timedelta(hours=1): metrics([
        ("latency_mean_ms", "model", "small_base", 2.0, 500),     # x10 but only +18 ms
        ("latency_mean_ms", "model", "big_base", 1000.0, 500),    # +300 ms but only x1.3
        ("latency_mean_ms", "model", "both", 20.0, 500),          # x2 and +20: warning
    ], HOUR - timedelta(hours=1))})
    now = metrics([("latency_mean_ms", "model", "small_base", 20.0, 500),
                   ("latency_mean_ms", "model", "big_base", 1300.0, 500),
                   ("latency_mean_ms", "model", "both", 40.0, 500)])
    found = evaluate(config(lat=rule("previous_hour")), now, history, HOUR)
    assert [(f.labels["slice"], f.severity) for f in found] == [("both", "warning")]


def test_minimum_volume_on_both_sides():
    then = HOUR - timedelta(days=1)
    history = MetricHistory.from_tables([metrics([
        ("latency_mean_ms", "app", "thin_then", 10.0, 99),
        ("latency_mean_ms", "app", "thin_now", 10.0, 500),
        ("latency_mean_ms", "app", "thick", 10.0, 100)], then)])
    now = metrics([("latency_mean_ms", "app", "thin_then", 100.0, 500),
                   ("latency_mean_ms", "app", "thin_now", 100.0, 99),
                   ("latency_mean_ms", "app", "thick", 100.0, 100)])
    found = evaluate(config(lat=rule("same_hour_yesterday")), now, history, HOUR)
    assert [f.labels["slice"] for f in found] == ["thick"]


def test_direction_below_traffic_drop_and_missing_baseline():
    drop = {"kind": "comparison", "metric": "requests", "direction": "below",
            "against": "same_hour_last_week", "unit": "count",
            "warning": {"ratio": 2.0, "change": 500}, "min_samples": 100}
    then = HOUR - timedelta(weeks=1)
    history = MetricHistory.from_tables([metrics([
        ("requests", "overall", "*", 6000.0, 6000), ("requests", "app", "chat", 400.0, 400)],
        then)])
    now = metrics([("requests", "overall", "*", 2500.0, 2500),   # x0.42, -3,500
                   ("requests", "app", "chat", 150.0, 150)])      # x0.38 but only -250
    (f,) = evaluate(config(drop=drop), now, history, HOUR)
    assert f.labels["dimension"] == "overall" and f.severity == "warning"
    assert f.annotations["comparison"] == "x0.4 vs same hour last week: 6,000 -> 2,500"
    assert f.threshold == 3000.0
    # No partition for the baseline hour: nothing to compare, no finding.
    assert evaluate(config(drop=drop), now, MetricHistory(), HOUR) == []


def test_zero_baseline_and_unknown_values():
    then = HOUR - timedelta(hours=1)
    err = {"kind": "comparison", "metric": "error_rate", "direction": "above",
           "against": "previous_hour", "unit": "ratio",
           "warning": {"ratio": 3.0, "change": 0.02}, "min_samples": 100}
    history = MetricHistory.from_tables([metrics([
        ("error_rate", "model", "a", 0.0, 1000), ("error_rate", "model", "b", None, 1000)], then)])
    now = metrics([("error_rate", "model", "a", 0.05, 1000),
                   ("error_rate", "model", "b", 0.5, 1000)])
    (f,) = evaluate(config(err=err), now, history, HOUR)
    assert f.labels["slice"] == "a"
    assert f.annotations["comparison"] == "new vs previous hour: 0.0% -> 5.0%"


def test_a_change_within_sampling_error_does_not_fire_and_the_finding_says_why():
    """Error rate x4 on small hours (2 of 250 -> 8 of 250): tripled on the point values, but
    within both hours' sampling error. 30 of 250 is beyond it; the finding names the margin."""
    err = {"kind": "comparison", "metric": "error_rate", "direction": "above",
           "against": "previous_hour", "unit": "ratio",
           "warning": {"ratio": 3.0, "change": 0.02}, "min_samples": 200}
    then = HOUR - timedelta(hours=1)

    def row(k, n=250):
        from promptops.stats import wilson_interval
        lo, hi = wilson_interval(k, n)
        return ("error_rate", "model", "m", k / n, n, lo, hi)

    history = MetricHistory.from_tables([metrics([row(2)], then)])
    assert evaluate(config(err=err), metrics([row(8)]), history, HOUR) == []
    # Judged on the point values (use_bound off) the same hour fires.
    assert len(evaluate(config(err={**err, "use_bound": False}), metrics([row(8)]), history,
                        HOUR)) == 1
    (f,) = evaluate(config(err=err), metrics([row(30)]), history, HOUR)
    assert f.annotations["judged"].startswith("beyond 2.4% by more than its sampling error (")
    assert f.annotations["judged"].endswith(" at 95% confidence)")


def test_also_against_needs_the_change_against_every_baseline():
    """Tokens the day after a holiday: x2.5 the same hour yesterday (the holiday), but as
    much as the same hour last week: no surge. A real surge is up against both."""
    tokens = {"kind": "comparison", "metric": "total_tokens", "direction": "above",
              "against": "same_hour_yesterday", "also_against": ["same_hour_last_week"],
              "unit": "tokens", "warning": {"ratio": 2.0, "change": 1000}, "min_samples": 10}
    yesterday, last_week = HOUR - timedelta(days=1), HOUR - timedelta(weeks=1)
    history = MetricHistory.from_tables([
        metrics([("total_tokens", "app", "rebound", 4000.0, 40),
                 ("total_tokens", "app", "surge", 10_000.0, 100),
                 ("total_tokens", "app", "new_last_week", 4000.0, 40)], yesterday),
        metrics([("total_tokens", "app", "rebound", 10_000.0, 100),
                 ("total_tokens", "app", "surge", 10_000.0, 100)], last_week)])
    now = metrics([("total_tokens", "app", "rebound", 10_000.0, 100),
                   ("total_tokens", "app", "surge", 40_000.0, 400),
                   ("total_tokens", "app", "new_last_week", 10_000.0, 100)])
    found = evaluate(config(tokens=tokens), now, history, HOUR)
    # No row last week (no traffic then): the main baseline decides.
    assert [f.labels["slice"] for f in found] == ["new_last_week", "surge"]
    surge = found[1]
    assert surge.annotations["comparison"] == \
        "x4.0 vs same hour yesterday: 10,000 tokens -> 40,000 tokens"
    assert surge.annotations["also_against"] == \
        "x4.0 vs same hour last week: 10,000 tokens -> 40,000 tokens"
    # Without last week's partition the main baseline alone decides.
    only_yesterday = MetricHistory({yesterday: history.frame(yesterday)})
    assert len(evaluate(config(tokens=tokens), now, only_yesterday, HOUR)) == 3


def _requests(slice_: str, count: int, hour) -> tuple:
    from promptops.stats import poisson_interval

    lower, upper = poisson_interval(count)
    return ("requests", "app", slice_, float(count), count, float(lower), float(upper))


def test_shipped_traffic_drop_catches_a_small_app_and_ignores_an_unusual_last_week():
    """The shipped requests_drop_vs_last_week: an app of ~600 calls an hour losing 80% of
    them warns; an app whose same hour last week held a flood (13,000 calls), and that is
    as busy as yesterday, does not; a holiday (40% of the traffic) does not."""
    from promptops.detection.thresholds import load_thresholds

    shipped = load_thresholds()
    yesterday, last_week = HOUR - timedelta(days=1), HOUR - timedelta(weeks=1)
    apps = {"dropped": (623, 610, 116), "flooded_last_week": (13_477, 231, 225),
            "holiday": (2200, 2150, 880)}
    history = MetricHistory.from_tables([
        metrics([_requests(a, v[1], yesterday) for a, v in apps.items()], yesterday),
        metrics([_requests(a, v[0], last_week) for a, v in apps.items()], last_week)])
    now = metrics([_requests(a, v[2], HOUR) for a, v in apps.items()])
    found = [f for f in evaluate(shipped, now, history, HOUR)
             if f.rule == "requests_drop_vs_last_week"]
    assert [(f.labels["slice"], f.severity) for f in found] == [("dropped", "warning")]
