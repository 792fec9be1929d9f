"""The hourly pull split into windows: the partitions equal the whole-hour pull's."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow.compute as pc
import pytest

from promptops.ingest.pull import QUARANTINE, ingest_interval
from promptops.ingest.windows import (
    STAGING_CALLS,
    merge_windows,
    plan_windows,
    pull_window,
)
from promptops.lake.store import Lake
from promptops.platform.client import PlatformClient
from promptops.simulator import SimulatorProcess

HOUR = datetime(2026, 11, 20, 10, tzinfo=UTC)
END = datetime(2026, 11, 20, 11, tzinfo=UTC)


def test_plan_windows_covers_the_interval_and_its_late_hours():
    windows = plan_windows(HOUR, END, lateness_hours=1, window_minutes=15)
    assert len(windows) == 8
    assert windows[0]["start"] == "2026-11-20T09:00:00+00:00"
    assert windows[-1]["end"] == "2026-11-20T11:00:00+00:00"
    assert all(a["end"] == b["start"] for a, b in zip(windows, windows[1:], strict=False))
    assert {w["parts"] for w in windows} == {4}
    whole = plan_windows(HOUR, END, lateness_hours=0, window_minutes=60)
    assert [(w["start"], w["parts"]) for w in whole] == [("2026-11-20T10:00:00+00:00", 1)]
    with pytest.raises(ValueError, match="must divide an hour"):
        plan_windows(HOUR, END, lateness_hours=0, window_minutes=7)


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess("--calls-per-hour", "4000", "--malformed-rate", "0.01",
                          "--duplicate-rate", "0.01", api_key="win-key") as proc:
        yield proc


def test_split_pull_writes_the_same_partitions_as_the_whole_hour(sim, tmp_path):
    whole, split = Lake(f"file://{tmp_path / 'whole'}"), Lake(f"file://{tmp_path / 'split'}")
    with PlatformClient(sim.url, sim.api_key) as client:
        expected = ingest_interval(client, whole, HOUR, END, run_id="r", lateness_hours=0,
                                   max_reject_share=0.5)
        windows = plan_windows(HOUR, END, lateness_hours=0, window_minutes=15)
        pulled = [pull_window(client, split, w, run_id="r") for w in reversed(windows)]
        # A retried window replaces its staging file instead of adding to it.
        pulled[0] = pull_window(client, split, windows[-1], run_id="r")
    assert split.read_records(STAGING_CALLS, HOUR, END) is not None
    got = merge_windows(split, pulled, run_id="r", max_reject_share=0.5)

    a, b = whole.read_partition("calls", HOUR), split.read_partition("calls", HOUR)
    assert b.num_rows == a.num_rows > 3000
    assert b.sort_by("call_id").equals(a.sort_by("call_id"))
    assert got.hours[0].written == expected.hours[0].written
    assert got.hours[0].duplicates == expected.hours[0].duplicates > 0
    assert got.rejected == expected.rejected and sum(got.rejected.values()) > 0
    qa, qb = whole.read_partition(QUARANTINE, HOUR), split.read_partition(QUARANTINE, HOUR)
    assert sorted(qb.column("raw").to_pylist()) == sorted(qa.column("raw").to_pylist())
    assert pc.all(pc.equal(qb.column("run_id"), "r")).as_py()
    # The staging files are gone once the hour is written.
    assert split.read_records(STAGING_CALLS, HOUR, END) is None


def test_merge_refuses_an_hour_with_a_missing_window(sim, tmp_path):
    lake = Lake(f"file://{tmp_path / 'lake'}")
    windows = plan_windows(HOUR, END, lateness_hours=0, window_minutes=30)
    with PlatformClient(sim.url, sim.api_key) as client:
        pulled = [pull_window(client, lake, windows[0], run_id="r")]
    with pytest.raises(RuntimeError, match=r"windows \[1\] of 2 were not pulled"):
        merge_windows(lake, pulled, run_id="r")
    assert lake.read_partition("calls", HOUR) is None
