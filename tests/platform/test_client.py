"""PlatformClient against the real simulator process: retries, errors, pagination, secrets."""

from __future__ import annotations

import socket
import time
import traceback
from datetime import datetime

import pytest

from promptops.errors import (
    AuthenticationFailed,
    DataFormatError,
    InvalidRequest,
    PermissionDenied,
    PlatformDatabaseUnavailable,
    PlatformInternalError,
    PlatformReadTimeout,
    PlatformUnreachable,
    PromptOpsError,
    RateLimited,
    UpstreamTimeout,
)
from promptops.platform.client import PlatformClient, rfc3339
from tests.helpers.client import CANARY_KEY, RO_KEY, WINDOW
from tests.helpers.simulator import settled_log

GPU = "/v1/gpu_metrics"


def v1_requests(sim, path: str | None = None, expect: int = 0) -> list[dict]:
    """The settled log of /v1 requests (or of one path), after ``expect`` entries arrived."""
    return settled_log(sim, expect, path_prefix=path or "/v1")


def wait_for_requests(sim, n: int, path: str | None = None) -> list[dict]:
    return v1_requests(sim, path, expect=n)


def ts(entry: dict) -> float:
    return datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()


# -- happy paths ---------------------------------------------------------------------------------
def test_health_ok_and_degraded(make_client, clean_sim):
    client = make_client()
    health = client.health()
    assert health.ok and health.status == "ok" and health.http_status == 200
    assert health.version and health.latency_ms >= 0
    clean_sim.set_faults([{"kind": "degraded", "path_prefix": "/health", "reason": "db down"}])
    health = client.health()
    assert not health.ok
    assert (health.status, health.reason, health.http_status) == ("degraded", "db down", 503)
    clean_sim.clear_faults()
    clean_sim.set_faults([{"kind": "bare_status", "status": 502, "path_prefix": "/health"}])
    health = client.health()
    assert not health.ok and health.status == "unavailable" and health.http_status == 502


def test_pagination_streams_every_page(make_client, clean_sim):
    client = make_client()
    whole = [r for page in client.iter_call_record_pages(*WINDOW, limit=10_000) for r in page]
    assert len(whole) > 1000
    settled_log(clean_sim)  # let the last entry land before clearing
    clean_sim.clear_requests_log()
    pages = list(client.iter_call_record_pages(*WINDOW, limit=300))
    assert all(len(p) <= 300 for p in pages)
    assert [r["call_id"] for p in pages for r in p] == [r["call_id"] for r in whole]
    log = v1_requests(clean_sim, "/v1/call_records", expect=len(pages))
    assert len(log) == len(pages) >= 4
    assert "cursor" not in log[0]["query"]
    assert all("cursor" in e["query"] for e in log[1:])
    assert log[0]["query"]["start"] == "2026-11-20T12:00:00Z"
    assert log[0]["query"]["end"] == "2026-11-20T13:00:00Z"


def test_prefetch_stays_one_page_ahead(make_client, clean_sim):
    client = make_client()
    pages = client.iter_call_record_pages(*WINDOW, limit=200)
    next(pages)
    assert len(wait_for_requests(clean_sim, 2)) == 2  # the next page is on its way
    time.sleep(0.4)
    assert len(v1_requests(clean_sim)) == 2  # ... and nothing beyond it
    next(pages)
    assert len(wait_for_requests(clean_sim, 3)) == 3
    pages.close()


def test_bad_arguments_fail_at_the_call(make_client):
    client = make_client()
    with pytest.raises(ValueError, match="naive"):
        client.iter_call_record_pages(datetime(2026, 11, 20, 12), WINDOW[1])
    with pytest.raises(ValueError, match="before end"):
        client.iter_call_record_pages(WINDOW[1], WINDOW[0])
    with pytest.raises(ValueError, match="limit"):
        client.iter_call_record_pages(*WINDOW, limit=10_001)


def test_rfc3339_formatting():
    from datetime import UTC, timedelta, timezone

    assert rfc3339(datetime(2026, 11, 20, 13, tzinfo=UTC)) == "2026-11-20T13:00:00Z"
    plus2 = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 11, 20, 15, 0, 0, 5000, tzinfo=plus2)) == \
        "2026-11-20T13:00:00.005000Z"
    with pytest.raises(ValueError, match="naive"):
        rfc3339(datetime(2026, 11, 20, 13))


def test_actions_round_trip(make_client):
    client = make_client()
    created = client.create_action("scale_out", "api_workers", {"replicas": 4}, dry_run=True,
                                   reason="test", idempotency_key="rt-1")
    assert created["status"] == "dry_run"
    got = client.get_action(created["action_id"])
    assert got["action_id"] == created["action_id"] and got["action"] == "scale_out"


