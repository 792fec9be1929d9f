"""Late re-reads only add or correct: a re-read that finds markedly fewer rows than the hour's
partition holds (the platform lost the hour, a partial outage, a lagging store) keeps the
partition and its quarantine, and says so; an explicit ``replace`` overrides."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from promptops.contracts.records import CALLS_SCHEMA
from promptops.ingest.pull import CALLS, QUARANTINE, ingest_hour, ingest_interval, replace_requested
from promptops.ingest.windows import STAGING_CALLS, merge_windows, plan_windows, pull_window
from promptops.lake.store import Lake
from promptops.platform.client import PlatformClient
from promptops.settings import get_settings
from promptops.simulator import SimulatorProcess

HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)
END = HOUR + timedelta(hours=1)
#: Before the hour began: the platform serves nothing of it, as if it had lost the hour.
GONE = HOUR - timedelta(hours=1)
#: A third of the way into the hour: the platform serves about a third of it.
PARTIAL = HOUR + timedelta(minutes=20)


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess("--calls-per-hour", "3000", "--malformed-rate", "0.01",
                          "--duplicate-rate", "0.01", api_key="reread-key", seed=5) as proc:
        yield proc


@pytest.fixture
def clock(sim):
    """Set the simulator's clock for one test; real time again afterwards."""
    yield sim.set_clock
    sim.set_clock(None)


@pytest.fixture
def min_share(monkeypatch):
    """Set PROMPTOPS_REREAD_MIN_SHARE for one test."""
    def set_share(value: str) -> None:
        monkeypatch.setenv("PROMPTOPS_REREAD_MIN_SHARE", value)
        get_settings.cache_clear()
    yield set_share
    monkeypatch.delenv("PROMPTOPS_REREAD_MIN_SHARE", raising=False)
    get_settings.cache_clear()


def snapshot(lake: Lake) -> tuple[list[str], list[str]]:
    """The hour's call ids and its quarantined raw records."""
    calls, quarantine = lake.read_partition(CALLS, HOUR), lake.read_partition(QUARANTINE, HOUR)
    return (calls.column("call_id").to_pylist(),
            sorted(quarantine.column("raw").to_pylist()) if quarantine is not None else [])


def full_hour(sim, lake: Lake) -> tuple[list[str], list[str]]:
    with PlatformClient(sim.url, sim.api_key) as client:
        first = ingest_hour(client, lake, HOUR, run_id="first")
    assert not first.kept_existing and first.existing_rows is None
    before = snapshot(lake)
    assert len(before[0]) == first.written > 2500 and before[1], "a full hour with rejects"
    return before


def test_an_empty_reread_keeps_the_partition_and_its_quarantine(sim, clock, tmp_path, caplog):
    lake = Lake(f"file://{tmp_path}")
    before = full_hour(sim, lake)

    clock(GONE)
    with caplog.at_level(logging.WARNING, logger="promptops.ingest.pull"), \
            PlatformClient(sim.url, sim.api_key) as client:
        again = ingest_hour(client, lake, HOUR, run_id="reread")

    assert snapshot(lake) == before
    assert again.kept_existing
    assert (again.existing_rows, again.reread_rows, again.written) == (len(before[0]), 0, 0)
    assert again.calls_uri == str(lake.partition_file(CALLS, HOUR))
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert f"holds {len(before[0])} rows" in warning[0] and "found 0" in warning[0]
    assert '{"replace": true}' in warning[0]
    assert "reread-key" not in caplog.text


def test_a_partial_reread_is_kept_unless_the_threshold_allows_it(sim, clock, min_share,
                                                                  tmp_path):
    lake = Lake(f"file://{tmp_path}")
    before = full_hour(sim, lake)

    clock(PARTIAL)  # a lagging store: about a third of the hour
    with PlatformClient(sim.url, sim.api_key) as client:
        kept = ingest_hour(client, lake, HOUR, run_id="lagging")
        assert kept.kept_existing and 0 < kept.reread_rows < 0.5 * kept.existing_rows
        assert snapshot(lake) == before

        min_share("0.2")  # the operator accepts re-reads down to a fifth of the partition
        taken = ingest_hour(client, lake, HOUR, run_id="lagging")
    assert not taken.kept_existing
    assert taken.written == taken.reread_rows == kept.reread_rows
    assert len(snapshot(lake)[0]) == taken.written


