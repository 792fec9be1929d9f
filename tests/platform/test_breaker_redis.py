"""The Redis breaker store: state shared by worker processes on different hosts (Celery),
one probe while half-open, the fallback when Redis is unreachable, the settings that choose
the store and the CLI against Redis. Real Redis at 127.0.0.1:6379 (breakerhelpers)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import textwrap
import time

# Airflow configures logging (replacing the root's handlers) when its log module is first
# imported; the store registers a Redis password with Airflow's masker, so import it now, not
# in the middle of a test whose log records are checked.
import airflow.sdk.log  # noqa: F401
import pytest
import redis

from promptops.airflow_adapters.resources import breaker_store, platform_client
from promptops.errors import CircuitOpenError
from promptops.platform.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    FileBreakerStore,
    main,
    store_from_settings,
)
from promptops.platform.breaker_redis import BreakerStoreUnavailable, RedisBreakerStore, redact_url
from promptops.settings import Settings
from tests.helpers.breaker import REDIS_URL, closed_port, redis_namespace
from tests.helpers.client import FakeClock
from tests.helpers.simulator import settled_log

GPU = "/v1/gpu_metrics"
PASSWORD = "canary-redis-pw-7731"


@pytest.fixture()
def namespace():
    with redis_namespace() as (client, prefix):
        yield client, prefix


def test_state_is_one_namespaced_json_key_that_ages_out(namespace, clock):
    client, prefix = namespace
    store = RedisBreakerStore(REDIS_URL, prefix=prefix, ttl_s=3600)
    b = CircuitBreaker("platform-a", store, failure_threshold=1, clock=clock)
    b.record_failure("platform error 5000 (HTTP 500)", code=5000)
    stored = json.loads(client.get(f"{prefix}platform-a"))
    assert stored["state"] == OPEN and stored["last_error_code"] == 5000
    assert 0 < client.ttl(f"{prefix}platform-a") <= 3600  # stale state ages out
    client.set(f"{prefix}other", json.dumps({"state": CLOSED}))
    client.set(prefix.replace(":breaker:", ":other:") + "x", "not a breaker")  # not ours
    assert store.names() == ["other", "platform-a"]
    with pytest.raises(ValueError, match="invalid breaker name"):
        store.load("../x")


def test_an_unreadable_value_is_treated_as_closed(namespace, clock, caplog):
    client, prefix = namespace
    client.set(f"{prefix}platform-a", b"{not json")
    b = CircuitBreaker("platform-a", RedisBreakerStore(REDIS_URL, prefix=prefix),
                       failure_threshold=1, clock=clock)
    assert b.state().state == CLOSED
    assert "unreadable" in caplog.text
    b.record_failure("platform error 5000", code=5000)  # and it is overwritten cleanly
    assert json.loads(client.get(f"{prefix}platform-a"))["state"] == OPEN


# -- two worker processes on different hosts --------------------------------------------------
WORKER = textwrap.dedent("""
    import sys
    from promptops.airflow_adapters.resources import platform_client
    from promptops.errors import CircuitOpenError, PlatformError
    with platform_client() as client:
        for _ in range(int(sys.argv[1])):
            try:
                client.gpu_metrics()
            except CircuitOpenError:
                print("OUTCOME REJECTED", flush=True)
            except PlatformError as exc:
                print("OUTCOME FAILED", exc.code, flush=True)
            else:
                print("OUTCOME OK", flush=True)
