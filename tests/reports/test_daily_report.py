"""The daily cost report built from a fixture lake: every section, the charts and their CSVs,
missing hours shown as missing (never zero), like-for-like comparisons, and incidents."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from promptops.contracts import metric_table as mt
from promptops.contracts.records import validate_page
from promptops.lake.store import Lake
from promptops.metrics.hourly import compute_hourly_metrics
from promptops.metrics.pricing import load_price_table
from promptops.reports.cost_report import (
    CHARTS,
    TABLES,
    ReportError,
    backfill_command,
    build_report,
    list_report_dates,
    month_section,
    read_report_day,
    read_report_file,
    report_sections,
    totals_section,
)
from promptops.simulator import Platform, SimConfig
from tests.helpers.reports import (
    DAY,
    DAY_START,
    EXPECTED_COST,
    EXPECTED_MTD,
    EXPECTED_MTD_HOURS,
    EXPECTED_PROJECTION,
    NOW,
    UNPRICED_MODEL,
    hour_table,
)

SECTIONS = ("headline", "completeness", "cost-by-hour", "cost-by-team", "cost-by-app",
            "top-users", "tokens-budget", "trend", "cost-movers", "month-to-date", "unpriced",
            "quality", "incidents", "hours")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Sections (their text), images, and the rows of the hours table."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.images: dict[str, str] = {}
        self.hour_rows: dict[str, dict] = {}
        self._section: str | None = None
        self._figure: str | None = None
        self._row: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
            self.sections[self._section] = []
        elif tag == "figure":
            self._figure = a.get("id", "").removeprefix("chart-")
        elif tag == "img" and self._figure:
            self.images[self._figure] = a["src"]
        elif tag == "tr" and "data-hour" in a:
            self._row = {"class": a.get("class"), "cells": []}
            self.hour_rows[a["data-hour"]] = self._row

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._section and data.strip():
            self.sections[self._section].append(data.strip())
        if self._row is not None and data.strip():
            self._row["cells"].append(data.strip())


def _folder(result) -> Path:
    return Path(result.uri.removeprefix("file://"))


def _page(result) -> _Page:
    page = _Page()
    page.feed((_folder(result) / "index.html").read_text())
    return page


def _text(page: _Page, section: str) -> str:
    return " ".join(page.sections[section])


def _csv(result, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((_folder(result) / f"{name}.csv").read_text())))


def test_every_section_renders_with_the_headline_numbers(report):
    page = _page(report)
    assert set(SECTIONS) <= set(page.sections)
    headline = _text(page, "headline")
    for expected in ("$63.00", "21/24 h", "210,000", "210.0% of 100,000", "+50.0%",
                     "$443.00", "$1,511.66", UNPRICED_MODEL, "2026-11-05"):
        assert expected in headline, expected
    assert "search" in _text(page, "cost-by-team") and "$42.00" in _text(page, "cost-by-team")
    assert "search-ui" in _text(page, "cost-by-app") and "$10.50" in _text(page, "cost-by-app")
    assert "user-001" in _text(page, "top-users") and "$31.50" in _text(page, "top-users")
    assert "88.1%" in _text(page, "quality") and "4.20" in _text(page, "quality")
    assert "http://airflow.example/dags/promptops_daily/runs/r1" in \
        (_folder(report) / "index.html").read_text()


def test_pngs_exist_are_non_empty_and_embedded(report):
    page = _page(report)
    folder = _folder(report)
    assert set(page.images) == set(CHARTS)
    for name in CHARTS:
        data = (folder / f"{name}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000, name
        with Image.open(io.BytesIO(data)) as img:
            assert img.width >= 400 and img.height >= 200
            # Not a blank canvas: a chart has many colours.
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 10, name
        prefix = "data:image/png;base64,"
        assert page.images[name].startswith(prefix)
        assert base64.b64decode(page.images[name][len(prefix):]) == data, name


def test_every_file_is_listed_and_written(report):
    names = {f"{c}.png" for c in CHARTS} | {f"{c}.csv" for c in CHARTS + TABLES} | {
        "summary.json", "index.html"}
    assert set(report.files) == names
    folder = _folder(report)
    assert {p.name for p in folder.iterdir()} == names  # no temporary files left behind
    assert json.loads((folder / "summary.json").read_text()) == json.loads(
        json.dumps(report.summary, default=str))


def test_each_section_stands_alone_and_together_they_are_the_report(report_lake, report):
    """build_report only assembles and writes: each section returns its own tables, charts
    and headline numbers from the day's rows."""
    day = read_report_day(report_lake, DAY, now=NOW)
    assert totals_section(day, 100_000, 1000).summary["cost_usd"] == EXPECTED_COST
    assert month_section(day).summary["mtd_cost_usd"] == EXPECTED_MTD
    sections = report_sections(day, 100_000, 1000).values()
    assert sorted(t for s in sections for t in s.tables) == sorted(CHARTS + TABLES)
    assert sorted(c for s in sections for c in s.charts) == sorted(CHARTS)
    summary = {k: v for s in sections for k, v in s.summary.items()}
    whole = {k: v for k, v in report.summary.items()
             if k not in ("day", "generated_at", "run_url")}
    assert json.dumps(summary, sort_keys=True, default=str) == json.dumps(
        whole, sort_keys=True, default=str)


