"""Constants shared by the health tests (a helper module, not conftest, so the name is unique
across test folders)."""

from __future__ import annotations

from datetime import UTC, datetime

#: The simulator's fixed clock; the flood runs for the whole hour around it.
NOW = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)
FLOODER = "user-042"
