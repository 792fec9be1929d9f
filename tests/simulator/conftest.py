"""Fixtures: one real simulator process for most tests, built from a test scenario, and an
in-process Platform with the same configuration for ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptops.simulator import Platform, SimClock, SimConfig, SimulatorProcess
from tests.helpers.simulator import NOW

SCENARIO = """
seed: 7
calls_per_hour: 6000
data_faults: {malformed_rate: 0.01, duplicate_rate: 0.01, late_rate: 0.05}
incidents:
  - name: sonnet-errors
    kind: error_burst
    start: 2026-11-20T13:00:00Z
    end: 2026-11-20T15:00:00Z
    slice: {model: claude-3-5-sonnet}
    params: {error_rate: 0.5, error_codes: [5000, 2001]}
  - name: eu-slow
    kind: latency_spike
    start: 2026-11-20T10:00:00Z
    end: 2026-11-20T11:00:00Z
    slice: {region: eu-west-1}
    params: {multiplier: 6}
  - name: flood
    kind: user_flood
    start: 2026-11-20T08:00:00Z
    end: 2026-11-20T08:30:00Z
    slice: {user_id: user-042}
    params: {calls_per_minute: 200}
  - name: code-tokens
    kind: token_surge
    start: 2026-11-20T09:00:00Z
    end: 2026-11-20T10:00:00Z
    slice: {app: code-assistant}
    params: {multiplier: 4}
  - name: triage-v3
    kind: intent_drop
    start: 2026-11-20T06:00:00Z
    end: 2026-11-20T08:00:00Z
    slice: {prompt_template: support_triage}
    params: {accuracy: 0.6}
  - name: search-relevance
    kind: relevance_drop
    start: 2026-11-20T05:00:00Z
    end: 2026-11-20T06:00:00Z
    slice: {app: search-qa}
    params: {mean: 2.5}
  - name: node2-hot
    kind: gpu_saturation
    start: now
    end: now+1h
    slice: {gpu_node: gpu-node-02}
  - name: outage
    kind: api_down
    start: 2026-11-21T02:00:00Z
    end: 2026-11-21T03:00:00Z
    params: {error_code: 5000}
"""


@pytest.fixture(scope="session")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "test-scenario.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture(scope="session")
def sim(scenario_file: Path):
    with SimulatorProcess("--scenario", str(scenario_file), "--now", NOW.isoformat(),
                          "--action-duration-s", "1", seed=7, read_only_key="ro-key") as proc:
        yield proc


@pytest.fixture(scope="session")
def truth_platform(scenario_file: Path) -> Platform:
    """The same platform in process; its served_with_truth is the ground truth."""
    config = SimConfig.build(scenario_file, seed=7)
    return Platform(config, SimClock(NOW), start=NOW)


@pytest.fixture()
def at_now(sim: SimulatorProcess):
    """Tests that move the clock put it back, so later tests see the fixed NOW."""
    sim.set_clock(NOW)
    yield sim
    sim.set_clock(NOW)
    sim.clear_faults()
