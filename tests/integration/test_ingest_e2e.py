"""End to end against a real simulator process: ingest, the partition's exact content, reruns,
late records, the reject-share failure, and the hourly DAG under dag.test()."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from promptops.errors import RejectShareExceeded
from promptops.ingest.pull import ingest_hour, ingest_interval
from promptops.lake.store import Lake
from promptops.platform.client import PlatformClient
from promptops.simulator import Platform, SimConfig, SimulatorProcess
from tests.helpers import ROOT

SEED = 21
FLAGS = dict(calls_per_hour=3000, malformed_rate=0.01, duplicate_rate=0.01, late_rate=0.02)
HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)
CLI = ("--calls-per-hour", "3000", "--malformed-rate", "0.01", "--duplicate-rate", "0.01",
       "--late-rate", "0.02")


def expected_ids(hour: datetime, now: datetime | None = None) -> list[str]:
    """What the partition must hold: the simulator's served records minus rejects and
    second copies, from its own ground truth (computed in-process with the same seed)."""
    platform = Platform(SimConfig.build(None, seed=SEED, **FLAGS))
    served = platform.served_with_truth(hour, hour + timedelta(hours=1), now=now)
    assert any(s.reject_reason for s in served) and any(s.is_duplicate for s in served)
    return [s.record["call_id"] for s in served if not s.reject_reason and not s.is_duplicate]


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess(*CLI, api_key="e2e-key", seed=SEED) as proc:
        yield proc


def test_partition_holds_exactly_the_hours_good_records(sim, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    with PlatformClient(sim.url, sim.api_key) as client:
        result = ingest_hour(client, lake, HOUR, run_id="r1", page_size=500)
    want = expected_ids(HOUR)
    got = lake.read_partition("calls", HOUR).column("call_id").to_pylist()
    assert got == want
    assert result.written == len(want) and result.duplicates > 0 and result.rejected_total > 0
    quarantine = lake.read_partition("quarantine", HOUR)
    assert quarantine.num_rows == result.rejected_total
    assert set(quarantine.column("run_id").to_pylist()) == {"r1"}

    # A rerun of the same hour: the same rows, no duplicates, quarantine replaced not grown.
    with PlatformClient(sim.url, sim.api_key) as client:
        ingest_hour(client, lake, HOUR, run_id="r2", page_size=500)
    assert lake.read_partition("calls", HOUR).column("call_id").to_pylist() == want
    assert lake.read_partition("quarantine", HOUR).num_rows == quarantine.num_rows


def test_late_records_reach_their_hour_on_the_next_run(sim, tmp_path):
    lake = Lake(f"file://{tmp_path}")
    hour = HOUR + timedelta(hours=2)
    early = hour + timedelta(hours=1, minutes=1)
    try:
        sim.set_clock(early)  # the hour's own run: late records not delivered yet
        with PlatformClient(sim.url, sim.api_key) as client:
            ingest_interval(client, lake, hour, hour + timedelta(hours=1), lateness_hours=0)
        first = lake.read_partition("calls", hour).column("call_id").to_pylist()
        assert first == expected_ids(hour, now=early)

        later = hour + timedelta(hours=2, minutes=1)
        sim.set_clock(later)  # the next hour's run re-reads this hour
        with PlatformClient(sim.url, sim.api_key) as client:
            summary = ingest_interval(client, lake, hour + timedelta(hours=1),
                                      hour + timedelta(hours=2), lateness_hours=1)
        assert [h["hour"] for h in summary.as_dict()["hours"]] == [
            hour.isoformat(), (hour + timedelta(hours=1)).isoformat()]
        second = lake.read_partition("calls", hour).column("call_id").to_pylist()
        assert second == expected_ids(hour, now=later)
        assert len(second) > len(first), "late records arrived"
    finally:
        sim.set_clock(None)


def test_too_many_rejects_fail_after_writing_everything(tmp_path):
    with SimulatorProcess("--calls-per-hour", "800", "--malformed-rate", "0.2",
                          api_key="e2e-key", seed=3) as sim, \
            PlatformClient(sim.url, sim.api_key) as client:
        lake = Lake(f"file://{tmp_path}")
        with pytest.raises(RejectShareExceeded) as err:
            ingest_interval(client, lake, HOUR, HOUR + timedelta(hours=1), lateness_hours=0,
                            max_reject_share=0.05)
    message = str(err.value)
    assert "limit is 5.0%" in message and "quarantine/date=2026-11-20/hour=13" in message
    assert "e2e-key" not in message
    assert lake.read_partition("calls", HOUR).num_rows > 0
    assert lake.read_partition("quarantine", HOUR).num_rows > 0


@pytest.mark.slow
def test_hourly_dag_under_dag_test(sim, airflow_db, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
        {"conn_type": "http", "host": sim.url, "password": sim.api_key}))
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags[
        "promptops_hourly"]
    run = dag.test(logical_date=HOUR)
    assert run.state == "success"
    # A manual run's interval is the complete hour before its date.
    start = run.data_interval_start
    assert run.data_interval_end - start == timedelta(hours=1)

    lake = Lake()  # PROMPTOPS_LAKE_URI from conftest
    assert lake.read_partition("calls", start).column("call_id").to_pylist() == \
        expected_ids(start)
    # The run also re-read the hour before (late records).
    assert lake.has_partition("calls", start - timedelta(hours=1))
