"""The daily run's housekeeping: what is old enough to go, and which steps failed.

Whether the day is complete is :mod:`promptops.reports.completeness`.

- :func:`apply_retention`: delete hourly partitions older than each dataset's age.
- :func:`failed_steps`: which steps of a run failed (the run's last step fails it on them).
- :func:`build_caller_profiles`: the per-caller peaks by time of day the health sensor and
  the hourly run judge per-caller rules against (from
  :mod:`promptops.detection.caller_history`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptops.contracts.datasets import REPORTS
from promptops.detection.caller_history import build_caller_profiles
from promptops.lake.store import Lake
from promptops.reports.completeness import day_start

log = logging.getLogger(__name__)

__all__ = ["RetentionConfig", "apply_retention", "build_caller_profiles", "failed_steps"]


class RetentionConfig(BaseSettings):
    """Ages in days (``PROMPTOPS_RETENTION_<DATASET>_DAYS``); 0 keeps a dataset forever."""

    model_config = SettingsConfigDict(env_prefix="PROMPTOPS_RETENTION_", extra="ignore")

    calls_days: int = Field(default=35, ge=0)
    quarantine_days: int = Field(default=35, ge=0)
    metrics_days: int = Field(default=400, ge=0)
    heal_requests_days: int = Field(default=400, ge=0)
    baselines_days: int = Field(default=60, ge=0)
    reports_days: int = Field(default=400, ge=0)
    #: One small file a day; only the newest two are read.
    caller_profiles_days: int = Field(default=30, ge=0)

    def ages(self) -> dict[str, int]:
        return {name.removesuffix("_days"): days for name, days in self.model_dump().items()}


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
        if dataset == REPORTS:  # one folder per day, not hourly partitions
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
    from promptops.reports.cost_report import list_report_dates

    old = [d for d in list_report_dates(lake) if d < cutoff.date()]
    for d in old:
        folder = lake.root / REPORTS / f"date={d:%Y-%m-%d}"
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
    if old:
        log.info("retention: deleted %d daily reports before %s", len(old), cutoff.date())
    return len(old)
