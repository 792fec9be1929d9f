"""The lake's partition writes: atomic, replacing, and safe against a killed writer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptops.lake.store import PART_NAME, Lake
from promptops.timeutil import hours_between

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
    from promptops.lake.store import Lake
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


def test_partition_rows_come_from_the_parquet_footer(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    assert lake.partition_rows("calls", HOUR) is None
    lake.write_partition("calls", HOUR, table(5))
    assert lake.partition_rows("calls", HOUR) == 5
    lake.write_partition("calls", HOUR, table(0))
    assert lake.partition_rows("calls", HOUR) == 0


def test_a_discarded_write_leaves_the_old_partition(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    lake.write_partition("calls", HOUR, table(4))
    with lake.partition_writer("calls", HOUR, table(1).schema) as w:
        w.write(table(1, offset=50))
        w.discard()
    assert w.info is None
    assert lake.read_partition("calls", HOUR).column("call_id").to_pylist() == \
        ["c0", "c1", "c2", "c3"]
    assert os.listdir(tmp_path / "calls/date=2026-11-20/hour=13") == [PART_NAME]


@pytest.fixture
def live_pid():
    """The PID of a live process that writes nothing: what a dead writer's PID can become."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_temp_file_whose_pid_now_belongs_to_another_process_is_swept(tmp_path, live_pid):
    lake = Lake(f"file://{tmp_path}")
    lake.write_partition("calls", HOUR, table(2))
    part_dir = tmp_path / "calls/date=2026-11-20/hour=13"
    # Named as this host's writer with that PID: the writer died and the PID was reused.
    debris = part_dir / f".{PART_NAME}.{socket.gethostname()}.{live_pid}.{'a' * 32}.tmp"
    debris.write_bytes(b"PAR1 half a file")

    lake.write_partition("calls", HOUR, table(3))
    assert os.listdir(part_dir) == [PART_NAME]
    assert lake.read_partition("calls", HOUR).num_rows == 3


def test_a_killed_writers_temp_file_goes_with_the_next_rewrite_despite_pid_reuse(tmp_path,
                                                                                 live_pid):
    lake = Lake(f"file://{tmp_path}")
    lake.write_partition("calls", HOUR, table(7))
    part_dir = tmp_path / "calls/date=2026-11-20/hour=13"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, f"file://{tmp_path}"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("wrote")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (debris,) = [n for n in os.listdir(part_dir) if n.endswith(".tmp")]
    # The kernel hands the dead writer's PID to another process.
    reused = debris.replace(f".{proc.pid}.", f".{live_pid}.")
    os.rename(part_dir / debris, part_dir / reused)

    lake.write_partition("calls", HOUR, table(9, offset=100))
    assert os.listdir(part_dir) == [PART_NAME]
    assert lake.read_partition("calls", HOUR).num_rows == 9


STEPPED_WRITER = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime
    import pyarrow as pa
    from promptops.lake.store import Lake
    lake = Lake(sys.argv[1])
    hour = datetime(2026, 11, 20, 13, tzinfo=UTC)
    batch = pa.table({"call_id": [f"w{i}" for i in range(1000)], "value": list(range(1000))})
    with lake.partition_writer("calls", hour, batch.schema) as w:
        for line in sys.stdin:  # one batch per line from the test; EOF ends the write
            w.write(batch)
            print("wrote", flush=True)
    print("committed", flush=True)
""")


def test_a_live_writer_in_another_process_keeps_its_temp_file(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    part_dir = tmp_path / "calls/date=2026-11-20/hour=13"
    proc = subprocess.Popen([sys.executable, "-c", STEPPED_WRITER, f"file://{tmp_path}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("wrote")
        # Another run rewrites the partition meanwhile: its sweep must spare the live writer.
        lake.write_partition("calls", HOUR, table(3))
        assert len([n for n in os.listdir(part_dir) if n.endswith(".tmp")]) == 1
        proc.stdin.close()
        assert proc.stdout.readline().startswith("committed")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert os.listdir(part_dir) == [PART_NAME]
    assert lake.read_partition("calls", HOUR).num_rows == 1000


@pytest.mark.usefixtures("s3_landing")
def test_on_s3_the_footer_count_a_discarded_write_and_the_spool_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where writes spool for upload
    lake = Lake("s3://push-landing/lake")
    assert lake.partition_rows("calls", HOUR) is None
    lake.write_partition("calls", HOUR, table(4))
    assert lake.partition_rows("calls", HOUR) == 4

    spool = tmp_path / "promptops-lake-spool"
    debris = spool / f".{PART_NAME}.{socket.gethostname()}.{os.getpid()}.{'b' * 32}.tmp"
    debris.write_bytes(b"a killed upload's spool file")
    with lake.partition_writer("calls", HOUR, table(1).schema) as w:
        w.write(table(2, offset=10))
        w.discard()
    assert os.listdir(spool) == [], "the killed writer's spool file is swept"
    assert lake.read_partition("calls", HOUR).column("call_id").to_pylist() == \
        ["c0", "c1", "c2", "c3"]


@pytest.mark.usefixtures("s3_landing")
def test_dag_tasks_lake_takes_airflow_connections_in_the_uri(monkeypatch):
    """resources.lake() roots the lake in Airflow's ObjectStoragePath, so the deployment's
    ``s3://conn@bucket/prefix`` form keeps working (the library's own default is a UPath)."""
    from airflow.sdk import ObjectStoragePath

    from promptops.airflow_adapters import resources

    # A connection without credentials: the hook falls back to boto3's chain (moto's env).
    monkeypatch.setenv("AIRFLOW_CONN_LAKE_S3", '{"conn_type": "aws"}')
    lake = resources.lake("s3://lake_s3@push-landing/lake")
    assert isinstance(lake.root, ObjectStoragePath) and lake.root.conn_id == "lake_s3"
    lake.write_partition("calls", HOUR, table(3))
    assert Lake("s3://push-landing/lake").read_partition("calls", HOUR).num_rows == 3
    assert type(Lake("s3://push-landing/lake").root) is not ObjectStoragePath