""")


def run_worker(env: dict[str, str], calls: int) -> list[str]:
    out = subprocess.run([sys.executable, "-c", WORKER, str(calls)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert env["PROMPT_API_KEY"] not in out.stdout + out.stderr
    # Airflow's logging writes to stdout too.
    return [line.split(" ", 1)[1] for line in out.stdout.splitlines()
            if line.startswith("OUTCOME ")]


def test_failures_in_one_worker_process_open_the_breaker_for_another(clean_sim, namespace,
                                                                     tmp_path):
    """The Celery shape: two workers with their own disks and the broker's Redis. Before
    the Redis store each kept a file of its own and retried a dead platform at full rate."""
    _, prefix = namespace
    env = dict(os.environ, PROMPTOPS_PLATFORM_URL=clean_sim.url,
               PROMPT_API_KEY=clean_sim.api_key, AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
               AIRFLOW__CELERY__BROKER_URL=REDIS_URL, PROMPTOPS_BREAKER_REDIS_PREFIX=prefix,
               PROMPTOPS_BREAKER_FAILURE_THRESHOLD="2", PROMPTOPS_BREAKER_COOLDOWN_S="3600",
               PROMPTOPS_MAX_RETRIES="0")
    env.pop("AIRFLOW_CONN_PROMPT_PLATFORM", None)
    clean_sim.set_faults([{"kind": "error", "code": 5000, "path_prefix": GPU}])

    worker_a = run_worker({**env, "PROMPTOPS_STATE_DIR": str(tmp_path / "host-a")}, 3)
    assert worker_a == ["FAILED 5000", "FAILED 5000", "REJECTED"]
    assert len(settled_log(clean_sim, 2)) == 2

    worker_b = run_worker({**env, "PROMPTOPS_STATE_DIR": str(tmp_path / "host-b")}, 2)
    assert worker_b == ["REJECTED", "REJECTED"]
    assert len(settled_log(clean_sim, 2)) == 2  # worker B sent nothing
    assert not (tmp_path / "host-a" / "breakers").exists()  # the state is in Redis only


PROBER = textwrap.dedent("""
    import sys
    from promptops.platform.breaker import CircuitBreaker
    from promptops.platform.breaker_redis import RedisBreakerStore
    from promptops.errors import CircuitOpenError
    store = RedisBreakerStore(sys.argv[1], prefix=sys.argv[2])
    b = CircuitBreaker("prompt_platform", store, failure_threshold=1, cooldown_s=0,
                       probe_timeout_s=3600)
    b.state()  # connected before the start signal
    print("READY", flush=True)
    sys.stdin.readline()
    try:
        print("PROBE" if b.before_call().is_probe else "PLAIN", flush=True)
    except CircuitOpenError:
        print("REJECTED", flush=True)
