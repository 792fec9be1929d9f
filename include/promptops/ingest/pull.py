"""Hourly ingest: pull a window of call records, validate, dedupe, write partitions.

One run covers its data interval plus ``lateness_hours`` earlier hours. Every hour is read
whole from the API again and its partition replaced, so records that arrived late (after the
hour's own run) land in the right partition on the next run, and a rerun gives the same
partition rather than a second copy.

A re-read may only add or correct records: one that finds markedly fewer rows than the
partition holds (the platform's retention, a partial outage, a lagging store) keeps the
partition and its quarantine as they are, and warns. "Markedly" is fewer than
``PROMPTOPS_REREAD_MIN_SHARE`` of them (default 90%); an empty re-read of a non-empty
partition is always kept. ``replace=True`` (the run conf ``{"replace": true}``) overrides.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow as pa

from promptops.contracts.datasets import CALLS, QUARANTINE
from promptops.contracts.records import (
    CALLS_SCHEMA,
    QUARANTINE_SCHEMA,
    ValidatedPage,
    validate_columns,
    validate_page,
)
from promptops.errors import ConfigError, RejectShareExceeded
from promptops.lake.store import Lake
from promptops.settings import get_settings
from promptops.timeutil import hour_floor, hours_between

if TYPE_CHECKING:
    from promptops.ingest.sources.base import SourcePage
    from promptops.platform.paging import CallRecordPage

log = logging.getLogger(__name__)


class CallRecordSource(Protocol):
    """Where pages come from: :class:`promptops.platform.client.PlatformClient` by default, or
    a source of :mod:`promptops.ingest.sources` (OpenTelemetry spans, LiteLLM spend logs)."""

    def iter_call_record_page_bodies(self, start: datetime, end: datetime,
                                     limit: int = ...) -> Iterable[CallRecordPage | SourcePage]:
        ...


@dataclass
class HourResult:
    hour: str
    received: int = 0
    written: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    calls_uri: str | None = None
    quarantine_uri: str | None = None
    #: Rows the partition held before this read (None: it had none) and the good rows this
    #: read found; when it found markedly fewer, the partition was kept and nothing written.
    existing_rows: int | None = None
    reread_rows: int = 0
    kept_existing: bool = False

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class IngestSummary:
    window_start: str
    window_end: str
    hours: list[HourResult]

    @property
    def received(self) -> int:
        return sum(h.received for h in self.hours)

    @property
    def rejected(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for h in self.hours:
            for reason, n in h.rejected.items():
                out[reason] = out.get(reason, 0) + n
        return out

    def as_dict(self) -> dict:
        """Small and JSON-safe: what goes to XCom."""
        return {
            "window_start": self.window_start,
            "window_end": self.window_end,
            "received": self.received,
            "written": sum(h.written for h in self.hours),
            "duplicates": sum(h.duplicates for h in self.hours),
            "rejected": self.rejected,
            "kept_existing": [h.hour for h in self.hours if h.kept_existing],
            "hours": [asdict(h) for h in self.hours],
        }


@contextlib.contextmanager
def _no_cyclic_gc():
    """Dict pages are millions of small acyclic dicts, freed by reference counting; the cyclic
    collector would only re-scan them over and over (a third of the ingest's CPU on that
    path; Arrow pages make few Python objects, but lose nothing by it either)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def validate_call_page(page: CallRecordPage | SourcePage, start: datetime,
                       end: datetime) -> ValidatedPage:
    """Validate one page from the client: on its Arrow columns where the client could read
    it straight into Arrow, else on its records as Python objects. The rules, and so the
    good rows and the rejects with their reasons, are the same either way."""
    if page.columns is not None:
        return validate_columns(page.columns, start, end, page.records)
    checked = validate_page(page.records(), start, end,
                            optional=getattr(page, "optional", frozenset()))
    # A source's page (promptops.ingest.sources) also carries what it could not map at all.
    early = getattr(page, "rejects", None)
    if early:
        checked.rejects[:0] = early
    return checked


def replace_requested(conf: Mapping | None) -> bool:
    """The run conf's ``replace`` flag: true lets this run's reads replace partitions even
    where they found markedly fewer rows (a deliberate backfill of a platform that lost data
    for good)."""
    value = (conf or {}).get("replace", False)
    if not isinstance(value, bool):
        raise ConfigError(f'run conf "replace" is {value!r}: use true or false (JSON booleans), '
                         """e.g. --dag-run-conf '{"replace": true}'""")
    return value


def keep_existing_partition(lake: Lake, result: HourResult, reread_rows: int, *,
                            replace: bool, min_share: float | None) -> bool:
    """Decide, before anything is replaced, whether this read of ``result.hour`` must leave
    the hour's partitions as they are; records both counts on ``result``. The count of the
    partition comes from its Parquet footer."""
    hour = datetime.fromisoformat(result.hour)
    existing = lake.partition_rows(CALLS, hour)
    result.existing_rows, result.reread_rows = existing, reread_rows
    if replace or existing is None:
        return False
    share = get_settings().reread_min_share if min_share is None else min_share
    if existing:
        if reread_rows and reread_rows >= share * existing:
            return False
    # An hour of rejects only: an answer with no records at all must not wipe its quarantine.
    elif result.received or not lake.partition_rows(QUARANTINE, hour):
        return False
    result.kept_existing = True
    result.calls_uri = str(lake.partition_file(CALLS, hour))
    log.warning(
        "hour %s: the re-read found %d rows where the partition holds %d rows (%s); kept the "
        "partition and its quarantine as they were. If the platform lost the hour or lags "
        "(retention, an outage), nothing needs doing; if the hour really has fewer records "
        'now, rerun with the run conf {"replace": true}.', result.hour, reread_rows, existing,
        f"fewer than PROMPTOPS_REREAD_MIN_SHARE={share:g} of them" if existing
        else "and quarantined records, where the platform now returned none")
    return True


