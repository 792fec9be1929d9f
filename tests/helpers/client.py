"""Constants and helpers shared by the platform client tests."""

from __future__ import annotations

from datetime import UTC, datetime

#: A distinctive key: any test may grep outputs for it.
CANARY_KEY = "sk-canary-XYZ-4242"
RO_KEY = "sk-canary-RO-4242"
#: The simulator's clock is pinned so the data and late-record visibility are deterministic.
NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
WINDOW = (datetime(2026, 11, 20, 12, 0, tzinfo=UTC), datetime(2026, 11, 20, 13, 0, tzinfo=UTC))




class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
