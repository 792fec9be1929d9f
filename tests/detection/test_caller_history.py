"""Recurring load is normal: per-caller rules alert only on a caller above its ceiling AND
unusual against its own history at this time of day (``detection.caller_history``)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from promptops.contracts.datasets import CALLER_PROFILES
from promptops.detection.caller_history import (
    PROFILE_RECORD,
    PROFILE_SCHEMA,
    CallerHistoryConfig,
    CallerProfile,
    Usual,
    build_caller_profiles,
    is_unusual,
    read_caller_profile,
)
from promptops.lake.store import Lake
from promptops.metrics.health import write_health_metrics
from promptops.pipelines.health import health_findings, judge_health
from tests.helpers.caller_history import (
    BATCH_RATE,
    BATCH_TOKENS,
    BATCH_USER,
    CALLS_RULE,
    TODAY,
    TOKENS_RULE,
    batch_users,
    health_rows,
    write_batch_days,
)
from tests.helpers.rules import config as rules_config

THRESHOLDS = rules_config(abusive_caller_5m=CALLS_RULE, token_burst_5m=TOKENS_RULE)

AT_BATCH = TODAY + timedelta(hours=2, minutes=30)


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(f"file://{tmp_path / 'lake'}")


def per_caller(findings) -> list[tuple[str, str, str]]:
    return sorted((f.rule, f.labels["slice"], f.severity) for f in findings
                  if f.labels.get("dimension") == "user")


def judge(lake: Lake, at, users):
    table = health_rows(at, users)
    write_health_metrics(lake, at, table)
    return judge_health(lake, at, table, THRESHOLDS)


# -- the statistic on known distributions ------------------------------------------------------


def test_usual_is_the_median_over_covered_days_absent_days_counting_zero():
    assert Usual.of([80, 75, 90]) == Usual(80.0, 3, 3)
    # Seen on 1 of 3 days at this time: its usual is 0, the ceiling decides.
    assert Usual.of([None, 200, None]) == Usual(0.0, 1, 3)
    assert Usual.of([]) == Usual(0.0, 0, 0)


def test_new_caller_is_judged_by_the_ceiling_alone():
    assert is_unusual(120, Usual(0.0, 0, 7), margin=1.5, min_days=1)
    assert is_unusual(120, Usual(0.0, 0, 0), margin=1.5, min_days=1)


def test_a_load_at_the_critical_level_is_never_usual():
    # Abuse repeated every day at 02:00 is still abuse.
    assert is_unusual(400, Usual(380.0, 5, 5), margin=1.5, min_days=1, critical=300)
    assert not is_unusual(400, Usual(380.0, 5, 5), margin=1.5, min_days=1)


def _daily_peaks(rng, rate, days, evaluations=24):
    """Per previous day, the busiest minute over the evaluations within ±1 h."""
    return rng.poisson(rate, size=(days, evaluations * 5)).max(axis=1)


@pytest.mark.parametrize("rate", [40, 65, 80])
def test_a_recurring_poisson_batch_almost_never_alerts_and_a_3x_surge_always_does(rate):
    """A batch whose calls per minute are Poisson(rate): 10,000 simulated evaluations, each
    with its own 7 days of history. The default margin lets at most 1 in 1,000 through
    (in fact none) and catches every one at 3x the rate."""
    rng = np.random.default_rng(13)
    cfg = CallerHistoryConfig()
    false_alarms = caught = 0
    trials = 10_000
    for _ in range(trials):
        usual = Usual.of(_daily_peaks(rng, rate, cfg.days).tolist())
        now = rng.poisson(rate, size=5).max()
        surge = rng.poisson(3 * rate, size=5).max()
        false_alarms += is_unusual(now, usual, margin=cfg.margin, min_days=cfg.min_days)
        caught += is_unusual(surge, usual, margin=cfg.margin, min_days=cfg.min_days)
    assert false_alarms / trials <= 0.001
    assert caught == trials


def test_token_bursts_of_a_recurring_batch_with_variable_prompts():
    """Tokens a minute = a Poisson number of calls with log-normal prompt sizes (median
    2,100 tokens, 30% spread): the batch's own peaks do not alert, 3x of them does."""
    rng = np.random.default_rng(7)

    def peak(rate, n_minutes):
        calls = rng.poisson(rate, size=n_minutes)
        tokens = rng.lognormal(np.log(BATCH_TOKENS), 0.3, size=int(calls.sum()))
        starts = np.concatenate([[0], np.cumsum(calls)[:-1]])
        return float(np.add.reduceat(tokens, starts).max())

    false_alarms = caught = 0
    trials = 1_000
    for _ in range(trials):
        usual = Usual.of([peak(BATCH_RATE, 120) for _ in range(7)])
        false_alarms += is_unusual(peak(BATCH_RATE, 5), usual, margin=1.5, min_days=1)
        caught += is_unusual(peak(3 * BATCH_RATE, 5), usual, margin=1.5, min_days=1)
    assert false_alarms / trials <= 0.001
    assert caught == trials


