"""Fixtures for the client tests: one real simulator process for all client tests, fault
and request-log hygiene between tests, and a factory for clients with small backoffs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from promptops.platform.client import PlatformClient
from promptops.simulator.process import SimulatorProcess
from tests.helpers.client import CANARY_KEY, NOW, RO_KEY, FakeClock
from tests.helpers.simulator import settled_log


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--calls-per-hour", "2000", "--now", NOW.isoformat(),
                          "--action-duration-s", "1", api_key=CANARY_KEY, seed=7,
                          read_only_key=RO_KEY) as proc:
        yield proc


@pytest.fixture()
def clean_sim(sim: SimulatorProcess) -> Iterator[SimulatorProcess]:
    """The simulator with no faults and an empty request log, restored afterwards."""
    sim.clear_faults()
    sim.set_clock(NOW)
    sim.clear_requests_log()
    settled_log(sim, settle=0.05)  # an entry of the previous test may still land
    sim.clear_requests_log()
    yield sim
    sim.clear_faults()


@pytest.fixture()
def make_client(clean_sim: SimulatorProcess) -> Iterator[Callable[..., PlatformClient]]:
    """Clients against the simulator with millisecond backoffs; closed after the test."""
    made: list[PlatformClient] = []

    def make(**kw: Any) -> PlatformClient:
        opts: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 5.0, "max_retries": 3,
                                "backoff_factor": 0.01, "backoff_max": 0.05,
                                "max_retry_after": 5.0}
        opts.update(kw)
        key = opts.pop("api_key", clean_sim.api_key)
        client = PlatformClient(clean_sim.url, key, **opts)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture()
def client_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()
