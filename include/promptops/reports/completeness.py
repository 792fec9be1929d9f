"""Is a day complete: which of its 24 hourly partitions exist, per dataset.

- :func:`day_completeness`: missing hours are named with the command that fills them; they
  are never counted as zero traffic by anything downstream (reports and baselines read them
  as gaps).
- :func:`backfill_command`: the CLI command that re-runs the hourly DAG for a range of hours.

Used by the daily DAG's completeness check; the cost report names the same backfill
command for the hours it misses, and :mod:`promptops.pipelines.daily` counts retention ages
from :func:`day_start`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from promptops.contracts.datasets import CALLS, METRICS
from promptops.timeutil import as_utc

if TYPE_CHECKING:
    from promptops.lake.store import Lake

HOURLY_DAG_ID = "promptops_hourly"


def day_start(day: datetime) -> datetime:
    return as_utc(day).replace(hour=0, minute=0, second=0, microsecond=0)


def backfill_command(first: datetime, last: datetime, dag_id: str = HOURLY_DAG_ID) -> str:
    """The CLI command that re-runs the hourly DAG for logical dates ``first..last`` (both
    inclusive; a scheduled run's logical date is its hour's start). ``completed`` also
    re-runs hours whose run exists (failed, or succeeded before its partition was lost); a
    rerun replaces its partitions, so nothing is double counted."""
    return (f"airflow backfill create --dag-id {dag_id} "
            f"--from-date {as_utc(first).isoformat()} --to-date {as_utc(last).isoformat()} "
            f"--reprocess-behavior completed")


@dataclass
class Completeness:
    day: str
    #: Dataset -> missing hours (ISO) of the day.
    missing: dict[str, list[str]] = field(default_factory=dict)
    #: One backfill command per run of consecutive missing hours (any dataset).
    backfill_commands: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not any(self.missing.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "complete": self.complete}

    def describe(self) -> str:
        if self.complete:
            return f"{self.day}: all 24 hours present"
        parts = [f"{ds}: {len(hours)} missing ({', '.join(h[11:16] for h in hours)})"
                 for ds, hours in self.missing.items() if hours]
        return (f"{self.day}: incomplete; " + "; ".join(parts) + ". Fill with: "
                + " && ".join(self.backfill_commands))


def day_completeness(lake: Lake, day: datetime,
                     datasets: tuple[str, ...] = (CALLS, METRICS)) -> Completeness:
    start = day_start(day)
    hours = [start + timedelta(hours=i) for i in range(24)]
    result = Completeness(day=f"{start:%Y-%m-%d}")
    gaps: set[datetime] = set()
    for dataset in datasets:
        present = {h for h in lake.list_partitions(dataset) if start <= h < start + timedelta(days=1)}
        missing = [h for h in hours if h not in present]
        result.missing[dataset] = [h.isoformat() for h in missing]
        gaps.update(missing)
    # Consecutive missing hours -> one backfill range each.
    run: list[datetime] = []
    for h in sorted(gaps) + [None]:
        if h is not None and run and h == run[-1] + timedelta(hours=1):
            run.append(h)
            continue
        if run:
            result.backfill_commands.append(backfill_command(run[0], run[-1]))
        run = [h] if h is not None else []
    return result
