"""The daily DAG end to end under dag.test(): a lake with three simulated days (one hour of
the report day missing), then completeness, baselines, the root-cause model, the caller
profiles, the cost report (delivered to a real Slack sink) and retention. And a day when
ingest failed and the summary could not be sent: the report says the day is empty, retention
still runs, the run fails."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from promptops.contracts.records import validate_page
from promptops.lake.store import Lake
from promptops.pipelines.hourly import analyse_hour
from promptops.simulator import Platform, SimConfig, SlackSinkProcess
from tests.helpers import ROOT

FIRST_DAY = datetime(2026, 11, 16, tzinfo=UTC)
REPORT_DAY = FIRST_DAY + timedelta(days=2)
MISSING = REPORT_DAY + timedelta(hours=5)


def _fill(lake: Lake) -> None:
    platform = Platform(SimConfig.build(None, seed=4, calls_per_hour=400, malformed_rate=0.0,
                                        duplicate_rate=0.0, late_rate=0.0))
    hour = FIRST_DAY
    while hour < REPORT_DAY + timedelta(days=1):
        if hour != MISSING:
            end = hour + timedelta(hours=1)
            served = platform.served_with_truth(hour, end, now=end + timedelta(days=1))
            lake.write_partition("calls", hour, validate_page([s.record for s in served],
                                                              hour, end).good)
            analyse_hour(lake, hour)
        hour += timedelta(hours=1)
    # A partition far older than the raw-calls retention.
    lake.write_partition("calls", FIRST_DAY - timedelta(days=90),
                         lake.read_partition("calls", FIRST_DAY))


def _run_daily(lake_uri: str, monkeypatch, *, no_retries: tuple[str, ...] = ()):
    from airflow.dag_processing.dagbag import DagBag

    from promptops.settings import get_settings

    monkeypatch.setenv("PROMPTOPS_LAKE_URI", lake_uri)
    get_settings.cache_clear()
    try:
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["promptops_daily"]
        for task_id in no_retries:  # fail now rather than after minutes of retry delay
            dag.task_dict[task_id].retries = 0
        return dag.test(logical_date=REPORT_DAY + timedelta(days=1, minutes=30))
    finally:
        get_settings.cache_clear()


@pytest.mark.slow
def test_daily_dag_under_dag_test(airflow_db, tmp_path, monkeypatch):
    lake_uri = f"file://{tmp_path / 'lake'}"
    lake = Lake(lake_uri)
    _fill(lake)
    with SlackSinkProcess() as sink:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
            {"conn_type": "slackwebhook", "password": sink.url + "/services/T/B/daily"}))
        run = _run_daily(lake_uri, monkeypatch)
        messages = sink.messages()

    assert run.state == "success"
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert all(ti.state == "success" for ti in tis.values()), \
        {k: ti.state for k, ti in tis.items()}
    assert run.data_interval_start.date() == REPORT_DAY.date()

    # Completeness named the missing hour; the report marks it; Slack got the summary.
    report_dir = tmp_path / "lake" / "reports" / f"date={REPORT_DAY:%Y-%m-%d}"
    html = (report_dir / "index.html").read_text()
    assert "05:00" in html and "backfill" in html
    assert len(messages) == 1 and f"{REPORT_DAY:%Y-%m-%d}" in json.dumps(messages[0]["body"])
    # The link opens the report of the day: the date, not the run's timestamp.
    button = next(b for b in messages[0]["body"]["blocks"] if b["type"] == "actions")
    assert button["elements"][0]["url"].endswith(f"/promptops-reports/{REPORT_DAY:%Y-%m-%d}/")
    summary = json.loads((report_dir / "summary.json").read_text())
    assert [h[11:16] for h in summary["missing_hours"]] == ["05:00"]

    # Bands for the next day exist, and a root-cause model was trained on the window.
    from promptops.detection.anomaly_model import list_versions
    from promptops.detection.baselines import read_bands

    bands = read_bands(lake, REPORT_DAY + timedelta(days=1, hours=3))
    assert bands is not None and bands.num_rows > 0
    assert [v.version for v in list_versions(lake)] == [f"{REPORT_DAY:%Y-%m-%d}"]

    # Tomorrow's caller profile is written (empty: no health evaluations in this lake).
    from promptops.detection.caller_history import read_caller_profile

    profile = read_caller_profile(lake, REPORT_DAY + timedelta(days=1, hours=2))
    assert profile is not None and profile.built_for == REPORT_DAY + timedelta(days=1)

    # Retention removed the 90-day-old raw partition and nothing recent.
    assert not lake.has_partition("calls", FIRST_DAY - timedelta(days=90))
    assert lake.has_partition("calls", FIRST_DAY)


@pytest.mark.slow
def test_an_empty_day_and_a_failed_summary_still_run_retention(airflow_db, tmp_path,
                                                               monkeypatch, capfd):
    """Ingest wrote nothing for days, and the Slack connection is missing: the report of
    the empty day is written, its delivery fails, retention runs anyway, and the run ends
    failed, naming the step that failed."""
    lake_uri = f"file://{tmp_path / 'lake'}"
    lake = Lake(lake_uri)
    old = REPORT_DAY - timedelta(days=90)
    lake.write_partition("calls", old, pa.table({"call_id": ["c1"]}))
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS", raising=False)

    run = _run_daily(lake_uri, monkeypatch, no_retries=("cost_report",))

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"check_completeness": "success", "refit_baselines": "success",
                      "retrain_root_cause_model": "success", "caller_profiles": "success",
                      "cost_report": "failed", "refresh_price_map": "success",
                      "apply_retention": "success", "flag_failed_steps": "failed"}
    assert run.state == "failed"
    # The run's failure names the step, for the UI and the failure notice.
    assert "step(s) failed: cost_report (their logs say why)" in capfd.readouterr().out
    assert not lake.has_partition("calls", old)
    report_dir = tmp_path / "lake" / "reports" / f"date={REPORT_DAY:%Y-%m-%d}"
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["hours_present"] == 0 and len(summary["missing_hours"]) == 24
    assert "No data for this day" in (report_dir / "index.html").read_text()
