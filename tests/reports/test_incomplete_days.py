"""The daily report of a day the lake lacks, in whole or in part, or whose calls carry no
cost: a report that says so (hours present, the missing ones, the command that fills them),
with unknown figures shown as unknown, never as zero."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest

from promptops.alerts.slack import validate_message
from promptops.contracts import metric_table as mt
from promptops.contracts.records import validate_page
from promptops.lake.store import Lake
from promptops.metrics.hourly import compute_hourly_metrics
from promptops.metrics.pricing import PriceTable
from promptops.reports.cost_report import (
    CHARTS,
    TABLES,
    backfill_command,
    build_report,
    slack_summary,
)
from promptops.simulator import Platform, SimConfig
from tests.helpers.reports import DAY, DAY_START, NOW

BUDGETS = {"budget_tokens": 100_000, "budget_cost_usd": 1000}


def _copy_days(source: Lake, target: Lake, days: range, hours: range = range(24)) -> None:
    """The fixture lake's metrics partitions of ``DAY - d`` for each d in ``days``."""
    for back in days:
        for h in hours:
            hour = DAY_START - timedelta(days=back) + timedelta(hours=h)
            table = source.read_partition(mt.METRICS, hour)
            if table is not None:  # 5 November lacks two hours
                target.write_partition(mt.METRICS, hour, table)


def _folder(result) -> Path:
    return Path(result.uri.removeprefix("file://"))


def _csv(result, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((_folder(result) / f"{name}.csv").read_text())))


def _fields(message: dict) -> dict[str, str]:
    return {title: value for block in message["blocks"] for f in block.get("fields", [])
            for title, _, value in [f["text"].partition("\n")]}


def _assert_every_file_written(result) -> None:
    names = {f"{c}.png" for c in CHARTS} | {f"{c}.csv" for c in CHARTS + TABLES} | {
        "summary.json", "index.html"}
    assert set(result.files) == names
    assert {p.name for p in _folder(result).iterdir()} == names


def test_an_empty_day_is_a_report_that_says_so(report_lake, tmp_path):
    """Ingest failed all day: the days before are in the lake, the report day is not."""
    lake = Lake(f"file://{tmp_path}")
    _copy_days(report_lake, lake, range(1, 8))
    result = build_report(lake, DAY, now=NOW, **BUDGETS)

    s = result.summary
    assert s["hours_present"] == 0 and s["hours_missing"] == 24 and not s["complete"]
    assert len(s["missing_hours"]) == 24 and s["missing_hours"][0] == DAY_START.isoformat()
    assert s["backfill_commands"] == [
        backfill_command(DAY_START, DAY_START + timedelta(hours=23))]
    # Nothing is known about the day: unknown, never $0 or -100% against yesterday.
    assert s["cost_usd"] is None and s["total_tokens"] is None and s["requests"] is None
    assert s["day_over_day"] is None and s["vs_avg7"] is None
    assert s["tokens_budget_share"] is None and s["intent_accuracy"] is None
    _assert_every_file_written(result)
    assert all(r["status"] == "missing" and r["cost_usd"] == "" for r in _csv(result, "hours"))

    html = (_folder(result) / "index.html").read_text()
    assert "0 of 24 hours with data" in html
    assert "No data for this day" in html and s["backfill_commands"][0] in html
    assert {r["date"]: r["cumulative_cost_usd"] for r in _csv(result, "month_to_date")}[
        DAY.isoformat()] == ""
    fields = _fields(slack_summary(result, None))
    assert fields["*Cost* (0/24 h)"] == "n/a"
    assert fields["*Missing hours*"].startswith("*24*: 00:00, 01:00")
    # The comparisons are n/a because the day has no data, not because of earlier days.
    assert fields["*Day over day*"] == "n/a (no data for 2026-11-09)"
    assert fields["*vs 7-day average*"] == "n/a (no data for 2026-11-09)"


