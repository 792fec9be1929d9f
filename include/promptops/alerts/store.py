"""Where the alert engine keeps its state between runs: in the lake, next to the data.

Layout under the lake's base URI::

    alert_state/<scope>/state/<seq:012d>.json     one JSON document per committed version
    alert_state/<scope>/claims/<id>.<attempt>.json who took a notification to deliver it
    alert_log/scope=<scope>/date=.../hour=.../evaluation-<time>.parquet   its alert events

Everything rests on one primitive, *create this object only if it does not exist yet*:

- A state version is committed by creating the next sequence number. Two runs that read
  version ``n`` both try to create ``n + 1``; exactly one succeeds and the other gets a
  :class:`StateConflict`, re-reads and re-evaluates (optimistic concurrency, a
  compare-and-swap without a lock server).
- A notification is delivered only by the run that created its claim object.

The alert log needs no such primitive: each evaluation writes its own record file (see
:meth:`AlertStore.write_alert_log`), so overlapping runs never rewrite each other's rows.

On local disk (``file://``) the object is written to a temporary file and hard-linked into
place (``os.link`` fails if the name exists, and the content is complete before the name
appears). Elsewhere it goes through fsspec's exclusive-create mode ``"xb"``; that is atomic
only where the filesystem implements it as a conditional write (``s3fs`` does it with S3's
``If-None-Match: *``; ``s3fs`` is not installed in this environment, so the S3 path is
untested here). A store with another primitive (e.g. DynamoDB or a GCS generation match)
implements :class:`BlobStore`.

Every other I/O error is retried briefly and then raised as :class:`StoreUnavailable`; the
engine answers that by notifying anyway (at-least-once, as Alertmanager does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import pyarrow as pa
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from promptops.alerts.state import AlertState
from promptops.contracts.datasets import ALERT_LOG, ALERT_STATE
from promptops.errors import InvalidInput, PromptOpsError
from promptops.lake.store import Lake, PartitionInfo

log = logging.getLogger(__name__)

_SCOPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_STATE_NAME_RE = re.compile(r"^(\d{12})\.json$")

ALERT_LOG_SCHEMA = pa.schema([
    pa.field("evaluated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("scope", pa.string(), nullable=False),
    pa.field("run_id", pa.string()),
    pa.field("fingerprint", pa.string(), nullable=False),
    pa.field("rule", pa.string(), nullable=False),
    pa.field("severity", pa.string(), nullable=False),
    pa.field("kind", pa.string()),
    #: The identity labels as a JSON object (sorted keys).
    pa.field("labels", pa.string(), nullable=False),
    #: ``fired`` (started firing in this evaluation), ``firing`` (still), ``resolved``.
    pa.field("event", pa.string(), nullable=False),
    pa.field("summary", pa.string()),
    pa.field("value", pa.float64()),
    pa.field("threshold", pa.float64()),
    pa.field("active_since", pa.timestamp("us", tz="UTC")),
    pa.field("fired_at", pa.timestamp("us", tz="UTC")),
    pa.field("resolved_at", pa.timestamp("us", tz="UTC")),
    #: ``silence:<id>`` or ``inhibit:<rule name>:<fingerprint>`` when muted.
    pa.field("muted_by", pa.string()),
    pa.field("notification_id", pa.string()),
    #: ``sent``, ``failed``, ``pending`` (in flight), ``not_due``, ``muted``,
    #: ``unrecorded`` (sent while the state store was unreachable); from a backfill filling a
    #: gap: ``past`` (over by the latest evaluation, never posted), ``still_open`` (the
    #: latest evaluation's alert, posted by the live path).
    pa.field("delivery", pa.string(), nullable=False),
    pa.field("connection_id", pa.string()),
    #: The incident the row belongs to (``grouping: incidents``); an incident's own row has
    #: ``kind="incident"``, ``rule="incident"`` and its id as ``fingerprint``, with events
    #: ``opened``, ``firing`` and ``resolved``.
    pa.field("incident_id", pa.string()),
])


class StoreUnavailable(PromptOpsError):
    """The state store could not be read or written (after brief retries)."""


class StateConflict(PromptOpsError):
    """Another run committed this state version first; re-read and try again."""


@dataclass(frozen=True)
class StateSnapshot:
    #: 0 when there is no state yet.
    seq: int
    doc: dict[str, Any] | None

    @property
    def state(self) -> AlertState | None:
        """The document as the engine's typed state; None when there is none."""
        return AlertState.from_dict(self.doc) if self.doc else None


