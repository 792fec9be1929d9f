"""Constants and helpers shared by the judge tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from promptops.contracts.records import CALLS_SCHEMA, validate_page
from promptops.simulator import Platform, SimClock, SimConfig, SimulatorProcess
from tests.helpers.simulator import settled_log

#: A distinctive key: the tests grep every output for it.
CANARY_KEY = "sk-canary-JUDGE-7731"
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
HOUR = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
JUDGE_PATH = "/v1/chat/completions"


def hour_of_calls(hour: datetime = HOUR, seed: int = 7) -> pa.Table:
    """One real simulated hour, validated into the lake schema (what the lake holds)."""
    platform = Platform(SimConfig.build(None, seed=seed), SimClock(NOW), start=NOW)
    end = hour + timedelta(hours=1)
    records = [s.record for s in platform.served_with_truth(hour, end, now=NOW)]
    return validate_page(records, hour, end).good


def call_row(call_id: str, *, prompt: str | None = "Why was I charged twice?",
             response: str | None = "Sure. (billing)", score: float | None = None,
             status: str = "success", app: str = "support-chat") -> dict[str, Any]:
    """A minimal valid row of CALLS_SCHEMA for hand-built tables."""
    return {"call_id": call_id, "ts": HOUR, "user_id": "user-001", "app": app,
            "model": "gpt-4o", "status": status, "latency_ms": 100.0, "prompt_tokens": 10,
            "completion_tokens": 5, "relevance_score": score, "prompt_text": prompt,
            "response_text": response}


def calls_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=CALLS_SCHEMA)


def judge_requests(sim: SimulatorProcess, expect: int = 0, timeout: float = 10.0,
                   settle: float = 0.1) -> list[dict[str, Any]]:
    """The simulator's log of judge requests once it stops changing."""
    return settled_log(sim, expect, JUDGE_PATH, timeout=timeout, settle=settle)
