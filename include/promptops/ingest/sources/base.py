"""The page a source hands to the shared ingest: call records in the platform API's shape,
plus the records the source itself could not map, already rejected with their reason."""

from __future__ import annotations

from typing import Any

import orjson

from promptops.contracts.records import SOURCE_OPTIONAL


class SourcePage:
    """One page of a source: ``records`` (dicts shaped like the platform API's call
    records) for the shared validation, and ``rejects`` (``{"reason", "field", "call_id",
    "raw"}``, as :func:`promptops.contracts.records.validate_page` makes them) for what the
    source could not map at all (a malformed span). Both count as received.

    ``optional``: required fields of the API contract this source may not have (null, never
    invented; metrics that need them say "no data")."""

    __slots__ = ("_records", "rejects", "optional")
    columns = None  # validated as Python objects, never as the API's Arrow pages

    def __init__(self, records: list[dict[str, Any]], rejects: list[dict[str, Any]] | None = None,
                 *, optional: frozenset[str] = SOURCE_OPTIONAL) -> None:
        self._records = records
        self.rejects = list(rejects or [])
        self.optional = optional

    def __len__(self) -> int:
        return len(self._records) + len(self.rejects)

    def records(self) -> list[dict[str, Any]]:
        return self._records


def source_reject(reason: str, raw: Any, *, field: str | None = None,
                  call_id: str | None = None) -> dict[str, Any]:
    """A record the source could not map, kept aside with its reason (``raw`` as JSON)."""
    text = raw if isinstance(raw, str) else orjson.dumps(
        raw, option=orjson.OPT_SORT_KEYS, default=str).decode()
    return {"reason": reason, "field": field, "call_id": call_id, "raw": text}