def test_a_fuller_reread_replaces_the_partition(sim, clock, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    clock(PARTIAL)  # the hour's own run saw part of it
    with PlatformClient(sim.url, sim.api_key) as client:
        first = ingest_hour(client, lake, HOUR, run_id="own")
        clock(None)  # the next run re-reads it whole
        summary = ingest_interval(client, lake, END, END + timedelta(hours=1), run_id="next",
                                  lateness_hours=1, max_reject_share=0.5)
    reread = summary.hours[0]
    assert not reread.kept_existing and reread.existing_rows == first.written
    assert reread.written > 2 * first.written
    assert summary.as_dict()["kept_existing"] == []


def test_replace_lets_an_empty_reread_through(sim, clock, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    before = full_hour(sim, lake)
    clock(GONE)
    with PlatformClient(sim.url, sim.api_key) as client:
        summary = ingest_interval(client, lake, HOUR, END, run_id="backfill", lateness_hours=0,
                                  replace=True)
    hour = summary.hours[0]
    assert not hour.kept_existing and (hour.existing_rows, hour.written) == (len(before[0]), 0)
    assert lake.read_partition(CALLS, HOUR).num_rows == 0
    assert lake.read_partition(QUARANTINE, HOUR) is None


def test_the_summary_names_the_kept_hours(sim, clock, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    full_hour(sim, lake)
    clock(GONE)
    with PlatformClient(sim.url, sim.api_key) as client:
        summary = ingest_interval(client, lake, HOUR, END, run_id="r", lateness_hours=0)
    out = summary.as_dict()
    assert out["kept_existing"] == [HOUR.isoformat()]
    assert out["hours"][0]["kept_existing"] and out["hours"][0]["existing_rows"] > 2500


def test_split_windows_do_not_wipe_a_good_hour(sim, clock, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    before = full_hour(sim, lake)
    windows = plan_windows(HOUR, END, lateness_hours=0, window_minutes=15)

    clock(GONE)
    with PlatformClient(sim.url, sim.api_key) as client:
        pulled = [pull_window(client, lake, w, run_id="split") for w in windows]
    kept = merge_windows(lake, pulled, run_id="split").hours[0]
    assert kept.kept_existing and (kept.existing_rows, kept.reread_rows) == (len(before[0]), 0)
    assert snapshot(lake) == before
    assert lake.read_records(STAGING_CALLS, HOUR, END) is None, "staging cleaned up"

    clock(PARTIAL)
    with PlatformClient(sim.url, sim.api_key) as client:
        pulled = [pull_window(client, lake, w, run_id="split") for w in windows]
    kept = merge_windows(lake, pulled, run_id="split").hours[0]
    assert kept.kept_existing and 0 < kept.reread_rows < kept.existing_rows
    assert snapshot(lake) == before

    # The run conf's replace reaches the merge: the partial hour replaces the partition.
    with PlatformClient(sim.url, sim.api_key) as client:
        pulled = [pull_window(client, lake, w, run_id="split") for w in windows]
    taken = merge_windows(lake, pulled, run_id="split", replace=True).hours[0]
    assert not taken.kept_existing and taken.written == kept.reread_rows
    assert len(snapshot(lake)[0]) == taken.written


def test_whole_hour_windows_pass_replace_through(sim, clock, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    full_hour(sim, lake)
    (window,) = plan_windows(HOUR, END, lateness_hours=0, window_minutes=60)
    clock(GONE)
    with PlatformClient(sim.url, sim.api_key) as client:
        kept = pull_window(client, lake, window, run_id="w")
        taken = pull_window(client, lake, window, run_id="w", replace=True)
    assert merge_windows(lake, [kept], run_id="w").hours[0].kept_existing
    assert not merge_windows(lake, [taken], run_id="w").hours[0].kept_existing
    assert lake.read_partition(CALLS, HOUR).num_rows == 0


def test_replace_is_read_from_the_run_conf():
    assert replace_requested(None) is False
    assert replace_requested({}) is False
    assert replace_requested({"replace": True}) is True
    assert replace_requested({"replace": False, "other": 1}) is False
    with pytest.raises(ValueError, match=r'"replace" is \'yes\'.*true or false'):
        replace_requested({"replace": "yes"})


def test_an_empty_reread_keeps_the_quarantine_of_an_hour_of_rejects_only(sim, clock, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    full_hour(sim, lake)
    # An hour whose every record broke the contract: no good rows, all in quarantine.
    lake.write_partition(CALLS, HOUR, CALLS_SCHEMA.empty_table())
    quarantined = snapshot(lake)[1]

    clock(GONE)
    with PlatformClient(sim.url, sim.api_key) as client:
        again = ingest_hour(client, lake, HOUR, run_id="reread")
    assert snapshot(lake) == ([], quarantined)
    assert again.kept_existing and (again.existing_rows, again.reread_rows) == (0, 0)
