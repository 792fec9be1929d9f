"""The daily report counts incidents, not findings, and lists each incident's members."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from promptops.alerts.engine import AlertEngine, Delivery, Notification
from promptops.alerts.store import AlertStore
from promptops.lake.store import Lake
from promptops.reports.cost_report import incidents_table
from tests.alerts.test_incidents import burst, incident_config
from tests.helpers.alerts import finding

DAY = datetime(2026, 11, 20, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def deliver(self, notification: Notification) -> Delivery:
        self.sent.append(notification)
        return Delivery(ok=True, connection_id="slack_alerts")


def test_an_error_burst_and_an_unrelated_alert_are_two_incidents(tmp_path):
    lake = Lake(f"file://{tmp_path / 'lake'}")
    recorder = Recorder()
    engine = AlertEngine(incident_config(), AlertStore(lake, "hourly"), recorder, silences=[])
    region = finding("latency_p95", "warning", dimension="region", slice_="eu-west-1")
    for h in range(7, 12):  # the burst holds 07:00-09:00; the region alert from 10:00
        now = DAY + timedelta(hours=h)
        engine.evaluate(burst() if h < 10 else [region], now, run_id=f"r{h}")
    table = incidents_table(lake, DAY, DAY + timedelta(days=1))
    assert len(table) == 2
    burst_row = table.iloc[0]
    assert burst_row["severity"] == "critical" and burst_row["slice"] == "model=gpt-4o"
    assert burst_row["status"] == "resolved"
    assert burst_row["fired_at"] == DAY + timedelta(hours=7)
    assert burst_row["resolved_at"] == DAY + timedelta(hours=10)
    assert burst_row["rule"] == "error_rate_vs_previous_hour, latency_p95, success_rate"
    assert burst_row["members"].count(";") == 4  # five findings, one incident
    assert "success_rate (app=chat)" in burst_row["members"]
    other = table.iloc[1]
    assert (other["slice"], other["status"]) == ("region=eu-west-1", "firing")
    assert other["incident_id"] != burst_row["incident_id"]
