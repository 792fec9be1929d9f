"""The daily run's housekeeping: is the day complete, and what is old enough to go.

- :func:`day_completeness`: which of the day's 24 hourly partitions exist, per dataset.
  Missing hours are named with the command that fills them; they are never counted as
  zero traffic by anything downstream (reports and baselines read them as gaps).
- :func:`apply_retention`: delete hourly partitions older than each dataset's age.
- :func:`failed_steps`: which steps of a run failed (the run's last step fails it on them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptops.lake.store import Lake, as_utc

log = logging.getLogger(__name__)

HOURLY_DAG_ID = "promptops_hourly"


class RetentionConfig(BaseSettings):
    """Ages in days (``PROMPTOPS_RETENTION_<DATASET>_DAYS``); 0 keeps a dataset forever."""

    model_config = SettingsConfigDict(env_prefix="PROMPTOPS_RETENTION_", extra="ignore")

    calls_days: int = Field(default=35, ge=0)
    quarantine_days: int = Field(default=35, ge=0)
    metrics_days: int = Field(default=400, ge=0)
    heal_requests_days: int = Field(default=400, ge=0)
    baselines_days: int = Field(default=60, ge=0)
    reports_days: int = Field(default=400, ge=0)

    def ages(self) -> dict[str, int]:
        return {name.removesuffix("_days"): days for name, days in self.model_dump().items()}


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
                     datasets: tuple[str, ...] = ("calls", "metrics")) -> Completeness:
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
    for h in sorted(gaps) + [None]:  # type: ignore[list-item]
        if h is not None and run and h == run[-1] + timedelta(hours=1):
            run.append(h)
            continue
        if run:
            result.backfill_commands.append(backfill_command(run[0], run[-1]))
        run = [h] if h is not None else []
    return result


def apply_retention(lake: Lake, today: datetime, config: RetentionConfig | None = None,
                    ) -> dict[str, int]:
    """Delete hourly partitions older than each dataset's age; returns deletions per dataset.

    Ages count whole days back from ``today``'s start (the run's day, not the wall clock),
    so a backfilled daily run never deletes what a later day still keeps."""
    config = config or RetentionConfig()
    cutoff_base = day_start(today)
    deleted: dict[str, int] = {}
    for dataset, days in config.ages().items():
        if days <= 0:
            continue
        cutoff = cutoff_base - timedelta(days=days)
        if dataset == "reports":  # one folder per day, not hourly partitions
            deleted[dataset] = _delete_old_reports(lake, cutoff)
            continue
        old = [h for h in lake.list_partitions(dataset) if h < cutoff]
        for h in old:
            lake.delete_partition(dataset, h)
        if old:
            log.info("retention: deleted %d %s partitions before %s", len(old), dataset,
                     cutoff.isoformat())
        deleted[dataset] = len(old)
    return deleted


def failed_steps(states: Mapping[str, str | None]) -> list[str]:
    """Task ids (sorted) whose state says the step did not do its work: it failed, or a
    step it needs failed."""
    return sorted(task_id for task_id, state in states.items()
                  if state in ("failed", "upstream_failed"))


def _delete_old_reports(lake: Lake, cutoff: datetime) -> int:
    from promptops.reports.cost_report import REPORTS, list_report_dates

    old = [d for d in list_report_dates(lake) if d < cutoff.date()]
    for d in old:
        folder = lake.root / REPORTS / f"date={d:%Y-%m-%d}"
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
    if old:
        log.info("retention: deleted %d daily reports before %s", len(old), cutoff.date())
    return len(old)