def test_config_from_the_environment(monkeypatch):
    monkeypatch.setenv("PROMPTOPS_CALLER_HISTORY_RULES", "abusive_caller, token_burst_5m")
    monkeypatch.setenv("PROMPTOPS_CALLER_HISTORY_MARGIN", "2")
    cfg = CallerHistoryConfig()
    assert cfg.rules == ("abusive_caller", "token_burst_5m") and cfg.margin == 2.0
    monkeypatch.setenv("PROMPTOPS_CALLER_HISTORY_MARGIN", "0.9")
    with pytest.raises(ValueError, match="margin"):
        CallerHistoryConfig()


# -- the profile -------------------------------------------------------------------------------


def test_the_daily_profile_keeps_the_peaks_that_could_explain_a_crossing(lake):
    write_batch_days(lake, 3)
    summary = build_caller_profiles(lake, TODAY, THRESHOLDS)
    # 3 days x 8 hours with evaluations (01:05-04:00, 13:05-16:00); only the batch's
    # evaluations have peaks above 100,000 / 1.5 tokens.
    assert summary["covered_hours"] == 24 and summary["callers"] == 1
    assert summary["rows"] == 3 * 12 * 2  # 12 evaluations a day, two metrics
    table = lake.read_record(CALLER_PROFILES, TODAY, PROFILE_RECORD)
    assert set(table.column("user").to_pylist()) == {BATCH_USER}
    assert set(table.column("metric").to_pylist()) == {"tokens_per_minute_peak",
                                                       "peak_calls_per_minute"}
    # Rerunning the day replaces its profile.
    assert build_caller_profiles(lake, TODAY, THRESHOLDS)["rows"] == summary["rows"]
    profile = read_caller_profile(lake, AT_BATCH)
    assert profile is not None
    usual = profile.usual(BATCH_USER, "tokens_per_minute_peak", AT_BATCH, AT_BATCH,
                          days=7, window=timedelta(hours=1))
    assert usual == Usual(float(BATCH_RATE * BATCH_TOKENS), 3, 3)


def test_yesterdays_profile_serves_until_the_daily_run_builds_todays(lake, caplog):
    write_batch_days(lake, 3)
    build_caller_profiles(lake, TODAY - timedelta(days=1), THRESHOLDS)
    with caplog.at_level(logging.INFO, logger="promptops.detection.caller_history"):
        profile = read_caller_profile(lake, AT_BATCH)
    assert profile is not None and "using the one of 2026-11-19" in caplog.text


# -- judging health evaluations ----------------------------------------------------------------


def test_a_nightly_batch_seen_on_3_previous_days_is_not_alerted(lake, caplog):
    write_batch_days(lake, 3)
    build_caller_profiles(lake, TODAY, THRESHOLDS)
    with caplog.at_level(logging.INFO, logger="promptops.detection.caller_history"):
        judged = judge(lake, AT_BATCH, batch_users(AT_BATCH))
    assert per_caller(judged.findings) == []
    assert [(s["rule"], s["user"]) for s in judged.recurring_load_suppressed] == [
        ("token_burst_5m", BATCH_USER)]
    assert "recurring load, not alerted: token_burst_5m on user=svc-nightly-batch" in caplog.text
    assert "147,000" in caplog.text


def test_the_same_caller_at_another_time_of_day_is_alerted(lake):
    write_batch_days(lake, 3)
    build_caller_profiles(lake, TODAY, THRESHOLDS)
    at = TODAY + timedelta(hours=14, minutes=30)
    judged = judge(lake, at, {BATCH_USER: (BATCH_RATE, BATCH_TOKENS)})
    assert per_caller(judged.findings) == [("token_burst_5m", BATCH_USER, "warning")]
    assert "not seen at this time of day in 3 day(s)" in judged.findings[0].annotations[
        "own_history"]
    assert judged.recurring_load_suppressed == []


def test_the_batch_at_3x_its_usual_peak_is_alerted(lake):
    write_batch_days(lake, 3)
    build_caller_profiles(lake, TODAY, THRESHOLDS)
    judged = judge(lake, AT_BATCH, batch_users(AT_BATCH, rate=3 * BATCH_RATE))
    assert per_caller(judged.findings) == [("abusive_caller_5m", BATCH_USER, "warning"),
                                           ("token_burst_5m", BATCH_USER, "critical")]
    tokens = next(f for f in judged.findings if f.rule == "token_burst_5m")
    assert "usual peak at this time of day 147,000" in tokens.annotations["own_history"]


