"""The Parquet lake: hourly partitions under one base URI, written atomically.

Layout: ``<base>/<dataset>/date=YYYY-MM-DD/hour=HH/part-00000.parquet``. A partition is one
file. It is written to a hidden temporary file first and then moved into place in one step
(``os.replace`` on local disk; on object stores one object upload, which becomes visible
whole), so a reader sees the old partition or the new one, never a mix, and a rerun replaces
rather than appends. Readers skip hidden files (``.``/``_`` prefixes), so a writer killed
mid-write leaves nothing they would read. Each writer holds an ``flock`` on its temp file while
it writes; the kernel drops it when the writer dies, so the next write of that partition
sweeps every temp file nobody holds (a PID in the name would be reused; a lock is not).

The root is a universal_pathlib path over fsspec: ``file://`` works out of the box, ``s3://``
(or any fsspec store) by configuration alone. DAG tasks take theirs from
``airflow_adapters.resources.lake``: Airflow's ``ObjectStoragePath`` (a ``UPath`` too), whose
credentials come from Airflow connections (``s3://conn@bucket/prefix``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from promptops.errors import InvalidInput
from promptops.settings import get_settings
from promptops.timeutil import hour_floor, hours_between

#: Columns added to a dataset after partitions were written without them: reading such a
#: partition gives them as nulls of this type.
_LATER_COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "calls": {"cache_creation_tokens": pa.int64(), "source_cost_usd": pa.float64(),
              "api_key_hash": pa.dictionary(pa.int32(), pa.string())},
}

PART_NAME = "part-00000.parquet"
_TMP_SUFFIX = ".tmp"
_HOST = socket.gethostname()
#: The lake's own temp files: ``.<file>.parquet.<host>.<pid>.<uuid hex>.tmp`` (host and PID
#: say who wrote one; only its lock says whether that writer still runs).
_TEMP_NAME = re.compile(r"\..+\.parquet\..+\.\d+\.[0-9a-f]{32}\.tmp")


@dataclass(frozen=True)
class PartitionInfo:
    dataset: str
    hour: datetime
    uri: str
    rows: int


class Lake:
    """Hourly partitions of named datasets (``calls``, ``quarantine``, ``metrics``...)."""

    def __init__(self, base_uri: str | None = None, *, root: UPath | None = None) -> None:
        """``root``: the lake's base path (a DAG task's is Airflow's ``ObjectStoragePath``);
        else ``base_uri`` (default ``PROMPTOPS_LAKE_URI``) as a ``UPath``."""
        self.root = root if root is not None else UPath(base_uri or get_settings().lake_uri)

    @property
    def is_local(self) -> bool:
        return self.root.protocol in ("file", "local", "")

    def __repr__(self) -> str:
        return f"Lake({self.root})"

    # -- paths ----------------------------------------------------------------------------

    def partition_dir(self, dataset: str, hour: datetime) -> UPath:
        hour = hour_floor(hour)
        return self.root / dataset / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"

    def partition_file(self, dataset: str, hour: datetime) -> UPath:
        return self.partition_dir(dataset, hour) / PART_NAME

    def uri(self, path: UPath) -> str:
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
        # On an object store the file is spooled on local disk, then uploaded as one object.
        spool = directory.path if self.is_local else _remote_spool_dir()
        with _locked_temp_file(spool, PART_NAME) as (tmp_path, fd):
            writer = PartitionWriter(tmp_path, schema)
            try:
                yield writer
            finally:
                writer.close()
            if writer.discarded:
                return
            if self.is_local:
                os.fsync(fd)
                os.replace(tmp_path, target.path)
            else:
                with open(tmp_path, "rb") as src, target.open("wb") as dst:
                    while chunk := src.read(8 << 20):
                        dst.write(chunk)
        writer.info = PartitionInfo(dataset, hour_floor(hour), str(target), writer.rows)

    def write_partition(self, dataset: str, hour: datetime, table: pa.Table) -> PartitionInfo:
        with self.partition_writer(dataset, hour, table.schema) as writer:
            writer.write(table)
        assert writer.info is not None  # set on leaving the block; nothing discards it here
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
            raise InvalidInput(f"record name {name!r}: use letters, digits, '.', '_' and '-'")
        directory = self.partition_dir(dataset, hour)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{name}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="snappy")
        data = sink.getvalue().to_pybytes()
        if self.is_local:
            with _locked_temp_file(directory.path, target.name) as (tmp, fd):
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.fsync(fd)
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
    def _parquet_files(directory: UPath) -> list[UPath]:
        if not directory.exists():
            return []
        return sorted((f for f in directory.iterdir()
                       if f.name.endswith(".parquet") and not f.name.startswith(".")),
                      key=lambda f: f.name)

    # -- reading --------------------------------------------------------------------------

    def has_partition(self, dataset: str, hour: datetime) -> bool:
        return self.partition_file(dataset, hour).exists()

    def partition_rows(self, dataset: str, hour: datetime) -> int | None:
        """The partition's row count from its Parquet footer (no rows are read); None when
        the hour has no partition."""
        target = self.partition_file(dataset, hour)
        try:
            if self.is_local:
                return pq.read_metadata(target.path).num_rows
            with target.open("rb") as fh:
                return pq.ParquetFile(fh).metadata.num_rows
        except FileNotFoundError:
            return None

    def read_partition(self, dataset: str, hour: datetime,
                       columns: list[str] | None = None) -> pa.Table | None:
        target = self.partition_file(dataset, hour)
        if not target.exists():
            return None
        try:
            return self._read_table(target, columns)
        except pa.ArrowInvalid:
            if columns is None:
                raise
        # A partition written before a column was added (cache_creation_tokens...): read
        # what it has, the rest as nulls of the dataset's type.
        schema = self._read_table(target, None, schema_only=True)
        have = [c for c in columns if c in schema.names]
        table = self._read_table(target, have)
        types = _LATER_COLUMNS.get(dataset, {})
        for i, name in enumerate(columns):
            if name not in schema.names:
                if name not in types:
                    raise InvalidInput(f"{target} has no column {name!r}")
                table = table.add_column(i, name, pa.nulls(table.num_rows, types[name]))
        return table

    def _read_table(self, target: Any, columns: list[str] | None, *,
                    schema_only: bool = False) -> Any:
        if self.is_local:
            return pq.read_schema(target.path) if schema_only \
                else pq.read_table(target.path, columns=columns)
        with target.open("rb") as fh:
            return pq.read_schema(fh) if schema_only else pq.read_table(fh, columns=columns)

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
        self.discarded = False
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            path, schema, compression="snappy", use_dictionary=True)

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0 or self._writer is None:
            return
        self._writer.write_table(table.cast(self.schema) if table.schema != self.schema else table)
        self.rows += table.num_rows

    def discard(self) -> None:
        """End the block without replacing the partition: the old one stays as it is."""
        self.discarded = True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _remote_spool_dir() -> str:
    path = os.path.join(tempfile.gettempdir(), "promptops-lake-spool")
    os.makedirs(path, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked_temp_file(directory: str, name: str) -> Iterator[tuple[str, int]]:
    """A new hidden temp file for ``name`` in ``directory`` and a descriptor that holds an
    ``flock`` on it until the block ends; the file is removed then unless it was moved into
    place. Sweeps the temp files of dead writers first."""
    _sweep_orphaned_temp_files(directory)
    while True:
        path = os.path.join(directory, f".{name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}"
                                       f"{_TMP_SUFFIX}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _is_same_file(fd, path):
            break
        os.close(fd)  # a sweep took it between create and lock: take another name
    try:
        yield path, fd
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        os.close(fd)  # releases the lock


def _sweep_orphaned_temp_files(directory: str) -> None:
    """Remove the lake's temp files in ``directory`` that no writer holds locked: their
    writer died (a killed task), and the kernel released its lock with it."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if not _TEMP_NAME.fullmatch(name):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Still that file? Its writer may have moved it into place meanwhile.
            if _is_same_file(fd, path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        except BlockingIOError:
            pass  # a live writer holds it
        finally:
            os.close(fd)


def _is_same_file(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
