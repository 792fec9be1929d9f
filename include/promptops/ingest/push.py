"""Push delivery: ingest an NDJSON batch of call records that the platform dropped into the
landing area and announced as an asset event (docs/push.md).

A pushed batch goes through the poll's own rules (:func:`promptops.contracts.records.validate_page`),
grouped by the hour of each record's ``ts``, and lands in the same partitions:

- ``calls``: merged with what the hour holds already, one row per ``call_id`` (the row
  already there wins, then the first copy in the batch); the partition is rewritten
  atomically (:meth:`promptops.lake.store.Lake.write_partition`).
- ``quarantine``: rejects are added to the hour's partition, keeping its rows; a reject that
  is there already (same reason, field and raw text) is not added again.
- ``push_batches``: one manifest record per batch, named after the SHA-256 of its bytes and
  written last. A batch whose manifest exists is reported as already ingested; a batch that
  failed half-way has none, and ingesting it again completes it without a second copy of
  anything (the dedupe above).

A line that is not JSON is quarantined as ``invalid_json`` with its text; a line that is
JSON but not an object is ``not_an_object``, as on the poll path. Records that cannot be
placed in an hour (no readable ``ts``) are quarantined under the batch's *anchor hour*: the
hour most of its readable ``ts`` fall in (the earliest such hour on a tie), else the hour
the file was last modified. The manifest lives under the anchor hour too, so a replay finds
it without a scan.

Only files under the landing area (``PROMPTOPS_LANDING_URI``) are read: a path with ``..``,
an absolute path elsewhere, another bucket or a symlink out of it is refused before
anything is opened. Paths are universal_pathlib ``UPath`` objects, or whatever
``storage_path`` makes of a URI: in a DAG task Airflow's ``ObjectStoragePath``
(``airflow_adapters.resources.storage_path``), credentials from Airflow connections.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
import pandas as pd
import pyarrow as pa
from upath import UPath

from promptops.contracts.datasets import CALLS, QUARANTINE
from promptops.contracts.datasets import PUSH_BATCHES as BATCHES
from promptops.contracts.records import CALLS_SCHEMA, QUARANTINE_SCHEMA, validate_page
from promptops.errors import PromptOpsError, RejectShareExceeded
from promptops.lake.store import Lake
from promptops.settings import get_settings
from promptops.timeutil import as_utc, hour_floor

log = logging.getLogger(__name__)

#: Reject reason of a line that does not parse as JSON (the poll never sees one: a page that
#: does not parse fails whole).
INVALID_JSON = "invalid_json"
#: The key of an asset event's ``extra`` that names the batch file.
PATH_KEY = "path"
#: A path from a URI (``UPath``, or Airflow's ``ObjectStoragePath`` in a DAG task).
StoragePathFactory = Callable[[str], UPath]
#: A record stamped this far after the ingest's clock is still taken (clock skew); later
#: ones are rejected as ``ts_outside_window``, as the poll rejects a record outside the
#: window it asked for.
FUTURE_SLACK = timedelta(minutes=5)

STATUS_INGESTED = "ingested"
STATUS_REPLAY = "already_ingested"


class PushError(PromptOpsError):
    """A pushed batch that cannot be ingested as announced."""

    #: False where trying again cannot help (a refused path, an event without a path).
    retryable = False


class PushPathRefused(PushError, ValueError):
    """The announced path does not lie inside the landing area."""


class PushBatchMissing(PushError, FileNotFoundError):
    """The announced file is not (yet) in the landing area."""

    retryable = True


class PushEventInvalid(PushError, ValueError):
    """An asset event whose ``extra`` does not name a batch."""


# -- where a batch may come from --------------------------------------------------------------


def resolve_batch_path(path: Any, landing_uri: str | None = None, *,
                       storage_path: StoragePathFactory = UPath) -> UPath:
    """The file a pushed ``path`` names, refused unless it lies inside the landing area.

    ``path`` is relative to the landing area (``2026-11-20/batch-0001.ndjson``), or an
    absolute URI or local path under it. Nothing is opened before the checks pass.
    """
    landing_uri = (landing_uri or get_settings().landing_uri).rstrip("/")
    landing = storage_path(landing_uri)
    how = (f"Write the batch under the landing area {landing_uri} (PROMPTOPS_LANDING_URI) "
           f"and name it relative to it in the event's extra, e.g. "
           f'{{"{PATH_KEY}": "2026-11-20/batch-0001.ndjson"}}.')

    def refuse(problem: str) -> PushPathRefused:
        return PushPathRefused(f"batch path {path!r} refused: {problem}. {how}")

    if not isinstance(path, str) or not path.strip():
        raise refuse("it must be a non-empty string")
    if any(ord(c) < 32 for c in path):
        raise refuse("it contains control characters")
    parts = urlsplit(path)
    has_scheme = "://" in path
    rel_parts = (parts.path if has_scheme else path).split("/")
    if ".." in rel_parts:
        raise refuse("'..' is not allowed in a batch path")

    local = landing.protocol in ("file", "local", "")
    if has_scheme:
        scheme = "file" if parts.scheme == "local" else parts.scheme
        if scheme != (landing.protocol or "file"):
            raise refuse(f"it is on {parts.scheme}://, the landing area is on "
                         f"{landing.protocol or 'file'}://")
        if not local and parts.netloc != urlsplit(landing_uri).netloc:
            raise refuse(f"bucket {parts.netloc!r} is not the landing area's bucket "
                         f"{urlsplit(landing_uri).netloc!r}")
        inside = f"{landing.path.rstrip('/')}/"
        if not storage_path(path).path.startswith(inside):
            raise refuse("it lies outside the landing area")
        target = storage_path(path)
    elif path.startswith("/"):
        if not local:
            raise refuse("an absolute local path cannot name a file in an object-store "
                         "landing area")
        if not path.startswith(f"{landing.path.rstrip('/')}/"):
            raise refuse("it is an absolute path outside the landing area")
        target = storage_path(f"file://{path}")
    else:
        target = landing / path

    if local:
        # A symlink inside the landing area must not lead out of it.
        real_root = os.path.realpath(landing.path)
        if os.path.commonpath([real_root, os.path.realpath(target.path)]) != real_root:
            raise refuse("it resolves (through a symlink) to a file outside the landing area")
    return target


# -- reading a batch --------------------------------------------------------------------------


@dataclass
class _Batch:
    sha256: str
    received: int = 0
    records: list[Any] = field(default_factory=list)  # parsed JSON values, in batch order
    invalid: list[str] = field(default_factory=list)  # lines that are not JSON


def _read_batch(target: UPath) -> _Batch:
    if not target.exists():
        raise PushBatchMissing(
            f"batch file {target} does not exist in the landing area. Write the whole file "
            f"first and announce it afterwards (or fix the event's extra.{PATH_KEY}), then "
            f"clear this task to rerun it.")
    if target.is_dir():
        raise PushPathRefused(f"batch path {target} is a directory; announce one NDJSON file "
                              f"per event")
    with target.open("rb") as fh:
        data = fh.read()
    batch = _Batch(sha256=hashlib.sha256(data).hexdigest())
    for line in data.split(b"\n"):
        if not line.strip():
            continue  # blank lines (a trailing newline) are not records
        batch.received += 1
        try:
            batch.records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            batch.invalid.append(line.decode("utf-8", errors="replace").rstrip("\r"))
    return batch


def _ts_hours(records: list[Any]) -> list[datetime | None]:
    """The hour of each record's ``ts`` where :func:`validate_page` would read it (the same
    parse: RFC 3339 with a time, any offset, to UTC), else None."""
    text = pa.array([r.get("ts") if type(r) is dict and type(r.get("ts")) is str else None
                     for r in records], type=pa.string()).to_pandas()
    ts = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    readable = ts.notna() & (text.str.len().fillna(0) >= 19)
    hours = ts.dt.floor("h")
    return [as_utc(h.to_pydatetime()) if ok else None
            for h, ok in zip(hours, readable.to_numpy(), strict=True)]


def _modified_hour(target: UPath) -> datetime | None:
    info = target.fs.stat(target.path)  # the store's own metadata (mtime, LastModified...)
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key) if hasattr(info, "get") else None
        if isinstance(value, datetime):
            return hour_floor(value)
        if isinstance(value, int | float):
            return hour_floor(datetime.fromtimestamp(value, UTC))
    return None


# -- ingesting it -----------------------------------------------------------------------------


def _manifest_name(sha256: str) -> str:
    return f"sha256-{sha256}"


def _summary(target: UPath, batch: _Batch, status: str) -> dict[str, Any]:
    return {"batch": str(target), "sha256": batch.sha256, "status": status,
            "received": batch.received, "written": 0, "duplicates": 0, "rejected": {},
            "hours": [], "partitions": [], "quarantine": [], "manifest": None}


def ingest_batch(path: str, *, lake: Lake | None = None, landing_uri: str | None = None,
                 run_id: str | None = None, now: datetime | None = None,
                 max_reject_share: float | None = None,
                 storage_path: StoragePathFactory = UPath) -> dict[str, Any]:
    """Ingest one pushed batch; returns a JSON-safe summary.

    ``status`` is ``ingested``, or ``already_ingested`` for a batch whose bytes were
    ingested before (then nothing is written and ``first_ingest`` holds that run's counts).
    With ``max_reject_share`` set, a batch with a larger share of rejects raises
    :class:`RejectShareExceeded` after its partitions are written, as the poll does.
    """
    lake = lake or Lake()
    target = resolve_batch_path(path, landing_uri, storage_path=storage_path)
    batch = _read_batch(target)
    now = as_utc(now or datetime.now(UTC))
    hours = _ts_hours(batch.records)
    counts = Counter(h for h in hours if h is not None)
    anchor = (min(counts, key=lambda h: (-counts[h], h)) if counts
              else _modified_hour(target) or hour_floor(now))

    name = _manifest_name(batch.sha256)
    manifest = lake.read_record(BATCHES, anchor, name)
    if manifest is not None:
        first = manifest.to_pylist()[0]
        log.info("batch %s (sha256 %s) was ingested before, by run %s at %s: nothing to do",
                 target, batch.sha256[:12], first["run_id"], first["ingested_at"])
        out = _summary(target, batch, STATUS_REPLAY)
        out["manifest"] = str(lake.partition_dir(BATCHES, anchor) / f"{name}.parquet")
        out["first_ingest"] = {
            "run_id": first["run_id"], "ingested_at": first["ingested_at"].isoformat(),
            "written": first["written"], "duplicates": first["duplicates"],
            "rejected": orjson.loads(first["rejected"]), "hours": orjson.loads(first["hours"])}
        return out

    groups: dict[datetime, list[Any]] = {}
    for rec, hour in zip(batch.records, hours, strict=True):
        groups.setdefault(hour or anchor, []).append(rec)
    if batch.invalid:
        groups.setdefault(anchor, [])

    out = _summary(target, batch, STATUS_INGESTED)
    latest = now + FUTURE_SLACK
    for hour in sorted(groups):
        end = hour + timedelta(hours=1)
        checked = validate_page(groups[hour], hour, max(hour, min(end, latest)))
        rejects = checked.rejects
        if hour == anchor:
            rejects = rejects + [{"reason": INVALID_JSON, "field": None, "call_id": None,
                                  "raw": text} for text in batch.invalid]
        detail: dict[str, Any] = {
            "hour": hour.isoformat(), "received": len(groups[hour]), "written": 0,
            "duplicates": 0, "rejected": {}, "calls_uri": None, "quarantine_uri": None}
        _merge_calls(lake, hour, checked.good, detail)
        _merge_quarantine(lake, hour, end, rejects, detail, run_id=run_id, now=now)
        out["hours"].append(detail)
        out["written"] += detail["written"]
        out["duplicates"] += detail["duplicates"]
        for reason, n in detail["rejected"].items():
            out["rejected"][reason] = out["rejected"].get(reason, 0) + n
        if detail["written"]:  # the partitions this ingest rewrote
            out["partitions"].append(detail["calls_uri"])
        if detail["quarantine_uri"]:
            out["quarantine"].append(detail["quarantine_uri"])

    rejected = sum(out["rejected"].values())
    log.info("batch %s (sha256 %s): %d received, %d written, %d duplicates, rejected %s",
             target, batch.sha256[:12], batch.received, out["written"], out["duplicates"],
             out["rejected"] or "none")
    if (max_reject_share is not None and batch.received
            and rejected / batch.received > max_reject_share):
        # No manifest: fixing the limit and ingesting again completes the batch (dedupe).
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(out["rejected"].items()))
        raise RejectShareExceeded(
            f"{rejected} of {batch.received} records ({rejected / batch.received:.1%}) of the "
            f"pushed batch {target} broke the record schema ({reasons}); the limit is "
            f"{max_reject_share:.1%}. The good records were written; the rejected ones, with "
            f"their reasons and raw JSON, are in {', '.join(out['quarantine'])}. Ask the "
            f"platform team to fix them, or raise PROMPTOPS_MAX_REJECT_SHARE, then rerun.")

    info = lake.write_record(BATCHES, anchor, name, pa.table({
        "sha256": [batch.sha256], "path": [str(target)], "run_id": [run_id],
        "ingested_at": pa.array([now], pa.timestamp("us", tz="UTC")),
        "received": [batch.received], "written": [out["written"]],
        "duplicates": [out["duplicates"]],
        "rejected": [orjson.dumps(out["rejected"]).decode()],
        "hours": [orjson.dumps([h["hour"] for h in out["hours"]]).decode()],
    }))
    out["manifest"] = info.uri
    return out


def _merge_calls(lake: Lake, hour: datetime, good: pa.Table, detail: dict[str, Any]) -> None:
    """Add the batch's good rows to the hour's partition: one row per ``call_id``, the row
    already there first. An hour with nothing new is left as it is."""
    existing = lake.read_partition(CALLS, hour)
    seen = set(existing.column("call_id").to_pylist()) if existing is not None else set()
    keep = []
    for call_id in good.column("call_id").to_pylist():
        keep.append(call_id not in seen)
        seen.add(call_id)
    new = good.filter(pa.array(keep, pa.bool_())) if not all(keep) else good
    detail["duplicates"] = good.num_rows - new.num_rows
    if existing is not None:
        detail["calls_uri"] = str(lake.partition_file(CALLS, hour))
    if new.num_rows == 0:
        return
    table = new if existing is None else pa.concat_tables([existing.cast(CALLS_SCHEMA), new])
    info = lake.write_partition(CALLS, hour, table.unify_dictionaries().combine_chunks())
    detail["written"] = new.num_rows
    detail["calls_uri"] = info.uri


def _merge_quarantine(lake: Lake, hour: datetime, end: datetime, rejects: list[dict],
                      detail: dict[str, Any], *, run_id: str | None, now: datetime) -> None:
    """Add the rejects to the hour's quarantine, skipping those it holds already."""
    for rej in rejects:
        detail["rejected"][rej["reason"]] = detail["rejected"].get(rej["reason"], 0) + 1
    if not rejects:
        return
    existing = lake.read_partition(QUARANTINE, hour)
    known = set()
    if existing is not None:
        known = set(zip(existing.column("reason").to_pylist(),
                        existing.column("field").to_pylist(),
                        existing.column("raw").to_pylist(), strict=True))
    new = [r for r in rejects if (r["reason"], r["field"], r["raw"]) not in known]
    detail["quarantine_uri"] = str(lake.partition_file(QUARANTINE, hour))
    if not new:
        return
    table = pa.Table.from_pylist(
        [{**r, "window_start": hour, "window_end": end, "run_id": run_id, "ingested_at": now}
         for r in new], schema=QUARANTINE_SCHEMA)
    if existing is not None:
        table = pa.concat_tables([existing.cast(QUARANTINE_SCHEMA), table])
    detail["quarantine_uri"] = lake.write_partition(QUARANTINE, hour, table).uri


# -- asset events -----------------------------------------------------------------------------


def collect_events(triggering: Iterable[Mapping[str, Any]],
                   later: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The events a run ingests: those that triggered it, then those announced after them
    that it has not seen, each once, oldest first.

    Airflow 3.3 folds every announcement that arrives while a run is being queued into
    that run's queue entry, yet the run consumes only the events up to the entry's time:
    a later one waits for the next announcement (apache/airflow#56050). Reading the
    asset's newer events too means no batch waits for that; a batch read twice is ingested
    once anyway (its manifest)."""
    out: dict[tuple[datetime | None, bytes], dict[str, Any]] = {}
    for via, events in (("triggered", triggering), ("announced later", later)):
        for event in events:
            extra = dict(event.get("extra") or {})
            at = _event_time(event.get("timestamp"))
            key = (at, orjson.dumps(extra, option=orjson.OPT_SORT_KEYS))
            out.setdefault(key, {"extra": extra, "timestamp": event.get("timestamp"),
                                 "via": via})
    oldest = datetime.min.replace(tzinfo=UTC)
    return [out[k] for k in sorted(out, key=lambda k: k[0] or oldest)]


def _event_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return as_utc(value)
    try:
        return as_utc(datetime.fromisoformat(str(value)))
    except ValueError:
        return None


def event_paths(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The batch path of each asset event (``{"extra": {...}, ...}``), in order; an event
    without one is refused with what its extra must hold."""
    paths = []
    for i, event in enumerate(events):
        extra = event.get("extra") or {}
        path = extra.get(PATH_KEY)
        if not isinstance(path, str) or not path.strip():
            keys = sorted(k for k in extra if k != "from_rest_api")
            raise PushEventInvalid(
                f"asset event {i} (at {event.get('timestamp')}) names no batch: its extra "
                f"must hold {PATH_KEY!r}, the NDJSON file's path relative to the landing "
                f"area, e.g. POST /api/v2/assets/events with "
                f'{{"asset_id": <id>, "extra": {{"{PATH_KEY}": "batch-0001.ndjson"}}}} '
                f"(this one had keys {keys or 'none'}). See docs/push.md.")
        paths.append(path)
    return paths


def ingest_events(events: list[Mapping[str, Any]], *, lake: Lake | None = None,
                  landing_uri: str | None = None, run_id: str | None = None,
                  max_reject_share: float | None = None,
                  storage_path: StoragePathFactory = UPath) -> list[dict[str, Any]]:
    """Ingest the batch of every event, one after the other (a batch announced twice is
    ingested once). Every batch is tried; then one failure is raised (a retryable one if
    any), every one having been logged."""
    if not events:
        raise PushEventInvalid(
            "no asset event to ingest: this DAG runs when a batch is announced through "
            "POST /api/v2/assets/events on promptops://landing/call_records (docs/push.md); "
            "a manual trigger has nothing to read.")
    paths = event_paths(events)
    lake = lake or Lake()
    summaries, errors = [], []
    for path, event in zip(paths, events, strict=True):
        try:
            summary = ingest_batch(path, lake=lake, landing_uri=landing_uri, run_id=run_id,
                                   max_reject_share=max_reject_share,
                                   storage_path=storage_path)
            summaries.append({**summary, "event_at": event.get("timestamp"),
                              "via": event.get("via", "triggered")})
        except (PushError, RejectShareExceeded) as exc:
            log.error("batch %r: %s", path, exc)
            errors.append(exc)
    if errors:
        log.error("%d of %d batches failed (each one is logged above)", len(errors), len(paths))
        # A retry can help a missing file (still being written), so that one goes first.
        raise next((e for e in errors if is_retryable(e)), errors[0])
    return summaries


def is_retryable(exc: BaseException) -> bool:
    """Whether retrying the task could change the outcome: a missing file may yet arrive;
    a refused path, an event without a path or too many rejects stay as they are."""
    return bool(getattr(exc, "retryable", False)) and not isinstance(exc, RejectShareExceeded)
