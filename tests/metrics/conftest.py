"""Fixtures for the metrics tests. The judge's: one real simulator process (its judge
endpoint), a clean fault and request-log state per test, and judges with millisecond backoffs.
The health and GPU checks': a client of ``health_sim`` and a GPU module that has said nothing
yet."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest
import requests

from promptops.metrics import gpu
from promptops.metrics.judge import JudgeConfig, RelevanceJudge
from promptops.platform.client import PlatformClient
from promptops.simulator import SimulatorProcess
from tests.helpers.judge import CANARY_KEY, NOW, hour_of_calls, judge_requests


@pytest.fixture(autouse=True)
def no_judge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own PROMPTOPS_JUDGE_* settings must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith("PROMPTOPS_JUDGE_") or name == "AIRFLOW_CONN_RELEVANCE_JUDGE":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def judge_sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--calls-per-hour", "500", "--now", NOW.isoformat(),
                          api_key=CANARY_KEY, seed=7) as proc:
        yield proc


def _clear_judge_rules(sim: SimulatorProcess) -> None:
    requests.delete(sim.url + "/_sim/judge", timeout=5).raise_for_status()


@pytest.fixture()
def clean_sim(judge_sim: SimulatorProcess,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatorProcess]:
    """No transport faults, no judge content rules, an empty request log; restored after.

    A 'slow' fault keeps a server thread asleep after the client gave up; its request-log
    entry lands when it wakes. Teardown waits that long, so it cannot land in the next
    test's log.
    """
    judge_sim.clear_faults()
    _clear_judge_rules(judge_sim)
    judge_requests(judge_sim, settle=0.05)  # an entry of the previous test may still land
    judge_sim.clear_requests_log()
    slowest = [0.0]
    set_faults = judge_sim.set_faults

    def recording(faults: list[dict[str, Any]]) -> None:
        slowest[0] = max([slowest[0], *(f.get("delay_s", 0.0) for f in faults)])
        set_faults(faults)

    monkeypatch.setattr(judge_sim, "set_faults", recording)
    yield judge_sim
    judge_sim.clear_faults()
    _clear_judge_rules(judge_sim)
    if slowest[0]:
        time.sleep(slowest[0] + 0.1)


@pytest.fixture()
def judge_rules(clean_sim: SimulatorProcess) -> Callable[[list[dict[str, Any]]], None]:
    def add(rules: list[dict[str, Any]]) -> None:
        requests.post(clean_sim.url + "/_sim/judge", json=rules, timeout=5).raise_for_status()
    return add


@pytest.fixture()
def make_judge(clean_sim: SimulatorProcess) -> Iterator[Callable[..., RelevanceJudge]]:
    made: list[RelevanceJudge] = []

    def make(**kw: Any) -> RelevanceJudge:
        opts: dict[str, Any] = {"model": "sim-judge", "timeout_s": 5.0,
                                "connect_timeout_s": 2.0, "max_retries": 2,
                                "backoff_factor_s": 0.01, "max_retry_after_s": 2.0,
                                "pool_size": 4}
        opts.update(kw)
        key = opts.pop("api_key", CANARY_KEY)
        judge = RelevanceJudge(clean_sim.url, key, **opts)
        made.append(judge)
        return judge

    yield make
    for judge in made:
        judge.close()


@pytest.fixture()
def config() -> JudgeConfig:
    """An enabled judge with small numbers (explicit values beat the environment)."""
    return JudgeConfig(enabled=True, model="sim-judge", sample_size=8, max_workers=4,
                       budget_s=30, timeout_s=5, max_retries=2, backoff_factor_s=0.01,
                       max_retry_after_s=2)


@pytest.fixture(scope="session")
def calls() -> pa.Table:
    return hour_of_calls()


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
