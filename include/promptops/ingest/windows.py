"""The hourly pull split into windows that run on different workers (dynamic task mapping).

:func:`plan_windows` cuts a run's interval (its hours plus the late-record hours before
them) into windows of ``window_minutes``. Each window is one mapped task:

- a whole hour (the default, 60 minutes) is ingested straight into its partition
  (:func:`promptops.ingest.pull.ingest_hour`), as the single-task pull did;
- a smaller window is pulled, validated and deduplicated on its own, and its good rows and
  rejects are *staged* in the lake (``staging_calls/``, ``staging_quarantine/``, one file
  per run and window), so the windows of one hour can run on different machines.

:func:`merge_windows` then writes each split hour's partitions from its staged windows
(one row per ``call_id`` across windows), deletes the staging files and checks the reject
share, giving the same summary as :func:`promptops.ingest.pull.ingest_interval`. A retried
window replaces its own staging file; a rerun of the run re-stages and re-merges: nothing
is duplicated. As there, a merged hour that found markedly fewer rows than its partition holds
keeps the partition (decided before anything is written) unless ``replace`` is set.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from promptops.contracts.datasets import CALLS, QUARANTINE, STAGING_CALLS, STAGING_QUARANTINE
from promptops.contracts.records import CALLS_SCHEMA, QUARANTINE_SCHEMA
from promptops.errors import ConfigError, StepIncomplete
from promptops.ingest.pull import (
    CallRecordSource,
    HourResult,
    IngestSummary,
    _no_cyclic_gc,
    check_reject_share,
    ingest_hour,
    keep_existing_partition,
    validate_call_page,
)
from promptops.lake.store import Lake
from promptops.timeutil import as_utc, hour_floor, hours_between

log = logging.getLogger(__name__)


def plan_windows(start: datetime, end: datetime, *, lateness_hours: int,
                 window_minutes: int) -> list[dict[str, Any]]:
    """The windows of ``[hour_floor(start) - lateness_hours, end)``, in time order."""
    if not 1 <= window_minutes <= 60 or 60 % window_minutes:
        raise ConfigError(f"PROMPTOPS_INGEST_WINDOW_MINUTES={window_minutes}: must divide an "
                         "hour (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60)")
    first = hour_floor(as_utc(start)) - timedelta(hours=lateness_hours)
    parts = 60 // window_minutes
    out = []
    for hour in hours_between(first, as_utc(end)):
        for i in range(parts):
            w_start = hour + timedelta(minutes=i * window_minutes)
            out.append({"hour": hour.isoformat(), "start": w_start.isoformat(),
                        "end": (w_start + timedelta(minutes=window_minutes)).isoformat(),
                        "index": i, "parts": parts})
    return out


def _stage_name(run_id: str | None, index: int) -> str:
    return f"{hashlib.sha256(str(run_id).encode()).hexdigest()[:16]}-w{index:02d}"


def pull_window(source: CallRecordSource, lake: Lake, window: dict[str, Any], *,
                run_id: str | None, page_size: int = 10_000, replace: bool = False,
                reread_min_share: float | None = None) -> dict[str, Any]:
    """Ingest one planned window; returns a JSON-safe summary for :func:`merge_windows`.
    ``replace`` and ``reread_min_share`` apply to a whole hour, written here."""
    hour = datetime.fromisoformat(window["hour"])
    if window["parts"] == 1:
        result = ingest_hour(source, lake, hour, run_id=run_id, page_size=page_size,
                             replace=replace, reread_min_share=reread_min_share)
        return {**window, "direct": True, "result": result.__dict__}
    start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
    name = _stage_name(run_id, window["index"])
    seen: set[str] = set()
    seen_add = seen.add
    pages = received = duplicates = 0
    good_tables, rejects = [], []
    with _no_cyclic_gc():
        for page in source.iter_call_record_page_bodies(start, end, limit=page_size):
            pages += 1
            received += len(page)
            checked = validate_call_page(page, start, end)
            rejects.extend(checked.rejects)
            good = checked.good
            ids = good.column("call_id").to_pylist()
            keep = np.fromiter((not (i in seen or seen_add(i)) for i in ids), dtype=bool,
                               count=len(ids))
            if not keep.all():
                duplicates += int((~keep).sum())
                good = good.filter(pa.array(keep))
            good_tables.append(good)
    good = pa.concat_tables(good_tables) if good_tables else CALLS_SCHEMA.empty_table()
    lake.write_record(STAGING_CALLS, hour, name, good.cast(CALLS_SCHEMA))
    if rejects:
        now = datetime.now(UTC)
        table = pa.Table.from_pylist(
            [{**r, "window_start": start, "window_end": end, "run_id": run_id,
              "ingested_at": now} for r in rejects], schema=QUARANTINE_SCHEMA)
        lake.write_record(STAGING_QUARANTINE, hour, name, table)
    else:
        lake.delete_record(STAGING_QUARANTINE, hour, name)  # a retry that finds none
    rejected: dict[str, int] = {}
    for r in rejects:
        rejected[r["reason"]] = rejected.get(r["reason"], 0) + 1
    log.info("window %s..%s: %d received, %d staged, %d duplicates, rejected %s",
             window["start"], window["end"], received, good.num_rows, duplicates,
             rejected or "none")
    return {**window, "direct": False, "pages": pages, "received": received,
            "duplicates": duplicates, "staged": good.num_rows, "rejected": rejected}


def merge_windows(lake: Lake, pulled: list[dict[str, Any]], *, run_id: str | None,
                  max_reject_share: float = 0.05, replace: bool = False,
                  reread_min_share: float | None = None) -> IngestSummary:
    """Write the split hours from their staged windows; check the reject share. An hour
    whose windows found markedly fewer rows than its partition holds keeps the partition
    unless ``replace`` (see :mod:`promptops.ingest.pull`)."""
    by_hour: dict[str, list[dict[str, Any]]] = {}
    for w in pulled:
        by_hour.setdefault(w["hour"], []).append(w)
    hours = []
    for hour_iso in sorted(by_hour):
        windows = sorted(by_hour[hour_iso], key=lambda w: w["index"])
        if windows[0]["direct"]:
            hours.append(HourResult(**windows[0]["result"]))
        else:
            hours.append(_merge_hour(lake, datetime.fromisoformat(hour_iso), windows, run_id,
                                     replace=replace, reread_min_share=reread_min_share))
    first = min(w["start"] for w in pulled)
    last = max(w["end"] for w in pulled)
    summary = IngestSummary(window_start=first, window_end=last, hours=hours)
    check_reject_share(summary, max_reject_share)
    return summary


def _merge_hour(lake: Lake, hour: datetime, windows: list[dict[str, Any]],
                run_id: str | None, *, replace: bool,
                reread_min_share: float | None) -> HourResult:
    parts = windows[0]["parts"]
    missing = sorted(set(range(parts)) - {w["index"] for w in windows})
    if missing:
        raise StepIncomplete(f"hour {hour.isoformat()}: windows {missing} of {parts} were not "
                           "pulled; rerun the failed pull_window tasks, then this task")
    names = [_stage_name(run_id, i) for i in range(parts)]
    staged = []
    for i, name in enumerate(names):
        table = lake.read_record(STAGING_CALLS, hour, name)
        if table is None:
            raise StepIncomplete(f"hour {hour.isoformat()}: the staged rows of window {i} are "
                               f"missing from {lake.partition_dir(STAGING_CALLS, hour)}; "
                               "rerun its pull_window task, then this task")
        staged.append(table.cast(CALLS_SCHEMA))
    calls = pa.concat_tables(staged)
    # A call the platform wrote twice across a window edge: keep its first copy.
    ids = calls.column("call_id").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    cross = calls.num_rows - len(first)
    if cross:
        calls = calls.take(pa.array(np.sort(first)))
    result = HourResult(hour=hour.isoformat(),
                        received=sum(w["received"] for w in windows),
                        duplicates=sum(w["duplicates"] for w in windows) + cross,
                        pages=sum(w["pages"] for w in windows))
    for w in windows:
        for reason, n in w["rejected"].items():
            result.rejected[reason] = result.rejected.get(reason, 0) + n
    if not keep_existing_partition(lake, result, calls.num_rows, replace=replace,
                                   min_share=reread_min_share):
        _write_hour(lake, hour, calls, names, result)
    for name in names:  # written: the staging files have done their job
        lake.delete_record(STAGING_CALLS, hour, name)
        lake.delete_record(STAGING_QUARANTINE, hour, name)
    log.info("hour %s merged from %d windows: %d written, %d duplicates (%d across windows)",
             result.hour, parts, result.written, result.duplicates, cross)
    return result


def _write_hour(lake: Lake, hour: datetime, calls: pa.Table, names: list[str],
                result: HourResult) -> None:
    """Replace the hour's partition and its quarantine with the merged windows'."""
    info = lake.write_partition(CALLS, hour, calls)
    result.written, result.calls_uri = info.rows, info.uri
    rejects = [t for name in names
               if (t := lake.read_record(STAGING_QUARANTINE, hour, name)) is not None]
    if rejects:
        table = pa.concat_tables([t.cast(QUARANTINE_SCHEMA) for t in rejects])
        table = table.sort_by([("window_start", "ascending")])
        result.quarantine_uri = lake.write_partition(QUARANTINE, hour, table).uri
    else:
        lake.delete_partition(QUARANTINE, hour)

