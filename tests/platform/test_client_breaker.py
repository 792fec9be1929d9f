"""The client's circuit breaker against the real simulator, across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from promptops.errors import AuthenticationFailed, CircuitOpenError, PlatformInternalError
from promptops.platform.breaker import CLOSED, OPEN, CircuitBreaker, FileBreakerStore
from tests.helpers.client import WINDOW, FakeClock
from tests.helpers.simulator import settled_log

GPU = "/v1/gpu_metrics"

OTHER_PROCESS = textwrap.dedent("""
    import os, sys
    from promptops.platform.breaker import CircuitBreaker, FileBreakerStore
    from promptops.platform.client import PlatformClient
    from promptops.errors import CircuitOpenError
    breaker = CircuitBreaker("prompt_platform", FileBreakerStore(sys.argv[2]),
                             failure_threshold=2, cooldown_s=3600)
    with PlatformClient(sys.argv[1], os.environ["PROMPT_API_KEY"], breaker=breaker) as c:
        try:
            c.gpu_metrics()
        except CircuitOpenError as exc:
            print("REJECTED:", exc)
        else:
            print("ADMITTED")
""")


def v1_count(sim, expect: int = 0) -> int:
    return len(settled_log(sim, expect))


def test_breaker_opens_fails_fast_survives_a_process_and_recovers(make_client, clean_sim,
                                                                  tmp_path: Path):
    state_dir = tmp_path / "breakers"
    clock = FakeClock(start=time.time())  # near real time: the child reads it
    breaker = CircuitBreaker("prompt_platform", FileBreakerStore(state_dir),
                             failure_threshold=2, cooldown_s=3600, clock=clock)
    client = make_client(max_retries=1, breaker=breaker)
    clean_sim.set_faults([{"kind": "error", "code": 5000, "path_prefix": GPU}])

    for _ in range(2):  # two logical requests, each retried once, fail: the circuit opens
        with pytest.raises(PlatformInternalError):
            client.gpu_metrics()
    assert v1_count(clean_sim, 4) == 4
    assert breaker.state().state == OPEN

    settled_log(clean_sim)  # let the last entry land before clearing
    clean_sim.clear_requests_log()
    with pytest.raises(CircuitOpenError) as info:
        client.gpu_metrics()
    msg = str(info.value)
    assert "'prompt_platform' is open" in msg and "2 consecutive failures" in msg
    assert "(code 5000)" in msg and "python -m promptops.platform.breaker reset prompt_platform" in msg
    assert v1_count(clean_sim) == 0  # failed fast: nothing reached the platform

    # A new task is a new process: it must see the open circuit too.
    env = dict(os.environ, PROMPT_API_KEY=clean_sim.api_key)
    out = subprocess.run([sys.executable, "-c", OTHER_PROCESS, clean_sim.url, str(state_dir)],
                         capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.startswith("REJECTED:"), out.stdout + out.stderr
    assert clean_sim.api_key not in out.stdout + out.stderr
    assert v1_count(clean_sim) == 0

    # The platform recovers; after the cooldown one probe goes through and closes it.
    clean_sim.clear_faults()
    clock.advance(3600)
    assert client.gpu_metrics()
    assert v1_count(clean_sim, 1) == 1
    assert breaker.state().state == CLOSED


def test_failed_probe_reopens(make_client, clean_sim, tmp_path: Path):
    clock = FakeClock()
    breaker = CircuitBreaker("prompt_platform", FileBreakerStore(tmp_path),
                             failure_threshold=1, cooldown_s=10, clock=clock)
    client = make_client(max_retries=0, breaker=breaker)
    clean_sim.set_faults([{"kind": "bare_status", "status": 502, "path_prefix": GPU}])
    with pytest.raises(Exception, match="2001"):
        client.gpu_metrics()
    clock.advance(10)
    settled_log(clean_sim)  # let the last entry land before clearing
    clean_sim.clear_requests_log()
    with pytest.raises(Exception, match="2001"):
        client.gpu_metrics()  # the probe: reaches the platform, fails
    assert v1_count(clean_sim, 1) == 1
    assert breaker.state().state == OPEN and breaker.state().opened_at == clock.now
    with pytest.raises(CircuitOpenError):
        client.gpu_metrics()
    assert v1_count(clean_sim, 1) == 1


def test_auth_errors_do_not_open_the_circuit(make_client, clean_sim, tmp_path: Path):
    breaker = CircuitBreaker("prompt_platform", FileBreakerStore(tmp_path),
                             failure_threshold=1, cooldown_s=60)
    client = make_client(api_key="sk-canary-" + "WRONG", breaker=breaker)
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            client.gpu_metrics()
    assert breaker.state().state == CLOSED
    assert v1_count(clean_sim, 3) == 3


def test_breaker_counts_a_page_that_fails(make_client, clean_sim, tmp_path: Path):
    breaker = CircuitBreaker("prompt_platform", FileBreakerStore(tmp_path),
                             failure_threshold=1, cooldown_s=60)
    client = make_client(max_retries=0, breaker=breaker)
    clean_sim.set_faults([{"kind": "error", "code": 4003, "path_prefix": "/v1/call_records"}])
    with pytest.raises(Exception, match="check the platform database"):
        list(client.iter_call_record_pages(*WINDOW))
    state = breaker.state()
    assert state.state == OPEN and state.last_error_code == 4003
    assert clean_sim.api_key not in (tmp_path / "prompt_platform.json").read_text()
