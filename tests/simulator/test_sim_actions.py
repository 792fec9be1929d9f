"""POST /v1/ops/actions: strict bodies, idempotency, lifecycle, and the closed loop (an
action changes the traffic generated after its created_at)."""

from __future__ import annotations

import socket
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from statistics import median

import pytest
import requests

from promptops.simulator import SimulatorProcess
from tests.helpers.simulator import clean, ts, walk


def post(sim, body, key):
    headers = dict(sim.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return requests.post(sim.url + "/v1/ops/actions", json=body, headers=headers, timeout=5)


def get_action(sim, action_id):
    return requests.get(f"{sim.url}/v1/ops/actions/{action_id}", headers=sim.headers, timeout=5)


OK = {"action": "rate_limit", "target": "user-001",
      "params": {"requests_per_minute": 5, "ttl_minutes": 10}, "dry_run": True,
      "reason": "test"}


@pytest.mark.parametrize(("body", "field"), [
    ({**OK, "action": "reboot"}, "action"),
    ({**OK, "target": ""}, "target"),
    ({**OK, "target": 42}, "target"),
    ({k: v for k, v in OK.items() if k != "params"}, "params"),
    ({**OK, "params": {"requests_per_minute": 5}}, "ttl_minutes"),
    ({**OK, "params": {"requests_per_minute": 0, "ttl_minutes": 1}}, "requests_per_minute"),
    ({**OK, "params": {"requests_per_minute": "5", "ttl_minutes": 1}}, "requests_per_minute"),
    ({**OK, "params": {"requests_per_minute": 5, "ttl_minutes": 1, "burst": 2}}, "burst"),
    ({"action": "scale_out", "target": "api_workers", "params": {"replicas": True}},
     "replicas"),
    ({"action": "scale_out", "target": "api_workers", "params": {"replicas": 2.0}},
     "replicas"),
    ({"action": "switch_model", "target": "gpt-4o", "params": {"to": "gpt-5"}}, "to"),
    ({"action": "restart_service", "target": "api_gateway", "params": {"force": True}},
     "force"),
    ({**OK, "dry_run": "yes"}, "dry_run"),
    ({**OK, "reason": 5}, "reason"),
    ({**OK, "priority": "high"}, "priority"),
    ([OK], "object"),
])
def test_bad_bodies_are_422_naming_the_field(sim, body, field):
    resp = post(sim, body, f"bad-{field}-{time.monotonic_ns()}")
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == 3002
    assert field in resp.json()["error"]["message"]


def test_missing_idempotency_key_and_non_json_body(sim):
    resp = post(sim, OK, None)
    assert resp.status_code == 422 and "Idempotency-Key" in resp.json()["error"]["message"]
    resp = requests.post(sim.url + "/v1/ops/actions", data=b"{not json", timeout=5,
                         headers=sim.headers | {"Idempotency-Key": "nj-1",
                                                "Content-Type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == 3002


def test_same_key_returns_the_first_answer_and_acts_once(sim):
    before = len(sim.truth()["actions"])
    body = {"action": "scale_out", "target": "api_workers", "params": {"replicas": 4},
            "dry_run": True, "reason": "idem"}
    first = post(sim, body, "idem-1")
    again = post(sim, body, "idem-1")
    other_body = post(sim, {**body, "params": {"replicas": 9}}, "idem-1")
    assert first.status_code == again.status_code == other_body.status_code == 202
    assert first.json() == again.json() == other_body.json()
    assert first.json()["status"] == "dry_run"
    assert len(sim.truth()["actions"]) == before + 1
    assert get_action(sim, first.json()["action_id"]).json()["params"] == {"replicas": 4}


def test_lifecycle_reaches_succeeded(sim):
    resp = post(sim, {"action": "scale_out", "target": "intent_classifier",
                      "params": {"replicas": 2}, "reason": "life"}, "life-1")
    assert resp.status_code == 202 and resp.json()["status"] == "accepted"
    action_id = resp.json()["action_id"]
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        view = get_action(sim, action_id).json()
        if not seen or seen[-1] != view["status"]:
            seen.append(view["status"])
        if view["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert seen[-1] == "succeeded"
    assert seen == [s for s in ("accepted", "running", "succeeded") if s in seen]
    assert set(view) >= {"action_id", "action", "target", "params", "status", "created_at",
                         "finished_at", "detail"}
    assert view["action"] == "scale_out" and view["target"] == "intent_classifier"
    assert ts(view["finished_at"]) >= ts(view["created_at"]) and "intent_classifier" in view["detail"]


def test_unknown_target_is_accepted_then_fails(sim):
    resp = post(sim, {"action": "restart_service", "target": "flux_capacitor", "params": {}},
                "fail-1")
    assert resp.status_code == 202 and resp.json()["status"] == "accepted"
    deadline = time.monotonic() + 10
    while (view := get_action(sim, resp.json()["action_id"]).json())["status"] not in (
            "succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert view["status"] == "failed" and "flux_capacitor" in view["detail"]
    assert view["finished_at"] is not None


def test_unknown_action_id_is_404(sim):
    resp = get_action(sim, "act-doesnotexist")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == 3002


# -- closed loop ------------------------------------------------------------------------------
LOOP_NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LOOP_SCENARIO = """
seed: 11
calls_per_hour: 6000
incidents:
  - {name: flood, kind: user_flood, start: 2026-11-22T10:00:00Z, end: 2026-11-22T14:00:00Z,
     slice: {user_id: user-042}, params: {calls_per_minute: 120}}
  - {name: apac-errors, kind: error_burst, start: 2026-11-22T10:00:00Z,
     end: 2026-11-22T14:00:00Z, slice: {region: ap-southeast-1}, params: {error_rate: 0.4}}
  - {name: usw-slow, kind: latency_spike, start: 2026-11-22T10:00:00Z,
     end: 2026-11-22T14:00:00Z, slice: {region: us-west-2}, params: {multiplier: 6}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A simulator of its own whose traffic four real actions change at LOOP_NOW."""
    path = tmp_path_factory.mktemp("loop") / "loop.yaml"
    path.write_text(LOOP_SCENARIO)
    sink_port = _free_port()
    with SimulatorProcess("--scenario", str(path), "--now", LOOP_NOW.isoformat(),
                          "--action-duration-s", "0.5", "--slack-sink-port", str(sink_port),
                          seed=11) as sim:
        actions = {}
        for name, body in {
            "rate": {"action": "rate_limit", "target": "user-042",
                     "params": {"requests_per_minute": 10, "ttl_minutes": 60}},
            "switch": {"action": "switch_model", "target": "gpt-4o",
                       "params": {"to": "claude-3-haiku"}},
            "restart": {"action": "restart_service", "target": "api_gateway", "params": {}},
            "scale": {"action": "scale_out", "target": "api_workers", "params": {"replicas": 8}},
            "dry": {"action": "switch_model", "target": "llama-3-70b",
                    "params": {"to": "gpt-4o-mini"}, "dry_run": True},
        }.items():
            resp = post(sim, {**body, "reason": "closed loop test"}, f"loop-{name}")
            assert resp.status_code == 202, resp.text
            actions[name] = get_action(sim, resp.json()["action_id"]).json()
        sim.set_clock(LOOP_NOW + timedelta(minutes=50))
        start, end = LOOP_NOW - timedelta(minutes=40), LOOP_NOW + timedelta(minutes=40)
        records = clean(walk(sim, start, end)[0], start, end)
        yield sim, actions, records, sink_port


def _split(records, actions, name):
    created = ts(actions[name]["created_at"])
    before = [r for r in records if ts(r["ts"]) < created]
    after = [r for r in records if ts(r["ts"]) >= created + timedelta(minutes=1)]
    return before, after


def test_rate_limit_caps_the_users_calls(loop):
    _, actions, records, _ = loop
    before, after = _split(records, actions, "rate")
    per_min = lambda rs: Counter(r["ts"][:16] for r in rs if r["user_id"] == "user-042")  # noqa: E731
    assert min(per_min(before).values()) >= 80
    assert per_min(after) and max(per_min(after).values()) <= 10


def test_switch_model_moves_traffic(loop):
    _, actions, records, _ = loop
    before, after = _split(records, actions, "switch")
    assert sum(r["model"] == "gpt-4o" for r in before) > 100
    assert sum(r["model"] == "gpt-4o" for r in after) == 0
    # Judged without the flooding user, whose calls the rate limit removes.
    def share(rs):
        rs = [r for r in rs if r["user_id"] != "user-042"]
        return sum(r["model"] == "claude-3-haiku" for r in rs) / len(rs)

    assert share(after) > share(before) + 0.07
    # The dry run changed nothing: llama keeps its traffic.
    assert sum(r["model"] == "llama-3-70b" for r in after) > 100


def test_restart_ends_the_error_burst(loop):
    sim, actions, records, _ = loop
    before, after = _split(records, actions, "restart")
    rate = lambda rs: (sum(r["status"] == "error" for r in rs if r.get("region") == "ap-southeast-1")  # noqa: E731
                       / sum(r.get("region") == "ap-southeast-1" for r in rs))
    assert rate(before) > 0.25 and rate(after) < 0.05
    inc = {i["name"]: i for i in sim.truth()["incidents"]}["apac-errors"]
    assert inc["ended_by"] == actions["restart"]["action_id"]


def test_scale_out_absorbs_the_latency_spike(loop):
    _, actions, records, _ = loop
    before, after = _split(records, actions, "scale")
    med = lambda rs: median(r["latency_ms"] for r in rs if r.get("region") == "us-west-2"  # noqa: E731
                            and r["status"] == "success")
    assert med(after) < med(before) / 2.5


def test_in_process_sink_answers_beside_the_simulator(loop):
    url = f"http://127.0.0.1:{loop[3]}"
    resp = requests.post(url + "/services/T/B/X", json={"text": "hello"}, timeout=5)
    assert resp.status_code == 200 and resp.text == "ok"
    msgs = requests.get(url + "/messages", timeout=5).json()["messages"]
    assert msgs[-1]["body"] == {"text": "hello"}
