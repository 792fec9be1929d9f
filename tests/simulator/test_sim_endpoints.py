"""The read endpoints of the simulator against a real process: health, auth, strict query
validation, cursors, pagination, ground truth of malformed records, lateness, GPUs."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
import requests

from promptops.errors import ERROR_CODES
from promptops.simulator import REJECT_REASONS
from tests.helpers.simulator import NOW, get_records, iso, problems, ts, walk

W_START = NOW.replace(hour=11, minute=0)
W_END = W_START + timedelta(hours=1)


def _error(resp: requests.Response, code: int) -> str:
    assert resp.status_code == ERROR_CODES[code].http_status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


def test_health_ok(sim):
    resp = requests.get(sim.url + "/health", timeout=5)
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["version"]
    assert abs(ts(body["time"]) - NOW) < timedelta(hours=1)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic test-key"},
                                     {"Authorization": "Bearer "}])
def test_missing_or_wrong_key_is_1001(sim, headers):
    resp = requests.get(sim.url + "/v1/gpu_metrics", headers=headers, timeout=5)
    msg = _error(resp, 1001)
    assert sim.api_key not in msg


def test_read_only_key_reads_but_cannot_act(sim):
    ro = {"Authorization": "Bearer ro-key"}
    assert requests.get(sim.url + "/v1/gpu_metrics", headers=ro, timeout=5).status_code == 200
    resp = requests.post(sim.url + "/v1/ops/actions", headers=ro | {"Idempotency-Key": "ro-1"},
                         json={"action": "restart_service", "target": "api_gateway",
                               "params": {}}, timeout=5)
    _error(resp, 1002)


@pytest.mark.parametrize(("params", "names"), [
    ({"end": "2026-11-20T11:00:00Z"}, "start"),
    ({"start": "2026-11-20T10:00:00Z"}, "end"),
    ({"start": "2026-11-20 10:00:00", "end": "2026-11-20T11:00:00Z"}, "start"),
    ({"start": "2026-11-20T10:00:00", "end": "2026-11-20T11:00:00Z"}, "start"),
    ({"start": "2026-11-20T11:00:00Z", "end": "2026-11-20T11:00:00Z"}, "before"),
    ({"start": "2026-11-20T12:00:00Z", "end": "2026-11-20T11:00:00Z"}, "before"),
    ({"start": "2026-11-20T10:00:00Z", "end": "2026-11-20T11:00:00Z", "limit": "0"}, "limit"),
    ({"start": "2026-11-20T10:00:00Z", "end": "2026-11-20T11:00:00Z", "limit": "10001"},
     "limit"),
    ({"start": "2026-11-20T10:00:00Z", "end": "2026-11-20T11:00:00Z", "limit": "ten"}, "limit"),
    ({"start": "2026-11-20T10:00:00Z", "end": "2026-11-20T11:00:00Z", "page": "2"}, "page"),
    ({"start": "2026-11-20T10:00:00Z", "end": "2026-11-20T11:00:00Z", "cursor": "abc"},
     "cursor"),
])
def test_call_records_rejects_bad_queries_with_3002(sim, params, names):
    resp = requests.get(sim.url + "/v1/call_records", params=params, headers=sim.headers,
                        timeout=5)
    assert names in _error(resp, 3002)


def test_unencoded_plus_offset_is_rejected_with_a_hint(sim):
    url = (sim.url + "/v1/call_records?start=2026-11-20T10:00:00+00:00"
           "&end=2026-11-20T11:00:00Z")
    msg = _error(requests.get(url, headers=sim.headers, timeout=5), 3002)
    assert "%2B" in msg


def test_offset_and_fraction_forms_are_the_same_window(sim):
    a = get_records(sim, W_START, W_END, 50).json()["data"]
    resp = requests.get(sim.url + "/v1/call_records", headers=sim.headers, timeout=5, params={
        "start": "2026-11-20T11:00:00.000+00:00", "end": "2026-11-20T12:00:00.000000Z",
        "limit": "50"})
    assert resp.status_code == 200
    assert resp.json()["data"] == a and len(a) == 50


def test_default_limit_is_1000(sim):
    body = requests.get(sim.url + "/v1/call_records", headers=sim.headers, timeout=10, params={
        "start": iso(W_START), "end": iso(W_END)}).json()
    assert len(body["data"]) == 1000 and body["next_cursor"]


def test_cursor_is_bound_to_its_query_and_tamper_proof(sim):
    cursor = get_records(sim, W_START, W_END, 100).json()["next_cursor"]
    assert cursor
    assert get_records(sim, W_START, W_END, 100, cursor=cursor).status_code == 200
    assert "limit" in _error(get_records(sim, W_START, W_END, 200, cursor=cursor), 3002)
    _error(get_records(sim, W_START, W_END + timedelta(hours=1), 100, cursor=cursor), 3002)
    flipped = cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]
    _error(get_records(sim, W_START, W_END, 100, cursor=flipped), 3002)


def test_walk_matches_truth_in_order_with_duplicates(sim, truth_platform):
    records, sizes = walk(sim, W_START, W_END, limit=700)
    truth = truth_platform.served_with_truth(W_START, W_END, now=NOW)
    assert records == [t.record for t in truth]
    assert all(s == 700 for s in sizes[:-1]) and 0 < sizes[-1] <= 700
    # Each call once, except the injected duplicates (which are exact copies).
    ids = Counter(r["call_id"] for r in records if isinstance(r.get("call_id"), str))
    dup_ids = {t.record["call_id"] for t in truth if t.is_duplicate}
    assert dup_ids and {c for c, n in ids.items() if n > 1} == dup_ids
    assert all(n == 2 for c, n in ids.items() if c in dup_ids)
    # Ordered by (ts, call_id), judged on the records whose ts and id are intact.
    keys = [(r["ts"], r["call_id"]) for r, t in zip(records, truth, strict=True)
            if t.reject_field not in ("ts", "call_id")]
    assert keys == sorted(keys)
    assert all(W_START <= ts(k[0]) < W_END for k in keys)


def test_duplicate_can_straddle_a_page_boundary(sim, truth_platform):
    truth = truth_platform.served_with_truth(W_START, W_END, now=NOW)
    second = next(i for i, t in enumerate(truth) if t.is_duplicate)
    first_page = get_records(sim, W_START, W_END, limit=second).json()
    assert len(first_page["data"]) == second
    nxt = get_records(sim, W_START, W_END, limit=second, cursor=first_page["next_cursor"])
    copy = nxt.json()["data"][0]
    assert copy == first_page["data"][-1]


def test_malformed_truth_matches_what_is_served(sim, truth_platform):
    truth = truth_platform.served_with_truth(W_START, W_END, now=NOW)
    served, _ = walk(sim, W_START, W_END)
    reasons = Counter()
    for t, rec in zip(truth, served, strict=True):
        found = problems(rec, W_START, W_END)
        if t.reject_reason is None:
            assert found == [], rec
        else:
            assert found == [(t.reject_reason, t.reject_field)], (t.reject_reason, rec)
            reasons[t.reject_reason] += 1
    assert set(reasons) <= set(REJECT_REASONS) and len(reasons) >= 5


def test_nothing_after_sim_now_is_served(at_now):
    sim = at_now
    records, _ = walk(sim, NOW - timedelta(minutes=30), NOW + timedelta(hours=2))
    clock = ts(sim.clock()["now"])
    stamps = []
    for r in records:
        try:
            stamps.append(ts(r["ts"]))
        except (KeyError, TypeError, ValueError):
            pass  # a malformed record's ts
    assert stamps and max(stamps) <= clock
    assert max(stamps) > NOW - timedelta(minutes=2)  # the present is being served


def test_late_records_arrive_later_without_skips(at_now, truth_platform):
    sim = at_now
    sim.set_clock(W_END + timedelta(minutes=1))
    early, _ = walk(sim, W_START, W_END)
    sim.set_clock(W_END + timedelta(minutes=15))
    later, _ = walk(sim, W_START, W_END)
    ids = lambda rs: Counter(repr(sorted(r.items())) for r in rs)  # noqa: E731
    missing = ids(later) - ids(early)
    assert ids(early) - ids(later) == Counter()  # nothing disappears
    truth = truth_platform.served_with_truth(W_START, W_END, now=W_END + timedelta(minutes=15))
    late = {repr(sorted(t.record.items())) for t in truth if t.is_late}
    assert missing and set(missing) <= late


def test_pagination_while_records_arrive_late_never_repeats(at_now):
    sim = at_now
    sim.set_clock(W_END + timedelta(seconds=30))
    first = get_records(sim, W_START, W_END, 1500).json()
    sim.set_clock(W_END + timedelta(minutes=15))
    records = list(first["data"])
    cursor = first["next_cursor"]
    while cursor:
        body = get_records(sim, W_START, W_END, 1500, cursor=cursor).json()
        records.extend(body["data"])
        cursor = body["next_cursor"]
    full, _ = walk(sim, W_START, W_END)
    seen = Counter(repr(sorted(r.items())) for r in records)
    allowed = Counter(repr(sorted(r.items())) for r in full)
    assert seen - allowed == Counter()  # nothing served twice beyond real duplicates
    assert len(records) > 0.95 * len(full)


def test_gpu_metrics_shape_and_saturation(at_now):
    resp = requests.get(at_now.url + "/v1/gpu_metrics", headers=at_now.headers, timeout=5)
    assert resp.status_code == 200
    rows = resp.json()["data"]
    fields = {"node", "gpu_index", "utilization_pct", "memory_used_mb", "memory_total_mb",
              "temperature_c", "ts"}
    assert rows and all(set(r) == fields for r in rows)
    nodes = Counter(r["node"] for r in rows)
    assert len(nodes) == 4 and all(2 <= n <= 4 for n in nodes.values())
    for r in rows:
        assert 0 <= r["utilization_pct"] <= 100 and 0 < r["memory_used_mb"] <= r["memory_total_mb"]
        assert isinstance(r["gpu_index"], int) and ts(r["ts"])
    hot = [r["utilization_pct"] for r in rows if r["node"] == "gpu-node-02"]
    cool = [r["utilization_pct"] for r in rows if r["node"] != "gpu-node-02"]
    assert min(hot) >= 97 and max(cool) < 95
    # After the incident the node cools down again.
    at_now.set_clock(NOW + timedelta(hours=2))
    rows = requests.get(at_now.url + "/v1/gpu_metrics", headers=at_now.headers,
                        timeout=5).json()["data"]
    assert max(r["utilization_pct"] for r in rows if r["node"] == "gpu-node-02") < 95


def test_api_down_incident_breaks_health_and_v1(at_now):
    sim = at_now
    sim.set_clock(ts("2026-11-21T02:30:00Z"))
    health = requests.get(sim.url + "/health", timeout=5)
    assert health.status_code == 503
    assert health.json()["status"] == "degraded" and "outage" in health.json()["reason"]
    _error(get_records(sim, W_START, W_END, 10), 5000)
    _error(requests.get(sim.url + "/v1/gpu_metrics", headers=sim.headers, timeout=5), 5000)
    sim.set_clock(ts("2026-11-21T03:05:00Z"))
    assert requests.get(sim.url + "/health", timeout=5).status_code == 200
    assert get_records(sim, W_START, W_END, 10).status_code == 200


def test_unknown_endpoint_and_method(sim):
    resp = requests.get(sim.url + "/v1/nothing", headers=sim.headers, timeout=5)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == 3002
    resp = requests.post(sim.url + "/v1/call_records", headers=sim.headers, timeout=5)
    assert resp.status_code == 405 and resp.json()["error"]["code"] == 3002


def test_request_log_records_calls_but_never_the_key(sim):
    sim.clear_requests_log()
    get_records(sim, W_START, W_END, 5)
    requests.post(sim.url + "/v1/ops/actions", headers=sim.headers | {"Idempotency-Key": "log-1"},
                  json={"action": "scale_out", "target": "api_workers",
                        "params": {"replicas": 3}, "dry_run": True}, timeout=5)
    log = sim.requests_log()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("GET", "/v1/call_records", 200), ("POST", "/v1/ops/actions", 202)]
    assert log[0]["query"]["limit"] == "5" and log[1]["idempotency_key"] == "log-1"
    assert sim.api_key not in repr(log)
    assert sim.api_key not in sim.log_tail(10_000)
    sim.clear_requests_log()
    assert sim.requests_log() == []


def test_truth_lists_resolved_incidents(sim):
    truth = sim.truth()
    by_name = {i["name"]: i for i in truth["incidents"]}
    assert by_name["sonnet-errors"]["start"].startswith("2026-11-20T13:00:00")
    assert by_name["node2-hot"]["start"].startswith("2026-11-20T16:00:00")  # now = 16:00 floor
    assert by_name["node2-hot"]["end"].startswith("2026-11-20T17:00:00")
    assert by_name["eu-slow"]["params"]["multiplier"] == 6
