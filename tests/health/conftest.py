"""Fixtures: a real simulator with a flooding user at the fixed "now", and a client for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from healthhelpers import NOW

from promptops.metrics import gpu
from promptops.platform.client import PlatformClient
from promptops.simulator import SimulatorProcess

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


@pytest.fixture(scope="session")
def health_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    path: Path = tmp_path_factory.mktemp("health-scenario") / "scenario.yaml"
    path.write_text(SCENARIO)
    with SimulatorProcess("--scenario", str(path), "--now", NOW.isoformat(), seed=11) as proc:
        yield proc


@pytest.fixture()
def client(health_sim: SimulatorProcess) -> Iterator[PlatformClient]:
    with PlatformClient(health_sim.url, health_sim.api_key, max_retries=1) as c:
        yield c


@pytest.fixture(autouse=True)
def _fresh_said() -> Iterator[None]:
    """Each test sees a process that has not yet said "NVML is missing"."""
    gpu._SAID.clear()
    yield
    gpu._SAID.clear()
