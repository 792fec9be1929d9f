"""The heal tests' policy and simulated clock (the heal DAG, approval and stack tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.helpers import ROOT

#: The simulated clock starts here: the flood and the error burst are both going on.
SIM_NOW = datetime(2026, 11, 20, 10, 12, tzinfo=UTC)


def short_policy(tmp_path: Path, **changes: str) -> Path:
    """The shipped heal policy with short verification timings (a heal verifies in about a
    minute) and ``changes`` (old text: new text), written into ``tmp_path``."""
    text = (ROOT / "include/config/heal_policy.yaml").read_text()
    for old, new in {"settle: 2m": "settle: 0s", "window: 5m": "window: 1m",
                     "poke_interval: 30s": "poke_interval: 3s",
                     "ingest_lag: 60s": "ingest_lag: 5s", **changes}.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "heal_policy.yaml"
    path.write_text(text)
    return path
