"""Injected API faults, as the client's tests will meet them."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from promptops.errors import ERROR_CODES
from tests.helpers.simulator import NOW, get_records

START = NOW - timedelta(hours=3)
END = START + timedelta(hours=1)


@pytest.mark.parametrize("code", [1001, 1002, 2001, 2002, 3002, 4003, 5000])
def test_error_fault_gives_code_and_status(at_now, code):
    sim = at_now
    sim.set_faults([{"kind": "error", "code": code, "path_prefix": "/v1/call_records",
                     "times": 1, "retry_after": 7}])
    resp = get_records(sim, START, END, 10)
    assert resp.status_code == ERROR_CODES[code].http_status
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["error"]["code"] == code
    if code == 2002:
        assert resp.headers["Retry-After"] == "7"
    else:
        assert "Retry-After" not in resp.headers
    assert get_records(sim, START, END, 10).status_code == 200  # times: 1 is used up


@pytest.mark.parametrize("status", [502, 503, 504])
def test_bare_status_is_an_html_page(at_now, status):
    at_now.set_faults([{"kind": "bare_status", "status": status, "times": 1}])
    resp = get_records(at_now, START, END, 10)
    assert resp.status_code == status
    assert resp.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):
        resp.json()


@pytest.mark.parametrize("variant", ["not_json", "truncated", "wrong_shape", "data_not_list"])
def test_malformed_body_is_a_200_without_the_documented_shape(at_now, variant):
    at_now.set_faults([{"kind": "malformed_body", "variant": variant, "times": 1,
                        "path_prefix": "/v1/call_records"}])
    resp = get_records(at_now, START, END, 50)
    assert resp.status_code == 200
    try:
        body = resp.json()
    except ValueError:
        body = None
    assert variant in ("not_json", "truncated") or body is not None
    good = isinstance(body, dict) and isinstance(body.get("data"), list) and "next_cursor" in body
    assert not good
    assert get_records(at_now, START, END, 50).json()["data"]


def test_reset_drops_the_connection(at_now):
    at_now.set_faults([{"kind": "reset", "times": 1}])
    with pytest.raises(requests.ConnectionError):
        get_records(at_now, START, END, 10)
    assert get_records(at_now, START, END, 10).status_code == 200


def test_slow_answer_exceeds_a_short_read_timeout(at_now):
    at_now.set_faults([{"kind": "slow", "delay_s": 1.5, "times": 1}])
    with pytest.raises(requests.ReadTimeout):
        requests.get(at_now.url + "/v1/gpu_metrics", headers=at_now.headers, timeout=(2, 0.3))
    at_now.set_faults([{"kind": "slow", "delay_s": 0.2, "times": 1}])
    resp = requests.get(at_now.url + "/v1/gpu_metrics", headers=at_now.headers, timeout=5)
    assert resp.status_code == 200 and resp.json()["data"]


def test_times_counts_down_then_stops_and_first_rule_wins(at_now):
    sim = at_now
    sim.set_faults([{"kind": "error", "code": 5000, "times": 2},
                    {"kind": "error", "code": 4003, "times": 1}])
    codes = [get_records(sim, START, END, 5).status_code for _ in range(4)]
    assert codes == [500, 500, 503, 200]
    assert sim.faults() == []


def test_method_and_path_filters(at_now):
    sim = at_now
    sim.set_faults([{"kind": "error", "code": 5000, "method": "POST"},
                    {"kind": "bare_status", "status": 502, "path_prefix": "/v1/gpu_metrics"}])
    assert get_records(sim, START, END, 5).status_code == 200
    assert requests.get(sim.url + "/v1/gpu_metrics", headers=sim.headers,
                        timeout=5).status_code == 502
    resp = requests.post(sim.url + "/v1/ops/actions", json={}, timeout=5,
                         headers=sim.headers | {"Idempotency-Key": "f-1"})
    assert resp.status_code == 500
    assert len(sim.faults()) == 2  # times: null = forever
    sim.clear_faults()
    assert sim.faults() == []


def test_health_faults(at_now):
    sim = at_now
    sim.set_faults([{"kind": "degraded", "path_prefix": "/health", "reason": "db failover",
                     "times": 1},
                    {"kind": "bare_status", "status": 503, "path_prefix": "/health",
                     "times": 1}])
    first = requests.get(sim.url + "/health", timeout=5)
    assert first.status_code == 503 and first.json() == {"status": "degraded",
                                                        "reason": "db failover"}
    second = requests.get(sim.url + "/health", timeout=5)
    assert second.status_code == 503 and second.headers["Content-Type"].startswith("text/html")
    assert requests.get(sim.url + "/health", timeout=5).status_code == 200


def test_requests_log_names_the_fault(at_now):
    sim = at_now
    sim.clear_requests_log()
    sim.set_faults([{"kind": "error", "code": 2001, "times": 1}])
    get_records(sim, START, END, 5)
    get_records(sim, START, END, 5)
    log = sim.requests_log()
    assert [(e["status"], e["fault"]) for e in log] == [(504, "error"), (200, None)]


@pytest.mark.parametrize("rule", [{"kind": "error"}, {"kind": "error", "code": 9999},
                                  {"kind": "bare_status", "status": 500},
                                  {"kind": "explode"}, {"kind": "reset", "times": 0},
                                  {"kind": "slow"}])
def test_invalid_fault_rules_are_refused(sim, rule):
    resp = requests.post(sim.url + "/_sim/faults", json=[rule], timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == 3002
    assert sim.faults() == []
