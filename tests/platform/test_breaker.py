"""The persistent circuit breaker, with a fake clock. The contract tests run against both
stores: files in tmp_path and the real Redis (a key prefix of their own per test)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from promptops.errors import CircuitOpenError
from promptops.platform.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerState,
    BreakerStore,
    CircuitBreaker,
    FileBreakerStore,
    main,
)
from promptops.platform.breaker_redis import RedisBreakerStore
from tests.helpers.breaker import REDIS_URL, redis_namespace
from tests.helpers.client import FakeClock

MakeStore = Callable[[], BreakerStore]


@pytest.fixture(params=["file", "redis"])
def make_store(request, tmp_path) -> Iterator[MakeStore]:
    """Makes store objects over one shared place, as separate tasks would."""
    if request.param == "file":
        yield lambda: FileBreakerStore(tmp_path)
        return
    made: list[RedisBreakerStore] = []

    def make() -> RedisBreakerStore:
        made.append(RedisBreakerStore(REDIS_URL, prefix=prefix))
        return made[-1]

    with redis_namespace() as (_, prefix):
        yield make
        for store in made:
            store.close()


def breaker(where: Path | MakeStore, clock: FakeClock, **kw) -> CircuitBreaker:
    opts = {"failure_threshold": 3, "cooldown_s": 60.0, "probe_timeout_s": 30.0}
    opts.update(kw)
    store = FileBreakerStore(where) if isinstance(where, Path) else where()
    return CircuitBreaker("platform-a", store, clock=clock, **opts)


def fail(b: CircuitBreaker, n: int = 1, text: str = "platform error 5000 (HTTP 500)") -> None:
    for _ in range(n):
        b.record_failure(text, b.before_call(), code=5000)


def test_opens_after_threshold_consecutive_failures(make_store, clock):
    b = breaker(make_store, clock)
    fail(b, 2)
    assert b.state().state == CLOSED
    assert b.state().consecutive_failures == 2
    fail(b)
    st = b.state()
    assert st.state == OPEN
    assert st.open_since == clock.now
    assert st.last_error_code == 5000


def test_success_resets_the_count(make_store, clock):
    b = breaker(make_store, clock)
    fail(b, 2)
    b.record_success(b.before_call())
    fail(b, 2)
    assert b.state().state == CLOSED
    assert b.state().consecutive_failures == 2


def test_open_circuit_fails_fast_with_an_actionable_message(make_store, clock):
    b = breaker(make_store, clock)
    fail(b, 3, text="platform error 4003 (HTTP 503) on GET /v1/call_records")
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        b.before_call()
    msg = str(info.value)
    assert "'platform-a' is open" in msg
    assert "2027-01-15T08:00:00Z" in msg  # open since (the fake clock's start)
    assert "3 consecutive failures" in msg
    assert "platform error 4003" in msg and "(code 5000)" in msg
    assert "next probe is allowed at 2027-01-15T08:01:00Z (in 50 s)" in msg
    assert f"python -m promptops.platform.breaker reset platform-a {b.store.cli_options}" in msg
    assert info.value.failures == 3
    assert info.value.retry_at == clock.now + 50


def test_the_rejection_itself_is_not_a_failure(make_store, clock):
    b = breaker(make_store, clock)
    fail(b, 3)
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            b.before_call()
    assert b.state().consecutive_failures == 3
    assert b.state().opened_at == clock.now


def test_half_open_lets_exactly_one_probe_through(make_store, clock):
    b1 = breaker(make_store, clock)
    b2 = breaker(make_store, clock)  # another task, same store
    fail(b1, 3)
    clock.advance(60)
    probe = b1.before_call()
    assert probe.is_probe
    assert b1.state().state == HALF_OPEN
    with pytest.raises(CircuitOpenError, match="another caller is probing"):
        b2.before_call()
    with pytest.raises(CircuitOpenError):
        b1.before_call()


def test_concurrent_callers_claim_one_probe(make_store, clock):
    fail(breaker(make_store, clock), 3)
    clock.advance(61)
    results: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        b = breaker(make_store, clock)  # own object, own file descriptors
        try:
            outcome = "probe" if b.before_call().is_probe else "plain"
        except CircuitOpenError:
            outcome = "rejected"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["probe"] + ["rejected"] * 7


def test_probe_success_closes(make_store, clock):
    b = breaker(make_store, clock)
    fail(b, 3)
    clock.advance(60)
    b.record_success(b.before_call())
    st = b.state()
    assert st.state == CLOSED and st.consecutive_failures == 0 and st.open_since is None
    assert not b.before_call().is_probe


def test_probe_failure_reopens_with_a_fresh_cooldown(make_store, clock):
    b = breaker(make_store, clock)
    fail(b, 3)
    first_open = clock.now
    clock.advance(60)
    fail(b)  # the probe
    st = b.state()
    assert st.state == OPEN
    assert st.opened_at == clock.now and st.open_since == first_open
    clock.advance(59)
    with pytest.raises(CircuitOpenError, match="failing since 2027-01-15T08:00:00Z"):
        b.before_call()
    clock.advance(1)
    assert b.before_call().is_probe


def test_a_probe_that_never_reports_back_expires(make_store, clock):
    b = breaker(make_store, clock, probe_timeout_s=30.0)
    fail(b, 3)
    clock.advance(60)
    lost = b.before_call()  # its process dies: nothing is reported
    clock.advance(29)
    with pytest.raises(CircuitOpenError):
        b.before_call()
    clock.advance(1)
    second = b.before_call()
    assert second.is_probe and second != lost
    b.record_success(lost)  # the lost probe is no longer the probe: ignored
    assert b.state().state == HALF_OPEN
    b.record_success(second)
    assert b.state().state == CLOSED


def test_a_late_success_does_not_close_an_open_circuit(make_store, clock):
    b = breaker(make_store, clock)
    early = b.before_call()  # admitted while closed, answers after the circuit opened
    fail(b, 3)
    b.record_success(early)
    assert b.state().state == OPEN


def test_state_is_shared_between_breaker_objects(make_store, clock):
    a, b = breaker(make_store, clock), breaker(make_store, clock)
    fail(a, 2)
    fail(b, 1)
    assert a.state().state == OPEN
    with pytest.raises(CircuitOpenError):
        a.before_call()


def test_stays_open_across_a_new_process(tmp_path):
    # Real clock here: the other process reads the wall clock too.
    b = CircuitBreaker("platform-a", FileBreakerStore(tmp_path), failure_threshold=1,
                       cooldown_s=3600)
    b.record_failure("platform error 5000 (HTTP 500) on GET /v1/gpu_metrics", code=5000)
    script = textwrap.dedent("""
        import sys
        from promptops.platform.breaker import CircuitBreaker, FileBreakerStore
        from promptops.errors import CircuitOpenError
        b = CircuitBreaker("platform-a", FileBreakerStore(sys.argv[1]), failure_threshold=1,
                           cooldown_s=3600)
        try:
            b.before_call()
        except CircuitOpenError as exc:
            print("REJECTED", exc)
        else:
            print("ADMITTED")
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.startswith("REJECTED")
    assert "(code 5000)" in out


