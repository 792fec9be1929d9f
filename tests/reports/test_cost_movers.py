"""Cost movers: the app, team or model whose cost changed most against the day before and
the same weekday last week, on a lake of hourly metrics partitions where one small app
jumps 7.7x while the day's total moves only +3.7%."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from promptops.contracts import metric_table as mt
from promptops.lake.store import Lake
from promptops.reports.cost_report import build_report, slack_summary
from tests.helpers.reports import NOW

DAY = date(2026, 11, 9)  # a Monday; the same weekday last week is 2 November
DAY_START = datetime(2026, 11, 9, tzinfo=UTC)
#: Per hour: app -> (team, model, cost before, cost on the report day). ``summarise`` jumps
#: 7.7x ($0.50 -> $3.85 an hour) while ``chat`` falls, so the total moves +3.7%. ``tiny``
#: jumps 10x too, from a cent a day: under the minimum cost, it is no mover.
APPS = {"chat": ("search", "gpt-4o", 9.00, 6.00),
        "summarise": ("platform", "claude-3-haiku", 0.50, 3.85),
        "tiny": ("platform", "claude-3-haiku", 0.0005, 0.005)}
BUDGETS = {"budget_tokens": 1e9, "budget_cost_usd": 1e6}


def _hour_table(hour: datetime, report_day: bool) -> pa.Table:
    rows = []

    def add(dimension: str, slice_: str, cost: float) -> None:
        rows.extend({"hour": hour, "metric": metric, "dimension": dimension, "slice": slice_,
                     "value": value, "samples": 100, "lower": None, "upper": None}
                    for metric, value in ((mt.COST_USD, cost), (mt.REQUESTS, 100.0),
                                          (mt.TOTAL_TOKENS, 10_000.0)))

    by = {"team": {}, "model": {}}
    for app, (team, model, before, now) in APPS.items():
        cost = now if report_day else before
        add("app", app, cost)
        by["team"][team] = by["team"].get(team, 0.0) + cost
        by["model"][model] = by["model"].get(model, 0.0) + cost
    for dimension, slices in by.items():
        for name, cost in slices.items():
            add(dimension, name, cost)
    add(mt.OVERALL, mt.ALL, sum(by["team"].values()))
    return pa.Table.from_pylist(rows, schema=mt.METRICS_SCHEMA)


@pytest.fixture(scope="module")
def movers_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(f"file://{tmp_path_factory.mktemp('movers-lake')}")
    for back in range(8):
        for h in range(24):
            hour = DAY_START - timedelta(days=back) + timedelta(hours=h)
            lake.write_partition(mt.METRICS, hour, _hour_table(hour, report_day=back == 0))
    return lake


def _by_slice(comparison: dict) -> dict[tuple[str, str], dict]:
    return {(m["dimension"], m["slice"]): m for m in comparison["movers"]}


def _slack_movers(result) -> str:
    """The cost movers section of the Slack summary."""
    return next(b["text"]["text"] for b in slack_summary(result, None)["blocks"]
                if b["type"] == "section" and "Cost movers" in b.get("text", {}).get("text", ""))


def test_the_app_that_jumped_is_named_with_change_and_ratio(movers_lake):
    result = build_report(movers_lake, DAY, now=NOW, **BUDGETS)
    s = result.summary
    assert s["day_over_day"] == pytest.approx(0.0373, abs=5e-4)  # all the total shows

    day_before, last_week = s["cost_movers"]["comparisons"]
    assert (day_before["against"], day_before["date"]) == ("the day before", "2026-11-08")
    assert (last_week["against"], last_week["date"]) == ("the same weekday last week",
                                                         "2026-11-02")
    for comparison in (day_before, last_week):
        assert comparison["note"] is None and comparison["hours"] == 24
        summarise = _by_slice(comparison)[("app", "summarise")]
        assert summarise["cost_usd"] == pytest.approx(24 * 3.85)
        assert summarise["before_usd"] == pytest.approx(24 * 0.50)
        assert summarise["change_usd"] == pytest.approx(24 * 3.35)
        assert summarise["ratio"] == pytest.approx(7.7)
        # Largest absolute change first; the cent-a-day app is under the minimum cost.
        changes = [abs(m["change_usd"]) for m in comparison["movers"]]
        assert changes == sorted(changes, reverse=True)
        assert ("app", "tiny") not in _by_slice(comparison)
        top_app = next(m for m in comparison["movers"] if m["dimension"] == "app")
        assert top_app["slice"] == "summarise"
        chat = _by_slice(comparison)[("app", "chat")]
        assert chat["change_usd"] == pytest.approx(-24 * 3.0)
        assert chat["ratio"] == pytest.approx(6.0 / 9.0)

    rows = list(csv.DictReader(io.StringIO(
        (Path(result.uri.removeprefix("file://")) / "cost_movers.csv").read_text())))
    assert {(r["against"], r["dimension"], r["slice"]) for r in rows} >= {
        ("the day before", "app", "summarise"), ("the same weekday last week", "team",
                                                 "platform")}
    html = (Path(result.uri.removeprefix("file://")) / "index.html").read_text()
    assert 'id="cost-movers"' in html and "summarise" in html and "7.7×" in html

    movers = _slack_movers(result)
    assert "summarise" in movers and "+$80.40" in movers and "7.7×" in movers
    assert "2026-11-08" in movers and "2026-11-02" in movers


def test_a_missing_comparison_day_is_no_data_never_zero(movers_lake, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    for back in range(7):  # 2 November (the same weekday last week) is not in the lake
        for h in range(24):
            hour = DAY_START - timedelta(days=back) + timedelta(hours=h)
            lake.write_partition(mt.METRICS, hour, movers_lake.read_partition(mt.METRICS, hour))
    # The day before lacks its evening: compared on the hours both days have.
    for h in range(18, 24):
        lake.delete_partition(mt.METRICS, DAY_START - timedelta(days=1) + timedelta(hours=h))
    result = build_report(lake, DAY, now=NOW, **BUDGETS)

    day_before, last_week = result.summary["cost_movers"]["comparisons"]
    assert day_before["hours"] == 18
    assert day_before["note"] == "on the 18 hours both days have"
    summarise = _by_slice(day_before)[("app", "summarise")]
    assert summarise["cost_usd"] == pytest.approx(18 * 3.85)
    assert summarise["before_usd"] == pytest.approx(18 * 0.50)
    assert last_week["note"] == "no data for 2026-11-02"
    assert last_week["hours"] == 0 and last_week["movers"] == []

    movers = _slack_movers(result)
    assert "no data for 2026-11-02" in movers and "$0.00" not in movers
    html = (Path(result.uri.removeprefix("file://")) / "index.html").read_text()
    assert "no data for 2026-11-02" in html


def test_an_empty_report_day_has_no_movers(tmp_path, movers_lake):
    lake = Lake(f"file://{tmp_path}")
    hour = DAY_START - timedelta(days=1)
    lake.write_partition(mt.METRICS, hour, movers_lake.read_partition(mt.METRICS, hour))
    comparisons = build_report(lake, DAY, now=NOW, **BUDGETS).summary["cost_movers"][
        "comparisons"]
    assert [c["note"] for c in comparisons] == ["no data for 2026-11-09"] * 2
    assert all(c["movers"] == [] for c in comparisons)


def test_the_minimum_cost_is_configurable(movers_lake, monkeypatch):
    monkeypatch.setenv("PROMPTOPS_COST_MOVERS_MIN_USD", "0.05")
    result = build_report(movers_lake, DAY, now=NOW, **BUDGETS)
    tiny = _by_slice(result.summary["cost_movers"]["comparisons"][0])[("app", "tiny")]
    assert tiny["ratio"] == pytest.approx(10.0)
    assert result.summary["cost_movers"]["min_cost_usd"] == 0.05
