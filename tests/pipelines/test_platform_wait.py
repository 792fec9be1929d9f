"""The hourly DAG's wait for the platform, one look at a time, against a real simulator: a
look says what it saw, and a platform that does not answer is a cause, not a crash. (The
sensor timing out with that cause runs under dag.test() in
tests/integration/test_failure_alerts.py.)"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from functools import partial

import pytest

from promptops.errors import AuthenticationFailed
from promptops.pipelines.health import api_rows_at, look_at_platform
from promptops.platform.client import PlatformClient


def test_a_healthy_platform_is_ready(health_sim):
    look = look_at_platform(partial(PlatformClient, health_sim.url, health_sim.api_key))
    assert look.ready and look.status == "ok"
    assert look.said.startswith("platform health: ok (")


def test_a_degraded_platform_is_not_ready_and_says_why(health_sim):
    health_sim.set_faults([{"kind": "degraded", "path_prefix": "/health",
                            "reason": "primary database failing over"}])
    try:
        look = look_at_platform(partial(PlatformClient, health_sim.url, health_sim.api_key))
    finally:
        health_sim.clear_faults()
    assert not look.ready and look.status == "degraded"
    assert "reason: primary database failing over" in look.said


def test_a_platform_that_does_not_answer_is_a_cause():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    look = look_at_platform(partial(PlatformClient, f"http://127.0.0.1:{port}", "k"))
    assert (look.ready, look.status) == (False, "no_answer")
    assert f"127.0.0.1:{port} (connection refused)" in look.said


def test_a_wrong_key_fails_the_health_run_instead_of_hiding_in_a_note(health_sim):
    # A platform that is down is a finding (api_up=0); a key it refuses is promptops' own
    # failure, which must fail the run so that its failure alert goes out.
    at = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)
    with PlatformClient(health_sim.url, "sk-canary-wrong-2718", max_retries=0) as client:
        with pytest.raises(AuthenticationFailed):
            api_rows_at(at, client)
    with PlatformClient(health_sim.url, health_sim.api_key, max_retries=0) as client:
        health_sim.set_faults([{"kind": "error", "code": 5000, "path_prefix": "/v1"}])
        try:
            api = api_rows_at(at, client)
        finally:
            health_sim.clear_faults()
    assert "no call records for the last 5 minutes" in api["notes"][0]
    assert {r["metric"] for r in api["rows"]} >= {"api_up"}
