"""The daily report's budgets section: per budget and scope, spent, the projection with its
interval, the thresholds crossed this period and the heal they ask for; read only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from promptops.detection.budgets.config import BudgetsConfig
from promptops.detection.budgets.evaluate import evaluate_budgets
from promptops.reports.cost_report import budgets_section, read_report_day
from tests.detection.budgets.test_budget_evaluate import spend_hour
from tests.helpers.reports import DAY, NOW, build_fixture_lake


def test_the_report_lists_each_budget_with_its_projection_and_crossings(tmp_path):
    lake = build_fixture_lake(f"file://{tmp_path / 'lake'}")
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    for i in range(24):
        spend_hour(lake, start + timedelta(hours=i), {"u1": 0.5, "u2": 0.1})
    config = BudgetsConfig.model_validate({"budgets": [
        {"name": "users-daily", "scope": {"user": ["u1", "u2"]}, "metric": "cost",
         "amount": 10, "period": "day", "timezone": "UTC",
         "thresholds": [{"at": 0.8, "severity": "warning"},
                        {"at": 1.0, "severity": "critical", "heal": "rate_limit_user"}]},
        {"name": "all-soft", "scope": "overall", "metric": "tokens", "amount": 1e9,
         "period": "month", "soft": True, "thresholds": [{"at": 0.5, "severity": "info"}]}]})
    section = budgets_section(read_report_day(lake, DAY, now=NOW), config)
    table = section.tables["budgets"]
    u1 = table[table["scope"] == "user=u1"].iloc[0]
    assert u1["spent"] == 12.0 and u1["crossed"] == "80%, 100%"
    assert u1["heal"] == "rate_limit_user" and u1["used"] == 1.2
    u2 = table[table["scope"] == "user=u2"].iloc[0]
    assert round(u2["spent"], 6) == 2.4 and u2["crossed"] == "" and u2["heal"] == ""
    assert "all-soft (soft)" in table.index
    assert section.summary["budgets"] == 2 and section.summary["budgets_crossed"] == 1
    assert u1["actions"] == ""  # no heal ran yet
    # The heal path rate-limits u1 for the 100% crossing: the report says what it did.
    from promptops.detection.budgets.evaluate import crossing_fingerprints
    from promptops.heal.audit import AuditRecord, write_audit

    row = next(r for r in evaluate_budgets(lake, config, start + timedelta(days=1),
                                           claim=False).rows if r.value == "u1")
    fingerprints = crossing_fingerprints(row, config.get("users-daily"))
    assert len(fingerprints) == 2
    write_audit(lake, AuditRecord(idempotency_key="heal-u1", requested_at=start + timedelta(
        hours=10), action="rate_limit", target="u1", decision="approved", dry_run=False,
        alert_fingerprint=fingerprints[1], platform_status="succeeded"))
    again = budgets_section(read_report_day(lake, DAY, now=NOW), config).tables["budgets"]
    assert again[again["scope"] == "user=u1"].iloc[0]["actions"] == \
        "rate_limit u1: approved, succeeded"
    # Read only: the hourly run still raises these crossings when it sees them, and their
    # fingerprints are the ones the report looks up in the audit.
    raised = evaluate_budgets(lake, config, start + timedelta(days=1)).findings
    assert [f.labels["threshold"] for f in raised] == ["80%", "100%"]
    assert [f.fingerprint for f in raised] == fingerprints
