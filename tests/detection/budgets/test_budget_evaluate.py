"""Budgets judged hour by hour on hourly spend in a real lake: each threshold fires once per
period and scope, re-arms when the next period starts (in the budget's time zone), a rerun
raises the same finding again, thousands of users are judged at once, a forecast threshold
never fires on a linear fallback, and a soft budget only reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from promptops.detection.budgets.config import BudgetsConfig
from promptops.detection.budgets.evaluate import evaluate_budgets
from promptops.lake.store import Lake
from promptops.metrics.spend import SPEND_SCHEMA, write_hour_spend

HOUR = timedelta(hours=1)


@pytest.fixture()
def lake(tmp_path) -> Lake:
    return Lake(f"file://{tmp_path / 'lake'}")


def spend_hour(lake: Lake, hour: datetime, users: dict[str, float], tokens: int = 1000) -> None:
    rows = [{"hour": hour, "dimension": "user", "value": u, "cost_usd": c, "unpriced_calls": 0,
             "tokens": tokens, "calls": 100} for u, c in users.items()]
    rows.append({"hour": hour, "dimension": "overall", "value": "*",
                 "cost_usd": sum(users.values()), "unpriced_calls": 0,
                 "tokens": tokens * len(users), "calls": 100 * len(users)})
    write_hour_spend(lake, hour, pa.Table.from_pylist(rows, schema=SPEND_SCHEMA))


def config(**budget) -> BudgetsConfig:
    base = {"name": "u-daily", "scope": {"user": ["u1"]}, "metric": "cost", "amount": 10,
            "period": "day", "timezone": "America/Los_Angeles",
            "thresholds": [{"at": 0.5, "severity": "warning"},
                           {"at": 1.0, "severity": "critical"}]}
    return BudgetsConfig.model_validate({"budgets": [{**base, **budget}]})


def fired(outcome) -> list[tuple[str, str, str]]:
    return [(f.labels["slice"], f.labels["threshold"], f.severity) for f in outcome.findings]


def test_each_threshold_fires_once_per_local_day_and_rearms_at_local_midnight(lake):
    cfg = config()
    # Los Angeles midnight is 08:00 UTC in November (PST): the local day of the 20th runs
    # 2026-11-20T08:00Z .. 2026-11-21T08:00Z.
    start = datetime(2026, 11, 20, 8, tzinfo=UTC)
    events = []
    for i in range(36):
        hour = start + i * HOUR
        spend_hour(lake, hour, {"u1": 1.0})
        out = evaluate_budgets(lake, cfg, hour + HOUR)
        events += [(i + 1, *f) for f in fired(out)]
    # $1 an hour against $10 a day: 50% after 5 local hours, 100% after 10; the next local
    # day (from hour 24) fires both again, once each.
    assert events == [(5, "u1", "50%", "warning"), (10, "u1", "100%", "critical"),
                      (29, "u1", "50%", "warning"), (34, "u1", "100%", "critical")]


def test_a_rerun_raises_the_same_finding_and_a_later_hour_does_not(lake):
    cfg = config()
    start = datetime(2026, 11, 20, 8, tzinfo=UTC)
    for i in range(5):
        spend_hour(lake, start + i * HOUR, {"u1": 1.0})
    at = start + 5 * HOUR
    first = evaluate_budgets(lake, cfg, at)
    again = evaluate_budgets(lake, cfg, at)  # the Airflow retry of the same hour
    assert fired(first) == fired(again) == [("u1", "50%", "warning")]
    assert first.findings[0].fingerprint == again.findings[0].fingerprint
    # Kept firing by the engine for the rest of the local day, so it neither reminds nor
    # resolves before the period ends.
    assert first.findings[0].keep_firing_for == 19
    spend_hour(lake, at, {"u1": 1.0})
    assert fired(evaluate_budgets(lake, cfg, at + HOUR)) == []


def test_every_user_is_judged_at_once_with_per_user_amounts(lake):
    users = {f"user-{i:04d}": 0.01 * (i % 100) for i in range(5000)}
    users["user-0042"] = 9.0   # over a $5 budget
    users["user-0043"] = 9.0   # under its own $20
    hour = datetime(2026, 11, 20, 10, tzinfo=UTC)
    spend_hour(lake, hour, users)
    cfg = config(name="every-user", scope={"user": "*"}, amount=5, timezone="UTC",
                 amounts={"user-0043": 20})
    out = evaluate_budgets(lake, cfg, hour + HOUR)
    assert out.scopes["every-user"] == 5000
    assert sorted(fired(out)) == [("user-0042", "100%", "critical"),
                                  ("user-0042", "50%", "warning")]
    row = next(r for r in out.rows if r.value == "user-0042")
    assert row.spent == pytest.approx(9.0) and row.amount == 5
    # user-0043 spent as much but has its own $20: 45%, nothing crossed, nothing fired.
    assert "user-0043" not in {r.value for r in out.rows if r.crossed}


def test_a_forecast_threshold_never_fires_on_a_linear_projection(lake):
    cfg = config(thresholds=[{"at": 1.0, "severity": "critical", "on": "forecast"}],
                 timezone="UTC")
    start = datetime(2026, 11, 20, tzinfo=UTC)
    for i in range(6):   # $1 an hour: linearly $24 by the day's end, over $10
        spend_hour(lake, start + i * HOUR, {"u1": 1.0})
    out = evaluate_budgets(lake, cfg, start + 6 * HOUR)
    [row] = out.rows
    assert row.method == "linear" and row.projected == pytest.approx(24.0)
    assert "linear projection" in row.reason
    assert out.findings == [] and row.crossed == []


def test_a_soft_budget_reports_and_never_alerts(lake):
    cfg = config(soft=True)
    start = datetime(2026, 11, 20, 8, tzinfo=UTC)
    for i in range(12):
        spend_hour(lake, start + i * HOUR, {"u1": 1.0})
    out = evaluate_budgets(lake, cfg, start + 12 * HOUR)
    assert out.findings == []
    assert out.rows[0].crossed == ["50%", "100%"] and out.rows[0].fired == []


def test_missing_hours_are_counted_so_the_figure_reads_as_a_floor(lake):
    cfg = config(timezone="UTC")
    start = datetime(2026, 11, 20, tzinfo=UTC)
    spend_hour(lake, start, {"u1": 1.0})
    spend_hour(lake, start + 2 * HOUR, {"u1": 1.0})
    out = evaluate_budgets(lake, cfg, start + 3 * HOUR)
    assert out.missing_hours["u-daily"] == 1
    assert out.rows[0].spent == pytest.approx(2.0)
