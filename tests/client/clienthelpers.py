"""Constants and helpers shared by the client tests (a module of its own: with several
conftest.py files in the suite, ``from conftest import ...`` is ambiguous)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from promptops.simulator.process import SimulatorProcess

#: A distinctive key: any test may grep outputs for it.
CANARY_KEY = "sk-canary-XYZ-4242"
RO_KEY = "sk-canary-RO-4242"
#: The simulator's clock is pinned so the data and late-record visibility are deterministic.
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
WINDOW = (datetime(2026, 11, 20, 12, 0, tzinfo=UTC), datetime(2026, 11, 20, 13, 0, tzinfo=UTC))



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


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
