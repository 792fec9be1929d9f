"""The lake's partition writes: atomic, replacing, and safe against a killed writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptops.lake import PART_NAME, Lake, hours_between

HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)


def table(n: int, offset: int = 0) -> pa.Table:
    return pa.table({"call_id": [f"c{i}" for i in range(offset, offset + n)],
                     "value": list(range(offset, offset + n))})


def readable_files(directory) -> list[str]:
    """Files a Parquet reader would pick up (hidden files are skipped by convention)."""
    return sorted(n for n in os.listdir(directory) if not n.startswith((".", "_")))


def test_partition_layout_and_round_trip(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    info = lake.write_partition("calls", HOUR, table(5))
    assert info.rows == 5
    assert info.uri.endswith(f"calls/date=2026-11-20/hour=13/{PART_NAME}")
    assert (tmp_path / "calls/date=2026-11-20/hour=13" / PART_NAME).is_file()
    assert lake.read_partition("calls", HOUR).column("value").to_pylist() == [0, 1, 2, 3, 4]
    assert lake.list_partitions("calls") == [HOUR]
    assert lake.read_partition("calls", datetime(2026, 11, 20, 14, tzinfo=UTC)) is None


def test_rewrite_replaces_never_appends(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    lake.write_partition("calls", HOUR, table(5))
    lake.write_partition("calls", HOUR, table(5))
    assert lake.read_partition("calls", HOUR).num_rows == 5
    lake.write_partition("calls", HOUR, table(3, offset=10))
    assert lake.read_partition("calls", HOUR).column("call_id").to_pylist() == ["c10", "c11", "c12"]
    assert readable_files(tmp_path / "calls/date=2026-11-20/hour=13") == [PART_NAME]


def test_failed_write_keeps_the_old_partition(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    lake.write_partition("calls", HOUR, table(4))
    with pytest.raises(RuntimeError), lake.partition_writer("calls", HOUR, table(1).schema) as w:
        w.write(table(100))
        raise RuntimeError("the API died mid-hour")
    assert lake.read_partition("calls", HOUR).num_rows == 4
    assert os.listdir(tmp_path / "calls/date=2026-11-20/hour=13") == [PART_NAME]


def test_read_range_concatenates_existing_hours(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    hours = hours_between(HOUR, datetime(2026, 11, 20, 16, tzinfo=UTC))
    assert len(hours) == 3
    lake.write_partition("calls", hours[0], table(2))
    lake.write_partition("calls", hours[2], table(3, offset=5))
    got = lake.read_range("calls", hours[0], datetime(2026, 11, 20, 16, tzinfo=UTC))
    assert got.num_rows == 5


WRITER = textwrap.dedent("""
    import sys, time
    from datetime import UTC, datetime
    import pyarrow as pa
    from promptops.lake import Lake
    lake = Lake(sys.argv[1])
    hour = datetime(2026, 11, 20, 13, tzinfo=UTC)
    batch = pa.table({"call_id": [f"n{i}" for i in range(50_000)], "value": list(range(50_000))})
    with lake.partition_writer("calls", hour, batch.schema) as w:
        for _ in range(1000):
            w.write(batch)
            print("wrote", flush=True)
            time.sleep(0.05)
""")


def test_killed_writer_leaves_old_partition_and_rerun_is_exact(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    lake.write_partition("calls", HOUR, table(7))
    part_dir = tmp_path / "calls/date=2026-11-20/hour=13"

    proc = subprocess.Popen([sys.executable, "-c", WRITER, f"file://{tmp_path}"],
                            stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it get well into the write
        assert proc.stdout.readline().startswith("wrote")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    # Mid-write kill: readers still see exactly the old partition, every visible file reads.
    assert readable_files(part_dir) == [PART_NAME]
    assert pq.read_table(part_dir / PART_NAME).num_rows == 7
    assert any(n.endswith(".tmp") for n in os.listdir(part_dir)), "the killed writer's debris"

    # Rerun: exactly the expected rows, and the dead writer's temp file is swept away.
    lake.write_partition("calls", HOUR, table(9, offset=100))
    assert os.listdir(part_dir) == [PART_NAME]
    got = lake.read_partition("calls", HOUR)
    assert got.column("call_id").to_pylist() == [f"c{i}" for i in range(100, 109)]


def test_live_writers_temp_files_are_not_swept(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    part_dir = tmp_path / "calls/date=2026-11-20/hour=13"
    with lake.partition_writer("calls", HOUR, table(1).schema) as outer:
        outer.write(table(2))
        # A second writer of the same partition (e.g. the next run re-reading this hour).
        lake.write_partition("calls", HOUR, table(3))
        assert any(n.endswith(".tmp") for n in os.listdir(part_dir))
        time.sleep(0.01)
    assert lake.read_partition("calls", HOUR).num_rows == 2
