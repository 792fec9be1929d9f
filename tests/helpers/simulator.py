"""Helpers for tests against a simulator process: its request log once settled (client and
judge tests); for the simulator's own tests, HTTP paging and a tiny independent record check."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import requests

from promptops.simulator import SimulatorProcess

#: The fixed simulated "now" of the main test simulator.
NOW = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)


def settled_log(sim: SimulatorProcess, expect: int = 0, path_prefix: str = "/v1",
                timeout: float = 10.0, settle: float = 0.1) -> list[dict[str, Any]]:
    """The simulator's request log (entries under ``path_prefix``) once it stops changing.

    The simulator appends an entry after it has sent the answer, so the client can hold an
    answer whose entry is not there yet: wait for ``expect`` entries, then for quiet.
    """
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    quiet_since = time.monotonic()
    while True:
        log = [e for e in sim.requests_log() if e["path"].startswith(path_prefix)]
        now = time.monotonic()
        if len(log) != len(last):
            last, quiet_since = log, now
        if (len(log) >= expect and now - quiet_since >= settle) or now > deadline:
            return log
        time.sleep(0.02)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def get_records(sim: SimulatorProcess, start: datetime, end: datetime, limit: int = 10_000,
                **extra: Any) -> requests.Response:
    params = {"start": iso(start), "end": iso(end), "limit": str(limit), **extra}
    return requests.get(sim.url + "/v1/call_records", params=params, headers=sim.headers,
                        timeout=30)


def walk(sim: SimulatorProcess, start: datetime, end: datetime,
         limit: int = 10_000) -> tuple[list[dict[str, Any]], list[int]]:
    """Every record of the window through the API, and the size of each page."""
    out: list[dict[str, Any]] = []
    sizes: list[int] = []
    cursor = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        resp = get_records(sim, start, end, limit, **extra)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        out.extend(body["data"])
        sizes.append(len(body["data"]))
        cursor = body["next_cursor"]
        if cursor is None:
            return out, sizes
        assert len(sizes) < 10_000


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
REQUIRED = ("call_id", "ts", "user_id", "app", "model", "status", "latency_ms",
            "prompt_tokens", "completion_tokens")


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_num(v: Any) -> bool:
    return type(v) in (int, float)


def problems(rec: dict[str, Any], start: datetime, end: datetime) -> list[tuple[str, str]]:
    """(reason, field) for every contract rule the record breaks; written independently of
    the simulator so it checks the simulator's truth rather than repeating it."""
    out: list[tuple[str, str]] = []
    for f in REQUIRED:
        if f not in rec:
            out.append(("missing_field", f))
    for f in ("call_id", "user_id", "app", "model"):
        if f in rec and not isinstance(rec[f], str):
            out.append(("wrong_type", f))
    if "status" in rec:
        if not isinstance(rec["status"], str):
            out.append(("wrong_type", "status"))
        elif rec["status"] not in ("success", "error"):
            out.append(("invalid_value", "status"))
    for f in ("prompt_tokens", "completion_tokens", "cached_tokens"):
        if f in rec:
            if not _is_int(rec[f]):
                out.append(("wrong_type", f))
            elif rec[f] < 0:
                out.append(("negative_value", f))
    if "latency_ms" in rec:
        if not _is_num(rec["latency_ms"]):
            out.append(("wrong_type", "latency_ms"))
        elif rec["latency_ms"] < 0:
            out.append(("negative_value", "latency_ms"))
    if "relevance_score" in rec:
        v = rec["relevance_score"]
        if not _is_num(v):
            out.append(("wrong_type", "relevance_score"))
        elif not 1 <= v <= 5:
            out.append(("out_of_range", "relevance_score"))
    if "ts" in rec:
        v = rec["ts"]
        parsed = None
        if isinstance(v, str) and _RFC3339.match(v):
            try:
                parsed = ts(v)
            except ValueError:
                parsed = None
        if parsed is None:
            out.append(("bad_timestamp", "ts"))
        elif not start <= parsed < end:
            out.append(("ts_outside_window", "ts"))
    return out


def clean(records: list[dict[str, Any]], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Records that break no rule, for statistics."""
    return [r for r in records if not problems(r, start, end)]