def test_missing_hours_are_named_marked_and_never_zero(report):
    s = report.summary
    missing = ["2026-11-09T03:00:00+00:00", "2026-11-09T04:00:00+00:00",
               "2026-11-09T17:00:00+00:00"]
    assert s["missing_hours"] == missing and not report.complete
    # The cost is the 21 hours that have data: not diluted, not padded with zeros.
    assert s["cost_usd"] == pytest.approx(EXPECTED_COST)
    assert s["total_tokens"] == 210_000
    # One exact command per contiguous run of missing hours.
    assert s["backfill_commands"] == [
        "airflow backfill create --dag-id promptops_hourly --from-date "
        "2026-11-09T03:00:00+00:00 --to-date 2026-11-09T04:00:00+00:00 "
        "--reprocess-behavior completed",
        "airflow backfill create --dag-id promptops_hourly --from-date "
        "2026-11-09T17:00:00+00:00 --to-date 2026-11-09T17:00:00+00:00 "
        "--reprocess-behavior completed",
    ]
    page = _page(report)
    completeness = _text(page, "completeness")
    assert "03:00" in completeness and "17:00" in completeness
    assert all(cmd in completeness for cmd in s["backfill_commands"])
    assert "not counted as zero" in completeness
    for hour in ("03:00", "04:00", "17:00"):
        row = page.hour_rows[hour]
        assert row["class"] == "missing" and "missing: no metrics" in row["cells"]
        assert not any(c.startswith("$") for c in row["cells"])
    assert page.hour_rows["05:00"]["class"] == "ok" and "$3.00" in page.hour_rows["05:00"]["cells"]
    # The hours CSV says whether ingest ran: 17:00 has calls, 03:00 has nothing.
    hours = {r["hour"][11:16]: r for r in _csv(report, "hours")}
    assert hours["17:00"]["calls_partition"] == "yes" and hours["03:00"]["calls_partition"] == "no"
    # Every per-hour CSV: a missing hour has status "missing" and empty cells, never 0.
    for name in ("cost_by_hour", "tokens_vs_budget", "quality", "hours"):
        rows = {r["hour"][11:16]: r for r in _csv(report, name)}
        assert len(rows) == 24, name
        for hour in ("03:00", "04:00", "17:00"):
            assert rows[hour]["status"] == "missing", name
            values = {k: v for k, v in rows[hour].items()
                      if k not in ("hour", "status", "calls_partition", "budget_tokens")}
            assert values and all(v == "" for v in values.values()), (name, rows[hour])


def test_csvs_are_the_charts_tables(report):
    for name in CHARTS:
        assert (_folder(report) / f"{name}.csv").stat().st_size > 0
    by_hour = _csv(report, "cost_by_hour")
    assert list(by_hour[0]) == ["hour", "status", "gpt-4o", "claude-3-haiku", "total_usd"]
    ok = [r for r in by_hour if r["status"] == "ok"]
    assert len(ok) == 21
    assert sum(float(r["total_usd"]) for r in ok) == pytest.approx(EXPECTED_COST)
    assert all(float(r["gpt-4o"]) == 2.0 and float(r["claude-3-haiku"]) == 1.0 for r in ok)
    teams = {r["team"]: r for r in _csv(report, "cost_by_team")}
    assert {t: float(r["cost_usd"]) for t, r in teams.items()} == {"search": 42.0,
                                                                    "support": 21.0}
    users = [r["user"] for r in _csv(report, "top_users")]
    assert users == ["user-001", "user-002", "user-003"]  # "other" is not a user
    tokens = _csv(report, "tokens_vs_budget")
    assert float(tokens[-1]["cumulative_tokens"]) == 210_000
    assert {r["budget_tokens"] for r in tokens} == {"100000.0"}
    trend = {r["date"]: r for r in _csv(report, "daily_trend")}
    assert list(trend) == [f"2026-11-0{d}" for d in range(2, 10)]
    assert trend["2026-11-05"]["complete"] == "False" and trend["2026-11-05"]["hours_present"] == "22"
    assert float(trend["2026-11-08"]["cost_usd"]) == 48.0
    assert float(trend["2026-11-08"]["cost_usd_same_hours"]) == 42.0
    month = _csv(report, "month_to_date")
    assert len(month) == 9 and float(month[-1]["cumulative_cost_usd"]) == EXPECTED_MTD
    quality = {r["hour"][11:16]: r for r in _csv(report, "quality")}
    assert float(quality["12:00"]["intent_accuracy"]) == 0.5