def ingest_hour(source: CallRecordSource, lake: Lake, hour: datetime, *, run_id: str | None,
                page_size: int = 10_000, replace: bool = False,
                reread_min_share: float | None = None) -> HourResult:
    """Read one hour whole, write its ``calls`` partition and its quarantine, unless the hour
    had a partition and this read found markedly fewer rows (see the module's doc;
    ``reread_min_share`` None means ``PROMPTOPS_REREAD_MIN_SHARE``)."""
    hour = hour_floor(hour)
    end = hour + timedelta(hours=1)
    result = HourResult(hour=hour.isoformat())
    seen: set[str] = set()
    seen_add = seen.add
    rejects: list[dict] = []

    with _no_cyclic_gc(), lake.partition_writer(CALLS, hour, CALLS_SCHEMA) as writer:
        for page in source.iter_call_record_page_bodies(hour, end, limit=page_size):
            result.pages += 1
            result.received += len(page)
            checked = validate_call_page(page, hour, end)
            rejects.extend(checked.rejects)
            good = checked.good
            ids = good.column("call_id").to_pylist()
            # Keep the first copy of each call_id across the whole hour.
            keep = np.fromiter((not (i in seen or seen_add(i)) for i in ids),
                               dtype=bool, count=len(ids))
            if not keep.all():
                result.duplicates += int((~keep).sum())
                good = good.filter(pa.array(keep))
            writer.write(good)
        if keep_existing_partition(lake, result, writer.rows, replace=replace,
                                   min_share=reread_min_share):
            writer.discard()

    for rej in rejects:
        result.rejected[rej["reason"]] = result.rejected.get(rej["reason"], 0) + 1
    if result.kept_existing:
        return result
    result.written = writer.rows
    assert writer.info is not None  # the writer was not discarded (kept_existing above)
    result.calls_uri = writer.info.uri
    if rejects:
        now = datetime.now(UTC)
        table = pa.Table.from_pylist(
            [{**r, "window_start": hour, "window_end": end, "run_id": run_id, "ingested_at": now}
             for r in rejects], schema=QUARANTINE_SCHEMA)
        result.quarantine_uri = lake.write_partition(QUARANTINE, hour, table).uri
    else:
        lake.delete_partition(QUARANTINE, hour)  # a rerun that finds none clears old ones
    log.info("hour %s: %d received, %d written, %d duplicates, rejected %s",
             result.hour, result.received, result.written, result.duplicates,
             result.rejected or "none")
    return result


def ingest_interval(source: CallRecordSource, lake: Lake, start: datetime, end: datetime, *,
                    run_id: str | None = None, lateness_hours: int = 1,
                    page_size: int = 10_000, max_reject_share: float = 0.05,
                    replace: bool = False,
                    reread_min_share: float | None = None) -> IngestSummary:
    """Ingest every hour of ``[start - lateness_hours, end)``, then check the reject share.

    The partitions (good rows and quarantine) are written before the share is checked, so a
    failed run keeps everything it read; fixing the cause and rerunning replaces them.
    """
    first = hour_floor(start) - timedelta(hours=lateness_hours)
    hours = [ingest_hour(source, lake, h, run_id=run_id, page_size=page_size, replace=replace,
                         reread_min_share=reread_min_share)
             for h in hours_between(first, end)]
    summary = IngestSummary(window_start=first.isoformat(), window_end=end.isoformat(),
                            hours=hours)
    check_reject_share(summary, max_reject_share)
    return summary


def check_reject_share(summary: IngestSummary, max_reject_share: float) -> None:
    """Fail, after everything was written, when too many records broke the contract."""
    hours = summary.hours
    rejected = sum(h.rejected_total for h in hours)
    if summary.received and rejected / summary.received > max_reject_share:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(summary.rejected.items()))
        where = sorted({h.quarantine_uri for h in hours if h.quarantine_uri})
        kept = [h.hour for h in hours if h.kept_existing]
        raise RejectShareExceeded(
            f"{rejected} of {summary.received} call records "
            f"({rejected / summary.received:.1%}) between {summary.window_start} and "
            f"{summary.window_end} broke the record schema ({reasons}); the limit is "
            f"{max_reject_share:.1%}. The good records were written; the rejected ones, with "
            f"their reasons and raw JSON, are in {', '.join(where) or 'no quarantine'}"
            + (f" (the hours {', '.join(kept)} kept their earlier partitions and quarantine: "
               "their re-reads found too few rows and were not stored)" if kept else "")
            + ". Ask the platform team to fix them, or raise PROMPTOPS_MAX_REJECT_SHARE, then "
            "rerun this run."
        )
