"""The Parquet lake: hourly partitions under one base URI, written atomically.

Layout: ``<base>/<dataset>/date=YYYY-MM-DD/hour=HH/part-00000.parquet``. A partition is one
file. It is written to a hidden temporary file first and then moved into place in one step
(``os.replace`` on local disk; on object stores one object upload, which becomes visible
whole), so a reader sees the old partition or the new one, never a mix, and a rerun replaces
rather than appends. Readers skip hidden files (``.``/``_`` prefixes), so a writer killed
mid-write leaves nothing they would read; the next write of that partition sweeps its debris.

The base URI goes through Airflow's ``ObjectStoragePath``: ``file://`` works out of the box,
``s3://`` (or any fsspec store Airflow knows) by configuration alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from airflow.sdk import ObjectStoragePath

from promptops.settings import get_settings

PART_NAME = "part-00000.parquet"
_TMP_SUFFIX = ".tmp"
_HOST = socket.gethostname()


def as_utc(ts: datetime) -> datetime:
    """A plain ``datetime`` in UTC (naive means UTC). Airflow hands tasks pendulum
    DateTimes, whose arithmetic after ``astimezone(datetime.UTC)`` can drop the zone."""
    ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    return datetime(ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond,
                    tzinfo=UTC)


def hour_floor(ts: datetime) -> datetime:
    return as_utc(ts).replace(minute=0, second=0, microsecond=0)


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """Every hour start in ``[start, end)`` (both floored to the hour)."""
    hour, stop = hour_floor(start), end
    out = []
    while hour < stop:
        out.append(hour)
        hour += timedelta(hours=1)
    return out


@dataclass(frozen=True)
class PartitionInfo:
    dataset: str
    hour: datetime
    uri: str
    rows: int


class Lake:
    """Hourly partitions of named datasets (``calls``, ``quarantine``, ``metrics``...)."""

    def __init__(self, base_uri: str | None = None, conn_id: str | None = None) -> None:
        uri = base_uri or get_settings().lake_uri
        self.root = ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)

    @property
    def is_local(self) -> bool:
        return self.root.protocol in ("file", "local", "")

    def __repr__(self) -> str:
        return f"Lake({self.root})"

    # -- paths ----------------------------------------------------------------------------

    def partition_dir(self, dataset: str, hour: datetime) -> ObjectStoragePath:
        hour = hour_floor(hour)
        return self.root / dataset / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"

    def partition_file(self, dataset: str, hour: datetime) -> ObjectStoragePath:
        return self.partition_dir(dataset, hour) / PART_NAME

    def uri(self, path: ObjectStoragePath) -> str:
        return str(path)

    # -- writing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def partition_writer(self, dataset: str, hour: datetime,
                         schema: pa.Schema) -> Iterator[PartitionWriter]:
        """Stream tables into one partition; it replaces the old one only if the block ends
        without an exception. Memory stays bounded by what the caller hands in at a time."""
        target = self.partition_file(dataset, hour)
        directory = target.parent
        directory.mkdir(parents=True, exist_ok=True)
        if self.is_local:
            _sweep_dead_temp_files(directory.path)
            tmp_path = os.path.join(
                directory.path, f".{PART_NAME}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
        else:
            fd, tmp_path = tempfile.mkstemp(prefix="promptops-", suffix=".parquet")
            os.close(fd)
        writer = PartitionWriter(tmp_path, schema)
        try:
            yield writer
            writer.close()
            if self.is_local:
                with open(tmp_path, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp_path, target.path)
            else:
                with open(tmp_path, "rb") as src, target.open("wb") as dst:
                    while chunk := src.read(8 << 20):
                        dst.write(chunk)
        finally:
            writer.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp_path)
        writer.info = PartitionInfo(dataset, hour_floor(hour), str(target), writer.rows)

    def write_partition(self, dataset: str, hour: datetime, table: pa.Table) -> PartitionInfo:
        with self.partition_writer(dataset, hour, table.schema) as writer:
            writer.write(table)
        return writer.info

    def delete_partition(self, dataset: str, hour: datetime) -> bool:
        """Delete the hour's data: its part file and any record files (see
        :meth:`write_record`). True when something was deleted."""
        files = self._parquet_files(self.partition_dir(dataset, hour))
        for f in files:
            f.unlink()
        return bool(files)

    # -- one file per record: datasets with many writers (heal audit) ---------------------

    def write_record(self, dataset: str, hour: datetime, name: str,
                     table: pa.Table) -> PartitionInfo:
        """Write ``table`` as the file ``<name>.parquet`` in the hour's folder, replacing only
        that file. Writers of different names never overwrite each other, so concurrent runs
        need no lock (a partition's single part file would be last-write-wins)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}", name):
            raise ValueError(f"record name {name!r}: use letters, digits, '.', '_' and '-'")
        directory = self.partition_dir(dataset, hour)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{name}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="snappy")
        data = sink.getvalue().to_pybytes()
        if self.is_local:
            tmp = os.path.join(directory.path, f".{name}.{os.getpid()}.{uuid.uuid4().hex}"
                                               f"{_TMP_SUFFIX}")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target.path)
        else:
            with target.open("wb") as fh:  # one PUT: S3 objects appear whole or not at all
                fh.write(data)
        return PartitionInfo(dataset, hour_floor(hour), str(target), table.num_rows)

    def read_record(self, dataset: str, hour: datetime, name: str) -> pa.Table | None:
        """The file ``<name>.parquet`` of the hour's folder, or None."""
        target = self.partition_dir(dataset, hour) / f"{name}.parquet"
        if not target.exists():
            return None
        if self.is_local:
            return pq.read_table(target.path)
        with target.open("rb") as fh:
            return pq.read_table(fh)

    def delete_record(self, dataset: str, hour: datetime, name: str) -> bool:
        target = self.partition_dir(dataset, hour) / f"{name}.parquet"
        if target.exists():
            target.unlink()
            return True
        return False

    def read_records(self, dataset: str, start: datetime, end: datetime) -> pa.Table | None:
        """Every file of every hour in ``[start, end)`` (part files and record files)."""
        tables = []
        for h in hours_between(start, end):
            for f in self._parquet_files(self.partition_dir(dataset, h)):
                if self.is_local:
                    tables.append(pq.read_table(f.path))
                else:
                    with f.open("rb") as fh:
                        tables.append(pq.read_table(fh))
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")

    @staticmethod
    def _parquet_files(directory: ObjectStoragePath) -> list[ObjectStoragePath]:
        if not directory.exists():
            return []
        return sorted((f for f in directory.iterdir()
                       if f.name.endswith(".parquet") and not f.name.startswith(".")),
                      key=lambda f: f.name)

    # -- reading --------------------------------------------------------------------------

    def has_partition(self, dataset: str, hour: datetime) -> bool:
        return self.partition_file(dataset, hour).exists()

    def read_partition(self, dataset: str, hour: datetime,
                       columns: list[str] | None = None) -> pa.Table | None:
        target = self.partition_file(dataset, hour)
        if not target.exists():
            return None
        if self.is_local:
            return pq.read_table(target.path, columns=columns)
        with target.open("rb") as fh:
            return pq.read_table(fh, columns=columns)

    def read_range(self, dataset: str, start: datetime, end: datetime,
                   columns: list[str] | None = None) -> pa.Table | None:
        """Concatenate the partitions of every hour in ``[start, end)`` that exists."""
        tables = [t for h in hours_between(start, end)
                  if (t := self.read_partition(dataset, h, columns)) is not None]
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")

    def list_partitions(self, dataset: str) -> list[datetime]:
        base = self.root / dataset
        if not base.exists():
            return []
        hours = []
        for date_dir in base.iterdir():
            if not date_dir.name.startswith("date="):
                continue
            for hour_dir in date_dir.iterdir():
                if hour_dir.name.startswith("hour=") and self._parquet_files(hour_dir):
                    day = datetime.strptime(date_dir.name[5:], "%Y-%m-%d").replace(tzinfo=UTC)
                    hours.append(day + timedelta(hours=int(hour_dir.name[5:])))
        return sorted(hours)


class PartitionWriter:
    """A Parquet writer on a temporary file; :class:`Lake` moves the file into place."""

    def __init__(self, path: str, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        self.info: PartitionInfo | None = None
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            path, schema, compression="snappy", use_dictionary=True)

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0 or self._writer is None:
            return
        self._writer.write_table(table.cast(self.schema) if table.schema != self.schema else table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _sweep_dead_temp_files(directory: str) -> None:
    """Remove temp files left by writers on this host that no longer run (a killed task)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if not (name.startswith(f".{PART_NAME}.") and name.endswith(_TMP_SUFFIX)):
            continue
        parts = name[len(PART_NAME) + 2:-len(_TMP_SUFFIX)].rsplit(".", 2)
        if len(parts) != 3:
            continue
        host, pid, _ = parts
        if host == _HOST and pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