def test_comparisons_are_like_for_like_and_leave_incomplete_days_out(report):
    s = report.summary
    assert s["previous_day"] == {"date": "2026-11-08", "cost_usd": 48.0, "complete": True,
                                 "cost_usd_same_hours": 42.0, "same_hours": 21}
    assert s["day_over_day"] == pytest.approx(0.5)
    # 2026-11-05 lacks two hours: left out of the average, which stays $42 on these hours.
    assert s["avg7_days_used"] == 6 and s["avg7_days_left_out"] == ["2026-11-05"]
    assert s["avg7_cost_usd_same_hours"] == pytest.approx(42.0)
    assert s["vs_avg7"] == pytest.approx(0.5)
    assert s["mtd_cost_usd"] == pytest.approx(EXPECTED_MTD)
    assert s["mtd_hours_present"] == EXPECTED_MTD_HOURS and s["mtd_hours_missing"] == 5
    assert s["projected_month_end_usd"] == pytest.approx(EXPECTED_PROJECTION)
    assert s["tokens_budget_share"] == pytest.approx(2.1)
    assert s["cost_budget_share"] == pytest.approx(0.063)


def test_unpriced_models_are_listed_and_not_priced_at_zero(report):
    s = report.summary
    assert s["unpriced_models"] == [{"model": UNPRICED_MODEL, "requests": 105, "tokens": 21_000}]
    assert UNPRICED_MODEL not in _csv(report, "cost_by_hour")[0]
    rows = _csv(report, "unpriced_models")
    assert rows == [{"model": UNPRICED_MODEL, "unpriced_requests": "105.0",
                     "unpriced_tokens": "21000.0", "hours": "21"}]
    assert UNPRICED_MODEL in _text(_page(report), "unpriced")


def test_quality_and_incidents_of_the_day(report):
    s = report.summary
    # Weighted by labelled calls: 20 hours at 90% and one at 50%, 100 calls each.
    assert s["intent_accuracy"] == pytest.approx((20 * 90 + 50) / 2100)
    assert s["relevance_mean"] == pytest.approx(4.2)
    incidents = _csv(report, "incidents")
    assert [(r["rule"], r["severity"], r["status"]) for r in incidents] == [
        ("success_rate", "critical", "resolved"), ("latency_p95_ms", "warning", "firing")]
    assert incidents[0]["fired_at"] == "2026-11-09T07:00:00+00:00"
    assert incidents[0]["resolved_at"] == "2026-11-09T10:00:00+00:00"
    assert incidents[0]["slice"] == "model=gpt-4o"
    text = _text(_page(report), "incidents")
    assert "success_rate" in text and "2026-11-09 10:00" in text
    assert "old_rule" not in text  # fired the day before
    assert s["incidents"] == 2 and s["incidents_critical"] == 1