def test_a_new_caller_above_the_ceiling_is_alerted(lake):
    write_batch_days(lake, 3)
    build_caller_profiles(lake, TODAY, THRESHOLDS)
    judged = judge(lake, AT_BATCH, {**batch_users(AT_BATCH), "mallory": (150, 500)})
    assert per_caller(judged.findings) == [("abusive_caller_5m", "mallory", "warning")]
    assert [s["user"] for s in judged.recurring_load_suppressed] == [BATCH_USER]


def test_without_a_profile_the_ceiling_alone_decides(lake, caplog):
    write_batch_days(lake, 3)  # history in health_metrics, but no daily run built a profile
    with caplog.at_level(logging.INFO, logger="promptops.detection.caller_history"):
        table = health_rows(AT_BATCH, batch_users(AT_BATCH))
        findings = health_findings(lake, AT_BATCH, table, THRESHOLDS)
    assert per_caller(findings) == [("token_burst_5m", BATCH_USER, "warning")]
    assert "per-caller rules are judged by their ceiling alone" in caplog.text
    assert findings[0].annotations["own_history"].startswith("no caller profile yet")


def test_the_judgment_can_be_switched_off(lake):
    write_batch_days(lake, 3)
    build_caller_profiles(lake, TODAY, THRESHOLDS)
    table = health_rows(AT_BATCH, batch_users(AT_BATCH))
    judged = judge_health(lake, AT_BATCH, table, THRESHOLDS,
                          caller_history=CallerHistoryConfig(enabled=False))
    assert per_caller(judged.findings) == [("token_burst_5m", BATCH_USER, "warning")]


def test_a_caller_seen_once_in_a_week_at_this_time_is_not_recurring(lake):
    """Seen on 1 of 7 covered days: its usual peak (the median) is 0."""
    for k in range(1, 8):
        day = TODAY - timedelta(days=k)
        users = {BATCH_USER: (BATCH_RATE, BATCH_TOKENS)} if k == 4 else {}
        for minute in range(65, 240, 5):
            at = day + timedelta(minutes=minute)
            write_health_metrics(lake, at, health_rows(at, users))
    build_caller_profiles(lake, TODAY, THRESHOLDS)
    judged = judge(lake, AT_BATCH, batch_users(AT_BATCH))
    assert per_caller(judged.findings) == [("token_burst_5m", BATCH_USER, "warning")]


def test_the_time_of_day_window_crosses_midnight():
    """A batch at 23:50-00:20 every day: at 00:10 its usual peak includes the minutes it ran
    before midnight on each previous day."""
    times = []
    for k in range(1, 4):
        start = TODAY - timedelta(days=k) - timedelta(minutes=10)
        times += [start + timedelta(minutes=5 * i) for i in range(7)]
    table = pa.table({"user": [BATCH_USER] * len(times), "metric": ["m"] * len(times),
                      "at": times, "peak": [90.0 + (t.minute % 7) for t in times]},
                     schema=PROFILE_SCHEMA)
    hours = sorted({TODAY - timedelta(hours=h) for h in range(1, 72)})
    meta = {"built_for": TODAY.isoformat(), "covered_hours": [h.isoformat() for h in hours]}
    profile = CallerProfile.from_table(
        table.replace_schema_metadata({"promptops": json.dumps(meta)}))
    at = TODAY + timedelta(minutes=10)
    usual = profile.usual(BATCH_USER, "m", at, at, days=7, window=timedelta(hours=1))
    assert usual.days_seen == 3 and usual.days_covered == 3  # 3 days of history only
    assert usual.peak == max(90.0 + (t.minute % 7) for t in times)
    # Far from the batch's time, the same days are covered and the caller is not seen.
    noon = TODAY + timedelta(hours=12)
    assert profile.usual(BATCH_USER, "m", noon, noon, days=7,
                         window=timedelta(hours=1)) == Usual(0.0, 0, 3)


def test_an_unreadable_profile_never_fails_the_evaluation(lake, caplog):
    write_batch_days(lake, 1)
    info = build_caller_profiles(lake, TODAY, THRESHOLDS)
    with open(info["uri"].removeprefix("file://"), "wb") as fh:
        fh.write(b"not parquet")
    table = health_rows(AT_BATCH, batch_users(AT_BATCH))
    with caplog.at_level(logging.WARNING, logger="promptops.detection.caller_history"):
        findings = health_findings(lake, AT_BATCH, table, THRESHOLDS)
    assert per_caller(findings) == [("token_burst_5m", BATCH_USER, "warning")]
    assert "could not be read" in caplog.text