class BlobStore(Protocol):
    """Small named objects under one prefix, with an exclusive create."""

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` under ``key`` unless it exists; False if it did."""

    def read(self, key: str) -> bytes | None: ...

    def names(self, folder: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def describe(self) -> str: ...


class LocalBlobStore:
    """``os.link`` of a complete temporary file: atomic and exclusive on POSIX filesystems."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def create(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(target)}.{socket.gethostname()}."
                                   f"{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def read(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def names(self, folder: str) -> list[str]:
        try:
            return [n for n in os.listdir(self._path(folder)) if not n.startswith(".")]
        except FileNotFoundError:
            return []

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(key))

    def describe(self) -> str:
        return f"file://{self.root}"


class FsspecBlobStore:
    """Any fsspec filesystem behind an ``ObjectStoragePath``, exclusive create via ``"xb"``."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def create(self, key: str, data: bytes) -> bool:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with target.open("xb") as fh:
                fh.write(data)
        except FileExistsError:
            return False
        return True

    def read(self, key: str) -> bytes | None:
        try:
            with (self.root / key).open("rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def names(self, folder: str) -> list[str]:
        path = self.root / folder
        if not path.exists():
            return []
        return [p.name for p in path.iterdir() if not p.name.startswith(".")]

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / key).unlink()

    def describe(self) -> str:
        return str(self.root)


def io_retry(func):
    """Retry transient I/O errors briefly; the state store is small and usually close."""
    return retry(retry=retry_if_exception_type(OSError), stop=stop_after_attempt(3),
                 wait=wait_exponential(multiplier=0.05, max=0.5), reraise=True)(func)


def _unavailable(what: str, where: str, exc: BaseException) -> StoreUnavailable:
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return StoreUnavailable(f"alert state store {where}: could not {what} ({reason}); "
                            f"check that the lake is reachable and writable")


def blob_store(root: Any, *, local: bool) -> BlobStore:
    """Objects under ``root`` (an ``ObjectStoragePath``) with an exclusive create: other lake
    datasets with many writers (heal requests) use it too."""
    return LocalBlobStore(root.path) if local else FsspecBlobStore(root)


class AlertStore:
    """The engine's state, claims and alert log for one *scope* (one evaluating DAG).

    Scopes keep independent state: an alert missing from one DAG's findings must not resolve
    the alerts another DAG raised."""

    def __init__(self, lake: Lake, scope: str = "default", *,
                 blobs: BlobStore | None = None) -> None:
        if not _SCOPE_RE.match(scope):
            raise InvalidInput(f"alert store scope {scope!r}: use letters, digits, '_', '.', '-'")
        self.lake = lake
        self.scope = scope
        if blobs is None:
            blobs = blob_store(lake.root / ALERT_STATE / scope, local=lake.is_local)
        self.blobs = blobs

    @classmethod
    def from_uri(cls, base_uri: str | None = None, scope: str = "default") -> AlertStore:
        return cls(Lake(base_uri), scope)

    def __repr__(self) -> str:
        return f"AlertStore({self.blobs.describe()!r})"

    # -- state ------------------------------------------------------------------------------

    def load(self) -> StateSnapshot:
        """The newest committed state version (seq 0 and no document when there is none)."""
        try:
            return self._load()
        except OSError as exc:
            raise _unavailable("read the state", self.blobs.describe(), exc) from None

    @io_retry
    def _load(self) -> StateSnapshot:
        seqs = self._seqs()
        for seq in reversed(seqs):  # newest first; a deleted one (pruned) is skipped
            raw = self.blobs.read(f"state/{seq:012d}.json")
            if raw is None:
                continue
            try:
                return StateSnapshot(seq, orjson.loads(raw))
            except orjson.JSONDecodeError:
                # Complete-before-visible makes this impossible for our writes; a hand-edited
                # file must not stop alerting, so say so and fall back to the previous one.
                log.error("alert state %s/state/%012d.json is not valid JSON; using the "
                          "version before it", self.blobs.describe(), seq)
        return StateSnapshot(0, None)

    def _seqs(self) -> list[int]:
        return sorted(int(m.group(1)) for n in self.blobs.names("state")
                      if (m := _STATE_NAME_RE.match(n)))

    def commit(self, seq: int, doc: dict[str, Any], *, keep: int = 20) -> None:
        """Create version ``seq``; :class:`StateConflict` if another run created it first."""
        data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        try:
            created = io_retry(self.blobs.create)(f"state/{seq:012d}.json", data)
        except OSError as exc:
            raise _unavailable("write the state", self.blobs.describe(), exc) from None
        if not created:
            raise StateConflict(f"state version {seq} was committed by another run")
        if seq > keep:
            self._prune(seq - keep + 1)

    def commit_state(self, seq: int, state: AlertState, *, keep: int = 20) -> None:
        """:meth:`commit` of the engine's typed state, as its JSON document."""
        self.commit(seq, state.to_dict(), keep=keep)

    def _prune(self, below: int) -> None:
        try:
            for old in self._seqs():
                if old >= below:
                    break
                self.blobs.delete(f"state/{old:012d}.json")
        except OSError as exc:  # housekeeping only
            log.warning("could not prune old alert state versions (%s)", type(exc).__name__)

    # -- claims -----------------------------------------------------------------------------

    def claim(self, notification_id: str, attempt: int, owner: dict[str, Any]) -> bool:
        """Take the right to deliver ``notification_id`` (this attempt); False if taken."""
        key = self._claim_key(notification_id, attempt)
        body = {**owner, "claimed_at_unix": time.time(), "host": socket.gethostname(),
                "pid": os.getpid()}
        try:
            return io_retry(self.blobs.create)(key, orjson.dumps(body))
        except OSError as exc:
            raise _unavailable("write a claim", self.blobs.describe(), exc) from None

    def read_claim(self, notification_id: str, attempt: int) -> dict[str, Any] | None:
        try:
            raw = io_retry(self.blobs.read)(self._claim_key(notification_id, attempt))
        except OSError as exc:
            raise _unavailable("read a claim", self.blobs.describe(), exc) from None
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:  # not ours (we write complete files): treat as stale
            return {"claimed_at_unix": 0}

    def prune_claims(self, older_than_s: float) -> int:
        """Delete claims older than this many seconds (wall-clock); how many went."""
        cutoff, removed = time.time() - older_than_s, 0
        try:
            for name in self.blobs.names("claims"):
                raw = self.blobs.read(f"claims/{name}")
                if raw is None:
                    continue
                try:
                    at = float(orjson.loads(raw).get("claimed_at_unix", 0))
                except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
                    at = 0.0
                if at < cutoff:
                    self.blobs.delete(f"claims/{name}")
                    removed += 1
        except OSError as exc:
            log.warning("could not prune old alert claims (%s)", type(exc).__name__)
        return removed

    @staticmethod
    def _claim_key(notification_id: str, attempt: int) -> str:
        key = f"{notification_id}.{attempt}.json"
        if not _KEY_RE.match(key):
            raise InvalidInput(f"claim id {notification_id!r}: letters, digits, '_', '.', '-'")
        return f"claims/{key}"

    # -- the alert log ----------------------------------------------------------------------

    @property
    def alert_log_dataset(self) -> str:
        """``alert_log/scope=<scope>``: hive-style, so all scopes read as one dataset."""
        return f"{ALERT_LOG}/scope={self.scope}"

    def write_alert_log(self, evaluated_at: datetime,
                        rows: list[dict[str, Any]]) -> PartitionInfo:
        """Keep one evaluation's rows as its own record file in its hour's folder.

        The rows' natural key is (scope, fingerprint, event, evaluated_at): one evaluation
        writes them all, once committed by the state store's versioning. So the record is
        named by the evaluation time and replaces only that evaluation's earlier rows (a
        rerun, or a retried delivery); overlapping runs writing other evaluations of the
        hour never touch each other's files, and nothing is read back and rewritten."""
        evaluated_at = evaluated_at.astimezone(UTC)
        table = pa.Table.from_pylist([_log_row(r) for r in rows], schema=ALERT_LOG_SCHEMA)
        try:
            return self.lake.write_record(self.alert_log_dataset, evaluated_at,
                                          f"evaluation-{evaluated_at:%Y%m%dT%H%M%S.%fZ}", table)
        except OSError as exc:
            raise _unavailable("write the alert log", str(self.lake.root), exc) from None

    def read_alert_log(self, start: datetime, end: datetime) -> pa.Table | None:
        """The rows of the evaluations in the hours of ``[start, end)``, oldest first."""
        table = self.lake.read_records(self.alert_log_dataset, start, end)
        # Stable: an evaluation's rows stay in the order it wrote them.
        return None if table is None else table.sort_by([("evaluated_at", "ascending")])


_TIME_COLUMNS = ("evaluated_at", "active_since", "fired_at", "resolved_at")


def _log_row(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {name: row.get(name) for name in ALERT_LOG_SCHEMA.names}
    for name in _TIME_COLUMNS:
        if isinstance(out[name], str):
            out[name] = datetime.fromisoformat(out[name]).astimezone(UTC)
    if isinstance(out["labels"], dict):
        out["labels"] = orjson.dumps(out["labels"], option=orjson.OPT_SORT_KEYS).decode()
    return out