def test_hours_not_over_yet_are_pending_not_missing(report_lake, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    for h in (0, 1, 2, 5, 6):
        hour = DAY_START + timedelta(hours=h)
        lake.write_partition(mt.METRICS, hour, report_lake.read_partition(mt.METRICS, hour))
    result = build_report(lake, DAY, budget_tokens=100_000, budget_cost_usd=1000,
                          now=DAY_START + timedelta(hours=7, minutes=30))
    s = result.summary
    assert [h[11:16] for h in s["missing_hours"]] == ["03:00", "04:00"]
    assert s["hours_pending"] == 17 and s["pending_hours"][0] == "2026-11-09T07:00:00+00:00"
    assert s["cost_usd"] == pytest.approx(15.0)
    assert s["tokens_projected_day"] == pytest.approx(50_000 / 5 * 24)
    page = _page(result)
    assert page.hour_rows["07:00"]["class"] == "pending"
    assert "not over yet" in page.hour_rows["07:00"]["cells"]
    # No earlier day at all: comparisons say n/a rather than inventing a baseline.
    assert s["day_over_day"] is None and s["vs_avg7"] is None and s["avg7_days_used"] == 0


def test_budgets_default_to_the_thresholds_config(report_lake, tmp_path, monkeypatch):
    lake = Lake(f"file://{tmp_path}")
    lake.write_partition(mt.METRICS, DAY_START, report_lake.read_partition(mt.METRICS, DAY_START))
    # Budgets are off until a person sets one: the report says so instead of inventing one.
    result = build_report(lake, DAY, now=NOW)
    s = result.summary
    assert s["budget_tokens"] is None and s["budget_cost_usd"] is None
    assert s["tokens_budget_share"] is None and s["cost_budget_share"] is None
    assert "no budget set" in _text(_page(result), "tokens-budget")
    tokens = _csv(result, "tokens_vs_budget")
    assert {r["budget_tokens"] for r in tokens} == {""}
    monkeypatch.setenv("PROMPTOPS_THRESHOLD__daily_tokens__budget", "420000")
    monkeypatch.setenv("PROMPTOPS_THRESHOLD__daily_cost__budget", "1000")
    result = build_report(lake, DAY, now=NOW)
    assert result.summary["budget_tokens"] == 420_000
    assert result.summary["budget_cost_usd"] == 1000
    assert "420,000" in _text(_page(result), "tokens-budget")


def test_report_from_real_hourly_metrics(tmp_path):
    """Metrics computed by the hourly code from simulated calls, not hand-made tables."""
    lake = Lake(f"file://{tmp_path}")
    platform = Platform(SimConfig.build("include/config/scenarios/quiet.yaml"))
    hour = DAY_START + timedelta(hours=14)
    served = platform.served_with_truth(hour, hour + timedelta(hours=1))
    calls = validate_page([s.record for s in served], hour, hour + timedelta(hours=1)).good
    metrics = compute_hourly_metrics(calls, hour, load_price_table(), 20)
    lake.write_partition(mt.METRICS, hour, metrics)
    result = build_report(lake, DAY, budget_tokens=1e9, budget_cost_usd=1e6, now=NOW)
    overall = {r["metric"]: r["value"] for r in metrics.to_pylist()
               if r["dimension"] == mt.OVERALL}
    s = result.summary
    assert s["hours_present"] == 1 and s["hours_missing"] == 23
    assert s["cost_usd"] == pytest.approx(overall["cost_usd"])
    assert s["total_tokens"] == pytest.approx(overall["total_tokens"])
    assert s["backfill_commands"] == [
        backfill_command(DAY_START, DAY_START + timedelta(hours=13)),
        backfill_command(DAY_START + timedelta(hours=15), DAY_START + timedelta(hours=23))]
    by_hour = [r for r in _csv(result, "cost_by_hour") if r["status"] == "ok"]
    models = [k for k in by_hour[0] if k not in ("hour", "status", "total_usd")]
    assert len(models) >= 3
    assert sum(float(by_hour[0][m]) for m in models) == pytest.approx(overall["cost_usd"])
    assert set(SECTIONS) <= set(_page(result).sections)


def test_html_escapes_what_comes_from_the_data(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    table = hour_table(DAY_START, report_day=True).to_pylist()
    for row in table:
        if row["dimension"] == "team" and row["slice"] == "search":
            row["slice"] = "<script>alert(1)</script>"
    lake.write_partition(mt.METRICS, DAY_START,
                         pa.Table.from_pylist(table, schema=mt.METRICS_SCHEMA))
    result = build_report(lake, DAY, budget_tokens=100_000, budget_cost_usd=1000, now=NOW)
    html = (_folder(result) / "index.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_rebuild_replaces_and_lists_newest_first(report, report_lake):
    before = read_report_file(report_lake, DAY, "summary.json")
    again = build_report(report_lake, DAY, budget_tokens=100_000, budget_cost_usd=1000, now=NOW,
                         run_url="http://airflow.example/dags/promptops_daily/runs/r1")
    assert set(os.listdir(_folder(again))) == set(report.files)
    after = json.loads(read_report_file(report_lake, DAY, "summary.json"))
    assert {k: v for k, v in after.items() if k != "generated_at"} == {
        k: v for k, v in json.loads(before).items() if k != "generated_at"}
    assert list_report_dates(report_lake)[:2] == [DAY, DAY - timedelta(days=1)]
    assert read_report_file(report_lake, DAY, "../../metrics/x.parquet") is None
    assert read_report_file(report_lake, DAY, "nothing.csv") is None


def test_a_bad_day_is_a_clear_error(report_lake):
    with pytest.raises(ReportError, match=re.escape("'2026-13-01': expected YYYY-MM-DD")):
        build_report(report_lake, "2026-13-01", budget_tokens=1, budget_cost_usd=1)
    with pytest.raises(ReportError, match="must be positive"):
        build_report(report_lake, DAY, budget_tokens=0, budget_cost_usd=1)