def test_an_empty_lake_still_gets_a_report(tmp_path):
    result = build_report(Lake(f"file://{tmp_path}"), DAY, now=NOW, **BUDGETS)
    assert result.summary["hours_missing"] == 24 and result.summary["mtd_cost_usd"] is None
    assert result.summary["projected_month_end_usd"] is None
    _assert_every_file_written(result)


def test_a_partial_day_of_five_hours(report_lake, tmp_path):
    """Ingest ran from 05:00 to 10:00 only: 5 of 24 hours present, the 19 others named with
    the commands that fill them, compared with the day before on the same five hours."""
    lake = Lake(f"file://{tmp_path}")
    _copy_days(report_lake, lake, range(1, 8))
    _copy_days(report_lake, lake, range(0, 1), hours=range(5, 10))
    result = build_report(lake, DAY, now=NOW, **BUDGETS)

    s = result.summary
    assert s["hours_present"] == 5 and s["hours_missing"] == 19
    assert [h[11:16] for h in s["missing_hours"]] == [
        f"{h:02d}:00" for h in (*range(5), *range(10, 24))]
    assert s["backfill_commands"] == [
        backfill_command(DAY_START, DAY_START + timedelta(hours=4)),
        backfill_command(DAY_START + timedelta(hours=10), DAY_START + timedelta(hours=23))]
    assert s["cost_usd"] == pytest.approx(5 * 3.0)
    assert s["previous_day"]["cost_usd_same_hours"] == pytest.approx(5 * 2.0)
    assert s["day_over_day"] == pytest.approx(0.5)
    html = (_folder(result) / "index.html").read_text()
    assert "5 of 24 hours with data" in html and "19 missing" in html
    assert s["backfill_commands"][0] in html
    fields = _fields(slack_summary(result, None))
    assert fields["*Cost* (5/24 h)"] == "$15.00"
    assert fields["*Day over day*"] == "+50.0% vs 2026-11-08 (same 5 h)"


def test_a_day_whose_calls_have_no_cost_data(tmp_path):
    """Real hourly metrics from simulated calls, with no model in the price table: every
    cost is unknown. The report lists the unpriced models and prices nothing at $0."""
    lake = Lake(f"file://{tmp_path}")
    platform = Platform(SimConfig.build("include/config/scenarios/quiet.yaml"))
    for h in (9, 10, 11):
        hour = DAY_START + timedelta(hours=h)
        served = platform.served_with_truth(hour, hour + timedelta(hours=1))
        calls = validate_page([s.record for s in served], hour, hour + timedelta(hours=1)).good
        lake.write_partition(mt.METRICS, hour,
                             compute_hourly_metrics(calls, hour, PriceTable({}), 20))
    result = build_report(lake, DAY, now=NOW, **BUDGETS)

    s = result.summary
    assert s["hours_present"] == 3
    assert s["cost_usd"] is None and s["cost_budget_share"] is None
    assert s["mtd_cost_usd"] is None and s["projected_month_end_usd"] is None
    assert s["total_tokens"] > 0 and s["requests"] > 0
    assert len(s["unpriced_models"]) >= 3
    assert sum(u["requests"] for u in s["unpriced_models"]) == s["requests"]
    _assert_every_file_written(result)
    # No model has a price, so no model gets a cost column; the hours' totals are unknown.
    assert all(r["total_usd"] == "" for r in _csv(result, "cost_by_hour"))
    assert all(r["cost_usd"] == "" for r in _csv(result, "cost_by_app"))
    month = _csv(result, "month_to_date")
    assert [(r["cost_usd"], r["cumulative_cost_usd"]) for r in month] == [("", "")] * DAY.day
    message = slack_summary(result, None)
    validate_message(message)
    fields = _fields(message)
    assert fields["*Cost* (3/24 h)"] == "n/a"
    assert fields["*Day over day*"] == "n/a (no priced calls on 2026-11-09)"