# -- retries ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault, status", [
    ({"kind": "error", "code": 5000}, 500),
    ({"kind": "error", "code": 2001}, 504),
    ({"kind": "error", "code": 4003}, 503),
    ({"kind": "bare_status", "status": 502}, 502),
    ({"kind": "bare_status", "status": 503}, 503),
    ({"kind": "bare_status", "status": 504}, 504),
])
def test_retries_then_succeeds(make_client, clean_sim, client_logs, fault, status):
    clean_sim.set_faults([{**fault, "path_prefix": GPU, "times": 2}])
    assert make_client(max_retries=3).gpu_metrics()
    assert [e["status"] for e in v1_requests(clean_sim, expect=3)] == [status, status, 200]
    warnings = [r.getMessage() for r in client_logs.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    code = fault.get("code", 2001)
    assert f"GET {GPU} failed with code {code}" in warnings[0]
    assert "attempt 1 of 4, retrying in" in warnings[0]


def test_pages_are_retried_individually(make_client, clean_sim):
    client = make_client()
    pages = client.iter_call_record_pages(*WINDOW, limit=500)
    first = next(pages)
    clean_sim.set_faults([{"kind": "error", "code": 5000, "path_prefix": "/v1/call_records",
                           "times": 1}])
    rest = [r for p in pages for r in p]
    assert len(first) == 500 and rest
    assert sum(1 for e in v1_requests(clean_sim) if e["status"] == 500) == 1


@pytest.mark.parametrize("fault, exc_type, remedy", [
    ({"kind": "error", "code": 4003}, PlatformDatabaseUnavailable, "check the platform database"),
    ({"kind": "error", "code": 2001}, UpstreamTimeout, "raise the timeout or retry policy"),
    ({"kind": "error", "code": 5000}, PlatformInternalError, "contact the platform team"),
    ({"kind": "error", "code": 2002, "retry_after": 0}, RateLimited, "lower the request rate"),
    ({"kind": "bare_status", "status": 502}, UpstreamTimeout, "raise the timeout or retry"),
])
def test_retries_exhausted_raise_the_code(make_client, clean_sim, fault, exc_type, remedy):
    clean_sim.set_faults([{**fault, "path_prefix": GPU}])
    with pytest.raises(exc_type) as info:
        make_client(max_retries=2).gpu_metrics()
    err = info.value
    assert type(err) is exc_type
    assert len(v1_requests(clean_sim, expect=3)) == 3
    msg = str(err)
    assert f"platform error {err.code}" in msg and remedy in msg
    assert f"GET {GPU}" in msg and "after 3 attempts" in msg
    if fault["kind"] == "bare_status":
        assert err.http_status == 502 and "without a JSON error body" in msg


def test_rate_limit_waits_for_retry_after(make_client, clean_sim):
    clean_sim.set_faults([{"kind": "error", "code": 2002, "retry_after": 1, "path_prefix": GPU,
                           "times": 1}])
    t0 = time.monotonic()
    make_client(backoff_factor=0.0).gpu_metrics()
    elapsed = time.monotonic() - t0
    first, second = v1_requests(clean_sim, expect=2)
    assert (first["status"], second["status"]) == (429, 200)
    assert elapsed >= 0.95
    assert ts(second) - ts(first) >= 0.9  # server-side: the retry came after Retry-After


def test_rate_limit_wait_is_capped(make_client, clean_sim, client_logs):
    clean_sim.set_faults([{"kind": "error", "code": 2002, "retry_after": 3600,
                           "path_prefix": GPU, "times": 1}])
    t0 = time.monotonic()
    make_client(max_retry_after=0.3, backoff_factor=0.0).gpu_metrics()
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 60  # waited the cap, not the hour
    assert "Retry-After 3600 s capped at 0.3 s" in client_logs.text


# -- errors that are never retried --------------------------------------------------------------
def test_wrong_key_fails_at_once(make_client, clean_sim):
    with pytest.raises(AuthenticationFailed) as info:
        make_client(api_key="sk-canary-WRONG").gpu_metrics()
    assert "check the API key" in str(info.value) and info.value.http_status == 401
    assert len(v1_requests(clean_sim, expect=1)) == 1


def test_read_only_key_may_not_act(make_client, clean_sim):
    client = make_client(api_key=RO_KEY)
    assert client.gpu_metrics()
    settled_log(clean_sim)  # let the last entry land before clearing
    clean_sim.clear_requests_log()
    with pytest.raises(PermissionDenied) as info:
        client.create_action("restart_service", "api_gateway", {}, dry_run=True,
                             reason="test", idempotency_key="ro-1")
    assert "check the service account's permissions" in str(info.value)
    assert len(v1_requests(clean_sim, expect=1)) == 1


@pytest.mark.parametrize("code, exc_type", [(1001, AuthenticationFailed),
                                            (1002, PermissionDenied),
                                            (3002, DataFormatError)])
def test_injected_client_errors_are_not_retried(make_client, clean_sim, code, exc_type):
    clean_sim.set_faults([{"kind": "error", "code": code, "path_prefix": GPU}])
    with pytest.raises(exc_type):
        make_client().gpu_metrics()
    assert len(v1_requests(clean_sim, expect=1)) == 1


def test_invalid_action_is_422_without_retry(make_client, clean_sim):
    with pytest.raises(DataFormatError) as info:
        make_client().create_action("reboot_universe", "x", {}, dry_run=True, reason="t",
                                    idempotency_key="bad-1")
    assert info.value.http_status == 422 and "POST /v1/ops/actions" in str(info.value)
    assert isinstance(info.value, InvalidRequest)  # the platform's verdict: permanent
    assert len(v1_requests(clean_sim, expect=1)) == 1


@pytest.mark.parametrize("variant, says", [
    ("not_json", "not JSON"),
    ("truncated", "truncated JSON"),
    ("wrong_shape", "'data' is missing"),
    ("data_not_list", "'data' is a JSON dict, expected list"),
])
@pytest.mark.parametrize("bodies", [False, True], ids=["dicts", "page_bodies"])
def test_malformed_page_is_retried_then_3002(make_client, clean_sim, variant, says, bodies):
    # A malformed 200 is usually one bad answer (a proxy cut it off): asked again a bounded
    # number of times, then a clear 3002 that says how often it was tried.
    clean_sim.set_faults([{"kind": "malformed_body", "variant": variant,
                           "path_prefix": "/v1/call_records"}])
    client = make_client()  # by default a malformed answer is asked for twice more
    pages = (client.iter_call_record_page_bodies if bodies else client.iter_call_record_pages)
    with pytest.raises(DataFormatError) as info:
        list(pages(*WINDOW))
    msg = str(info.value)
    assert info.value.code == 3002 and says in msg
    assert "GET /v1/call_records" in msg and "after 3 attempts" in msg
    assert len(v1_requests(clean_sim, expect=3)) == 3


@pytest.mark.parametrize("bodies", [False, True], ids=["dicts", "page_bodies"])
def test_a_malformed_page_that_comes_right_is_used(make_client, clean_sim, bodies):
    client = make_client()
    pages = (client.iter_call_record_page_bodies if bodies else client.iter_call_record_pages)
    whole = [len(p) for p in pages(*WINDOW, limit=500)]
    settled_log(clean_sim)
    clean_sim.clear_requests_log()
    clean_sim.set_faults([{"kind": "malformed_body", "variant": "truncated",
                           "path_prefix": "/v1/call_records", "times": 2}])
    assert [len(p) for p in pages(*WINDOW, limit=500)] == whole
    log = v1_requests(clean_sim, expect=len(whole) + 2)
    assert [e["status"] for e in log].count(200) == len(whole) + 2
    assert len(log) == len(whole) + 2


def test_a_malformed_answer_to_other_calls_is_retried(make_client, clean_sim):
    clean_sim.set_faults([{"kind": "malformed_body", "variant": "wrong_shape",
                           "path_prefix": GPU, "times": 1}])
    assert make_client(malformed_retries=1).gpu_metrics()
    assert len(v1_requests(clean_sim, expect=2)) == 2
    clean_sim.set_faults([{"kind": "malformed_body", "variant": "not_json", "path_prefix": GPU}])
    settled_log(clean_sim)
    clean_sim.clear_requests_log()
    with pytest.raises(DataFormatError, match="after 2 attempts"):
        make_client(malformed_retries=1).gpu_metrics()
    assert len(v1_requests(clean_sim, expect=2)) == 2
    settled_log(clean_sim)
    clean_sim.clear_requests_log()
    with pytest.raises(DataFormatError):  # 0 turns the retries off
        make_client(malformed_retries=0).gpu_metrics()
    assert len(v1_requests(clean_sim, expect=1)) == 1


# -- timeouts and broken connections ------------------------------------------------------------
def test_read_timeout_is_retried(make_client, clean_sim):
    clean_sim.set_faults([{"kind": "slow", "delay_s": 1.0, "path_prefix": GPU, "times": 1}])
    assert make_client(read_timeout=0.3).gpu_metrics()
    assert len(wait_for_requests(clean_sim, 2)) == 2


def test_read_timeout_exhausted_is_2001(make_client, clean_sim):
    clean_sim.set_faults([{"kind": "slow", "delay_s": 1.0, "path_prefix": GPU}])
    with pytest.raises(UpstreamTimeout) as info:
        make_client(read_timeout=0.3, max_retries=1).gpu_metrics()
    assert isinstance(info.value, PlatformReadTimeout) and info.value.code == 2001
    assert "read timeout of 0.3 s" in str(info.value)
    assert "raise the timeout or retry policy" in str(info.value)
    assert len(wait_for_requests(clean_sim, 2)) == 2


def test_connection_reset_is_retried_then_unreachable(make_client, clean_sim):
    clean_sim.set_faults([{"kind": "reset", "path_prefix": GPU, "times": 2}])
    assert make_client().gpu_metrics()
    clean_sim.set_faults([{"kind": "reset", "path_prefix": GPU}])
    settled_log(clean_sim)  # let the last entry land before clearing
    clean_sim.clear_requests_log()
    with pytest.raises(PlatformUnreachable) as info:
        make_client(max_retries=2).gpu_metrics()
    host = clean_sim.url.split("://", 1)[1]
    assert host in str(info.value) and "after 3 attempts" in str(info.value)
    assert len(v1_requests(clean_sim, expect=3)) == 3


def test_connection_refused_names_the_host():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = PlatformClient(f"http://127.0.0.1:{port}", CANARY_KEY, max_retries=1,
                            backoff_factor=0.0)
    with pytest.raises(PlatformUnreachable) as info:
        client.gpu_metrics()
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "connection refused" in msg
    with pytest.raises(PlatformUnreachable):
        client.health()  # no answer at all is an exception, unlike a degraded answer


# -- POST and idempotency ------------------------------------------------------------------------
def test_post_with_idempotency_key_is_retried_and_acts_once(make_client, clean_sim):
    # The first attempt times out on our side but the platform still acts on it; the retry
    # with the same key must get the same action back, not a second one.
    clean_sim.set_faults([{"kind": "slow", "delay_s": 1.0, "path_prefix": "/v1/ops/actions",
                           "method": "POST", "times": 1},
                          {"kind": "error", "code": 5000, "path_prefix": "/v1/ops/actions",
                           "method": "POST", "times": 1}])
    reason = f"idempotency test {time.time_ns()}"
    created = make_client(read_timeout=0.3).create_action(
        "restart_service", "api_gateway", {}, dry_run=False, reason=reason,
        idempotency_key=f"idem-{time.time_ns()}")
    log = wait_for_requests(clean_sim, 3, path="/v1/ops/actions")
    assert len(log) == 3 and len({e["idempotency_key"] for e in log}) == 1
    # (the log entry of the slow first attempt is written when it has finished)
    actions = [a for a in clean_sim.truth()["actions"] if a.get("reason") == reason]
    assert [a["action_id"] for a in actions] == [created["action_id"]]


def test_post_without_idempotency_key_is_not_retried(make_client, clean_sim):
    clean_sim.set_faults([{"kind": "error", "code": 5000, "path_prefix": "/v1/ops/actions",
                           "method": "POST"}])
    with pytest.raises(PlatformInternalError):
        make_client()._request("POST", "/v1/ops/actions", json_body={"action": "x"})
    assert len(v1_requests(clean_sim, expect=1)) == 1


# -- secrets ------------------------------------------------------------------------------------
def test_no_secret_in_errors_reprs_or_logs(make_client, clean_sim, client_logs):
    seen: list[str] = []
    client = make_client(max_retries=1)
    seen += [repr(client), repr(client.session.auth), str(vars(client).get("_auth"))]
    scenarios = [
        {"kind": "error", "code": 5000, "message": f"echo of the header: Bearer {CANARY_KEY}"},
        {"kind": "error", "code": 2002, "retry_after": 0},
        {"kind": "bare_status", "status": 503},
        {"kind": "reset"},
        {"kind": "malformed_body", "variant": "not_json"},
        {"kind": "error", "code": 1001},
    ]
    for fault in scenarios:
        clean_sim.clear_faults()
        clean_sim.set_faults([{**fault, "path_prefix": GPU}])
        with pytest.raises(PromptOpsError) as info:
            client.gpu_metrics()
        err = info.value
        seen += [str(err), repr(err), "".join(traceback.format_exception(err))]
    wrong_key = "sk-canary-" + "WRONG-KEY"  # not a literal: tracebacks show source lines
    with pytest.raises(AuthenticationFailed) as info:
        make_client(api_key=wrong_key).gpu_metrics()
    seen += [str(info.value), "".join(traceback.format_exception(info.value))]
    seen.append(client_logs.text)
    joined = "\n".join(seen)
    assert "echo of the header: Bearer ***" in joined  # the platform's echo was blanked
    assert CANARY_KEY not in joined
    assert wrong_key not in joined
    assert "Authorization" not in joined