class RaceLosingStore(FileBreakerStore):
    """Runs ``fn`` once on a throwaway copy first, as the Redis store does when another
    worker wrote between its read and its commit (WATCH): only the last run counts."""

    def update(self, name, fn):
        fn(self.load(name))
        return super().update(name, fn)


def test_only_the_committed_run_of_an_update_is_logged(tmp_path, clock, caplog):
    b = CircuitBreaker("platform-a", RaceLosingStore(tmp_path), failure_threshold=1,
                       cooldown_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="promptops.platform.breaker"):
        fail(b)
        clock.advance(60)
        probe = b.before_call()
        b.record_success(probe)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("opened after 1 consecutive failures" in m for m in lines) == 1, lines
    assert sum("this call is the half-open probe" in m for m in lines) == 1, lines
    assert sum("probe succeeded, closing" in m for m in lines) == 1, lines
    assert b.state().state == CLOSED


def test_reset_closes(make_store, clock):
    b = breaker(make_store, clock)
    fail(b, 3)
    b.reset()
    assert b.state().state == CLOSED
    assert not b.before_call().is_probe


def test_file_store_writes_atomically_and_tolerates_garbage(tmp_path, clock):
    b = breaker(tmp_path, clock)
    fail(b, 3)
    assert b.store.cli_options == f"--state-dir {tmp_path}"
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["platform-a.json", "platform-a.lock"]  # no temp file left behind
    assert json.loads((tmp_path / "platform-a.json").read_text())["state"] == OPEN
    (tmp_path / "platform-a.json").write_text("{not json")
    assert b.state() == BreakerState()
    with pytest.raises(ValueError, match="invalid breaker name"):
        FileBreakerStore(tmp_path).load("../etc/passwd")


def test_cli_status_and_reset(tmp_path, clock, capsys):
    fail(breaker(tmp_path, clock), 3, text="platform error 2001 (HTTP 504)")
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "platform-a: open" in out and "platform error 2001" in out
    assert main(["reset", "platform-a", "--state-dir", str(tmp_path)]) == 0
    assert main(["--state-dir", str(tmp_path), "status", "platform-a", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.split("\n", 1)[1])["platform-a"]["state"] == CLOSED


def test_cli_as_a_module(tmp_path):
    fail(breaker(tmp_path, FakeClock()), 3)
    env = dict(os.environ)
    run = [sys.executable, "-m", "promptops.platform.breaker"]
    out = subprocess.run([*run, "status", "platform-a", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, check=True, env=env, timeout=60).stdout
    assert "platform-a: open" in out
    subprocess.run([*run, "reset", "platform-a", "--state-dir", str(tmp_path)], check=True,
                   capture_output=True, env=env, timeout=60)
    assert FileBreakerStore(tmp_path).load("platform-a").state == CLOSED
