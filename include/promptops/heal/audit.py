"""The heal audit: one record per heal step in the lake dataset ``heal_audit``.

Who or what asked, what policy and the approver decided, what the platform answered and
whether the metric recovered. The records are also the history the heal policy reads
(cool-down per target, actions per hour).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from promptops.contracts.datasets import HEAL_AUDIT as AUDIT_DATASET
from promptops.lake.store import Lake
from promptops.timeutil import as_utc

_TS = pa.timestamp("us", tz="UTC")
AUDIT_SCHEMA = pa.schema([
    pa.field("idempotency_key", pa.string(), nullable=False),
    pa.field("requested_at", _TS, nullable=False),
    pa.field("run_id", pa.string()),
    pa.field("step", pa.string()),
    pa.field("action", pa.string(), nullable=False),
    pa.field("target", pa.string(), nullable=False),
    pa.field("params_json", pa.string()),
    pa.field("dry_run", pa.bool_(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("requested_by", pa.string()),
    pa.field("alert_fingerprint", pa.string()),
    # auto_approved | approved | rejected | timed_out | denied (by policy) | invalid |
    # stale (an alert from an evaluation too old to act on: reported, never triggered)
    pa.field("decision", pa.string(), nullable=False),
    pa.field("decided_by", pa.string()),
    pa.field("decision_reason", pa.string()),
    pa.field("action_id", pa.string()),
    pa.field("platform_status", pa.string()),
    pa.field("platform_detail", pa.string()),
    # recovered | not_recovered | skipped | None (not verified yet)
    pa.field("verification", pa.string()),
    pa.field("verification_detail", pa.string()),
    pa.field("finished_at", _TS),
])


@dataclass(frozen=True)
class AuditRecord:
    """One heal step as it happened: who asked, what was decided, what the platform said,
    whether the metric recovered."""

    idempotency_key: str
    requested_at: datetime
    action: str
    target: str
    decision: str
    dry_run: bool = True
    run_id: str | None = None
    step: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    requested_by: str | None = None
    alert_fingerprint: str | None = None
    decided_by: str | None = None
    decision_reason: str | None = None
    action_id: str | None = None
    platform_status: str | None = None
    platform_detail: str | None = None
    verification: str | None = None
    verification_detail: str | None = None
    finished_at: datetime | None = None

    @property
    def counts_as_action(self) -> bool:
        """A real action the platform accepted: what cool-down and the hourly cap count."""
        return not self.dry_run and self.action_id is not None

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["params_json"] = json.dumps(row.pop("params"), sort_keys=True)
        row["requested_at"] = as_utc(self.requested_at)
        row["finished_at"] = as_utc(self.finished_at) if self.finished_at else None
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditRecord:
        row = dict(row)
        row["params"] = json.loads(row.pop("params_json") or "{}")
        return cls(**row)


def write_audit(lake: Lake, record: AuditRecord) -> None:
    """Add (or replace) one record: the file ``<idempotency_key>.parquet`` in its request
    hour's folder of ``heal_audit``. One file per heal step, written only by its own run, so
    concurrent heal runs never lose each other's records and a retried task replaces its own.
    """
    table = pa.Table.from_pylist([record.to_row()], schema=AUDIT_SCHEMA)
    lake.write_record(AUDIT_DATASET, as_utc(record.requested_at), record.idempotency_key, table)


def read_audit(lake: Lake, start: datetime, end: datetime) -> list[AuditRecord]:
    """Every audit record requested in ``[start, end)``, oldest first."""
    start, end = as_utc(start), as_utc(end)
    table = lake.read_records(AUDIT_DATASET, start, end)
    if table is None:
        return []
    table = table.select(AUDIT_SCHEMA.names).cast(AUDIT_SCHEMA)
    records = [AuditRecord.from_row(r) for r in table.to_pylist()]
    records = [r for r in records if start <= as_utc(r.requested_at) < end]
    return sorted(records, key=lambda r: (as_utc(r.requested_at), r.idempotency_key))
