"""The health tests' simulator: a flooding user around a fixed "now" (the health metrics and
the health pipeline's tests, fixture ``health_sim``)."""

from __future__ import annotations

from datetime import UTC, datetime

#: The simulator's fixed clock; the flood runs for the whole hour around it.
NOW = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)
FLOODER = "user-042"

SCENARIO = """
seed: 11
calls_per_hour: 3000
incidents:
  - name: flood
    kind: user_flood
    start: 2026-11-20T16:00:00Z
    end: 2026-11-20T17:00:00Z
    slice: {user_id: user-042}
    params: {calls_per_minute: 150}
"""
