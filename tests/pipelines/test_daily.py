"""Daily housekeeping: completeness names missing hours with the command to fill them;
retention deletes only what is older than each dataset's age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa

from promptops.lake.store import Lake
from promptops.pipelines.daily import RetentionConfig, apply_retention
from promptops.reports.completeness import day_completeness

DAY = datetime(2026, 11, 20, tzinfo=UTC)
TINY = pa.table({"x": [1]})


def test_missing_hours_are_named_with_backfill_commands(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    for i in range(24):
        h = DAY + timedelta(hours=i)
        if i not in (3, 4, 17):
            lake.write_partition("calls", h, TINY)
        if i != 9:
            lake.write_partition("metrics", h, TINY)
    lake.write_partition("calls", DAY + timedelta(days=1), TINY)  # next day: not counted
    result = day_completeness(lake, DAY + timedelta(hours=5))
    assert not result.complete
    assert [h[11:13] for h in result.missing["calls"]] == ["03", "04", "17"]
    assert [h[11:13] for h in result.missing["metrics"]] == ["09"]
    # Scheduled runs have the hour's start as logical date; both ends are inclusive.
    assert result.backfill_commands == [
        "airflow backfill create --dag-id promptops_hourly --from-date 2026-11-20T03:00:00+00:00 "
        "--to-date 2026-11-20T04:00:00+00:00 --reprocess-behavior completed",
        "airflow backfill create --dag-id promptops_hourly --from-date 2026-11-20T09:00:00+00:00 "
        "--to-date 2026-11-20T09:00:00+00:00 --reprocess-behavior completed",
        "airflow backfill create --dag-id promptops_hourly --from-date 2026-11-20T17:00:00+00:00 "
        "--to-date 2026-11-20T17:00:00+00:00 --reprocess-behavior completed",
    ]
    assert "calls: 3 missing (03:00, 04:00, 17:00)" in result.describe()


def test_a_complete_day(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    for i in range(24):
        for ds in ("calls", "metrics"):
            lake.write_partition(ds, DAY + timedelta(hours=i), TINY)
    result = day_completeness(lake, DAY)
    assert result.complete and result.backfill_commands == []
    assert result.as_dict()["complete"] is True


def test_retention_keeps_each_dataset_for_its_age(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    for days_back in (1, 10, 40, 500):
        for ds in ("calls", "metrics"):
            lake.write_partition(ds, DAY - timedelta(days=days_back), TINY)
    config = RetentionConfig(calls_days=35, metrics_days=400)
    deleted = apply_retention(lake, DAY + timedelta(hours=7), config)
    assert deleted["calls"] == 2 and deleted["metrics"] == 1
    assert [(DAY - h).days for h in lake.list_partitions("calls")] == [10, 1]
    assert [(DAY - h).days for h in lake.list_partitions("metrics")] == [40, 10, 1]
    # Running it again deletes nothing more; an age of 0 keeps forever.
    assert apply_retention(lake, DAY, config)["calls"] == 0
    assert "calls" not in apply_retention(lake, DAY, RetentionConfig(calls_days=0))


def test_retention_deletes_old_reports(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    for days_back in (3, 500):
        folder = tmp_path / "reports" / f"date={DAY - timedelta(days=days_back):%Y-%m-%d}"
        folder.mkdir(parents=True)
        (folder / "index.html").write_text("<html></html>")
        (folder / "cost_by_hour.png").write_bytes(b"png")
    deleted = apply_retention(lake, DAY, RetentionConfig(reports_days=400))
    assert deleted["reports"] == 1
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        f"date={DAY - timedelta(days=3):%Y-%m-%d}"]


def test_retention_deletes_old_caller_profiles(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    for days_back in (1, 29, 31):
        lake.write_record("caller_profiles", DAY - timedelta(days=days_back), "profile", TINY)
    deleted = apply_retention(lake, DAY, RetentionConfig())
    assert deleted["caller_profiles"] == 1
    assert len(lake.list_partitions("caller_profiles")) == 2