""")


def test_only_one_worker_process_gets_the_half_open_probe(namespace):
    _, prefix = namespace
    opener = CircuitBreaker("prompt_platform", RedisBreakerStore(REDIS_URL, prefix=prefix),
                            failure_threshold=1, cooldown_s=0)
    opener.record_failure("platform error 4003 (HTTP 503)", code=4003)
    assert opener.state().state == OPEN  # and the cooldown (0 s) is over: a probe is due

    procs = [subprocess.Popen([sys.executable, "-c", PROBER, REDIS_URL, prefix],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline() == "READY\n"
        for p in procs:  # all at once
            p.stdin.write("go\n")
            p.stdin.flush()
        outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert outcomes == ["PROBE", "REJECTED", "REJECTED", "REJECTED"]
    st = opener.state()
    assert st.state == HALF_OPEN and st.probe_id is not None


# -- an unreachable Redis -------------------------------------------------------------------
def test_unreachable_redis_falls_back_to_the_file_store_with_one_warning(tmp_path, caplog,
                                                                        clock):
    port = closed_port()
    store = RedisBreakerStore(f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
                                       fallback=FileBreakerStore(tmp_path))
    b = CircuitBreaker("platform-a", store, failure_threshold=2, cooldown_s=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="promptops"):
        for _ in range(2):
            b.record_failure("platform error 5000", b.before_call(), code=5000)
        with pytest.raises(CircuitOpenError) as info:
            b.before_call()
    assert FileBreakerStore(tmp_path).load("platform-a").state == OPEN
    warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"redis://:***@127.0.0.1:{port}/0" in warnings[0]
    assert str(tmp_path) in warnings[0] and "this host only" in warnings[0]
    assert PASSWORD not in caplog.text
    assert PASSWORD not in str(info.value)


def test_back_on_redis_once_it_is_reachable_again(tmp_path, caplog, clock):
    port = closed_port()
    ticks = FakeClock(start=0.0)  # the store's monotonic clock
    store = RedisBreakerStore(f"redis://127.0.0.1:{port}/0", retry_after_s=30,
                                       fallback=FileBreakerStore(tmp_path), monotonic=ticks)
    b = CircuitBreaker("platform-a", store, failure_threshold=5, clock=clock)
    b.record_failure("platform error 5000", code=5000)  # Redis down: to the file store
    assert FileBreakerStore(tmp_path).load("platform-a").consecutive_failures == 1

    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        direct = redis.Redis(port=port, socket_timeout=5)
        for _ in range(100):
            try:
                direct.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        ticks.advance(10)  # inside the back-off: still the file store
        b.record_failure("platform error 5000", code=5000)
        assert FileBreakerStore(tmp_path).load("platform-a").consecutive_failures == 2
        assert direct.keys() == []
        ticks.advance(30)  # Redis is tried again, and answers
        with caplog.at_level(logging.INFO, logger="promptops"):
            b.record_failure("platform error 5000", code=5000)
        stored = json.loads(direct.get("promptops:breaker:platform-a"))
        assert stored["consecutive_failures"] == 1  # a fresh count: the hosts' files differ
        assert "reachable again" in caplog.text
        direct.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_unreachable_redis_without_a_fallback_is_a_clear_error(clock):
    port = closed_port()
    store = RedisBreakerStore(f"redis://admin:{PASSWORD}@127.0.0.1:{port}/3")
    b = CircuitBreaker("platform-a", store, clock=clock)
    with pytest.raises(BreakerStoreUnavailable) as info:
        b.before_call()
    msg = str(info.value)
    assert f"redis://admin:***@127.0.0.1:{port}/3" in msg
    assert "PROMPTOPS_BREAKER_STORE=file" in msg and "Connection refused" in msg
    assert PASSWORD not in msg


@pytest.mark.parametrize("url, shown", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    (f"redis://:{PASSWORD}@redis:6379/0", "redis://:***@redis:6379/0"),
    (f"rediss://default:{PASSWORD}@cache.internal/2", "rediss://default:***@cache.internal/2"),
    (f"redis://{PASSWORD}@redis/0", "redis://***@redis/0"),  # a bare userinfo may be a password
    (f"redis://redis:6379/0?password={PASSWORD}&socket_timeout=3",
     "redis://redis:6379/0?password=***&socket_timeout=3"),
    (f"redis://:{PASSWORD}@[::1]:6379/1", "redis://:***@[::1]:6379/1"),
])
def test_urls_are_shown_without_the_password(url, shown):
    assert redact_url(url) == shown


def test_a_bad_url_says_what_is_wrong_without_the_password():
    with pytest.raises(ValueError, match="redis://, rediss://") as info:
        RedisBreakerStore(f"http://:{PASSWORD}@redis:6379/0")
    assert PASSWORD not in str(info.value)


# -- which store the settings choose ------------------------------------------------------------
OTHER = "redis://breaker-redis.internal:6380/2"


@pytest.mark.parametrize("executor, broker, kw, expect", [
    (None, None, {}, "file"),  # standalone
    ("CeleryExecutor", REDIS_URL, {}, REDIS_URL),  # the Celery broker's Redis
    ("CeleryExecutor", "amqp://guest@rabbitmq:5672//", {}, "file"),  # not a Redis broker
    ("LocalExecutor", REDIS_URL, {}, "file"),  # a broker URL alone is not Celery
    (None, None, {"breaker_redis_url": OTHER}, OTHER),
    ("CeleryExecutor", REDIS_URL, {"breaker_redis_url": OTHER}, OTHER),  # configured wins
    ("CeleryExecutor", REDIS_URL, {"breaker_store": "file"}, "file"),
])
def test_the_store_the_settings_choose(monkeypatch, tmp_path, executor, broker, kw, expect):
    for var, value in (("AIRFLOW__CORE__EXECUTOR", executor),
                       ("AIRFLOW__CELERY__BROKER_URL", broker)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    settings = Settings(state_dir=tmp_path, **kw)
    store = breaker_store(settings)
    if expect == "file":
        assert isinstance(store, FileBreakerStore)
        assert store.directory == tmp_path / "breakers"
    else:
        assert isinstance(store, RedisBreakerStore)
        assert store.url == expect and store.prefix == "promptops:breaker:"
        assert store.ttl_s == settings.breaker_state_ttl_s
        assert store.fallback.directory == tmp_path / "breakers"
        assert store.cli_options == ""  # the CLI finds it through the same settings


def test_the_celery_broker_is_an_argument_of_the_library(monkeypatch, tmp_path):
    """Airflow's config is read by the adapter; the library takes the broker's URL."""
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", REDIS_URL)
    settings = Settings(state_dir=tmp_path)
    assert isinstance(store_from_settings(settings), FileBreakerStore)
    store = store_from_settings(settings, celery_broker_url=REDIS_URL)
    assert isinstance(store, RedisBreakerStore) and store.url == REDIS_URL


def test_settings_that_cannot_work_are_named(monkeypatch, tmp_path):
    monkeypatch.delenv("AIRFLOW__CORE__EXECUTOR", raising=False)
    with pytest.raises(ValueError, match="PROMPTOPS_BREAKER_REDIS_URL"):
        breaker_store(Settings(state_dir=tmp_path, breaker_store="redis"))
    with pytest.raises(ValueError, match="PROMPTOPS_BREAKER_STATE_TTL_S .* longer than "
                                         "PROMPTOPS_BREAKER_COOLDOWN_S"):
        breaker_store(Settings(state_dir=tmp_path, breaker_redis_url=OTHER,
                               breaker_state_ttl_s=3600, breaker_cooldown_s=3600))
    secret_url = f"redis://:{PASSWORD}@breaker-redis.internal:6380/2"
    settings = Settings(state_dir=tmp_path, breaker_redis_url=secret_url)
    assert PASSWORD not in repr(settings)
    store = breaker_store(settings)
    assert PASSWORD not in repr(store) + store.location

    from airflow.sdk.log import _secrets_masker

    assert PASSWORD not in _secrets_masker().redact(f"url {secret_url}")


def test_the_client_uses_the_store_the_settings_choose(monkeypatch, tmp_path):
    monkeypatch.delenv("AIRFLOW_CONN_PROMPT_PLATFORM", raising=False)
    monkeypatch.setenv("PROMPTOPS_PLATFORM_URL", "http://platform.internal:8700")
    monkeypatch.setenv("PROMPT_API_KEY", "sk-canary-REDIS-1")
    settings = Settings(state_dir=tmp_path, breaker_redis_url=REDIS_URL)
    with platform_client(settings=settings) as client:
        assert isinstance(client.breaker.store, RedisBreakerStore)
        assert client.breaker.store.url == REDIS_URL


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_status_and_reset_against_redis(namespace, clock, capsys):
    _, prefix = namespace
    b = CircuitBreaker("platform-a", RedisBreakerStore(REDIS_URL, prefix=prefix),
                       failure_threshold=1, clock=clock)
    b.record_failure("platform error 2001 (HTTP 504)", code=2001)
    opts = ["--redis-url", REDIS_URL, "--redis-prefix", prefix]
    assert main(["status", *opts]) == 0
    out = capsys.readouterr().out
    assert "platform-a: open" in out and "platform error 2001" in out
    assert main(["reset", "platform-a", *opts]) == 0
    assert f"reset to closed ({REDIS_URL} {prefix}*)" in capsys.readouterr().out
    assert b.state().state == CLOSED
    with pytest.raises(SystemExit) as info:  # one store at a time
        main(["status", "--state-dir", "/tmp/x", *opts])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_the_reset_command_in_the_message_works_where_the_workers_run(namespace, monkeypatch,
                                                                     tmp_path, clock):
    _, prefix = namespace
    monkeypatch.setenv("PROMPTOPS_BREAKER_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("PROMPTOPS_BREAKER_REDIS_PREFIX", prefix)
    monkeypatch.setenv("PROMPTOPS_STATE_DIR", str(tmp_path))
    b = CircuitBreaker("prompt_platform", store_from_settings(Settings()), failure_threshold=1,
                       clock=clock)
    b.record_failure("platform error 4003 (HTTP 503)", code=4003)
    with pytest.raises(CircuitOpenError) as info:
        b.before_call()
    command = str(info.value).split("reset it with `", 1)[1].split("`", 1)[0]
    assert command == "python -m promptops.platform.breaker reset prompt_platform"
    run = [sys.executable, *shlex.split(command)[1:]]
    status = [sys.executable, "-m", "promptops.platform.breaker", "status"]
    out = subprocess.run(status, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "prompt_platform: open" in out
    subprocess.run(run, capture_output=True, timeout=60, check=True)
    assert b.state().state == CLOSED
    assert not (tmp_path / "breakers").exists()


def test_cli_with_an_unreachable_redis_says_so(capsys):
    port = closed_port()
    assert main(["status", "--redis-url", f"redis://:{PASSWORD}@127.0.0.1:{port}/0"]) == 1
    err = capsys.readouterr().err
    assert f"redis://:***@127.0.0.1:{port}/0" in err and "unreachable" in err
    assert PASSWORD not in err

