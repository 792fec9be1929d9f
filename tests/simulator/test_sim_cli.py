"""Determinism across processes, the CLI's truth/records subcommands, scenario validation,
the persisted action state, seasonality and the Slack sink process."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import requests

from promptops.simulator import Platform, ScenarioError, SimConfig, SimulatorProcess
from promptops.simulator.scenario import parse_scenario
from promptops.simulator.timeutil import SimClock, parse_rfc3339
from tests.helpers import ROOT
from tests.helpers.simulator import NOW, get_records

START = NOW - timedelta(hours=5)
END = START + timedelta(hours=1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "promptops.simulator", *args],
                          capture_output=True, text=True, timeout=60)


def test_same_seed_same_records_other_seed_different(sim):
    args = ("--now", NOW.isoformat())
    with SimulatorProcess(*args, seed=7) as a, SimulatorProcess(*args, seed=8) as b:
        with SimulatorProcess(*args, seed=7) as a2:
            first = get_records(a, START, END, 2000).json()
            assert first["data"] and first["data"] == get_records(a2, START, END, 2000).json()["data"]
            # A cursor from one process is valid in its twin (same seed, same query).
            nxt = get_records(a2, START, END, 2000, cursor=first["next_cursor"])
            assert nxt.status_code == 200
        other = get_records(b, START, END, 2000).json()["data"]
        assert len(other) == 2000
        assert [r["user_id"] for r in other] != [r["user_id"] for r in first["data"]]
        assert [r["latency_ms"] for r in other] != [r["latency_ms"] for r in first["data"]]


def test_records_subcommand_prints_the_served_ndjson(scenario_file, truth_platform):
    out = _cli("records", "--scenario", str(scenario_file), "--seed", "7",
               "--now", NOW.isoformat(), "--start", START.isoformat(), "--end", END.isoformat())
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines == truth_platform.records(START, END, now=NOW)


def test_truth_subcommand_resolves_relative_times(tmp_path):
    path = tmp_path / "rel.yaml"
    path.write_text("incidents:\n  - {name: a, kind: latency_spike, start: now-5h, "
                    "end: now-4h+30m, slice: {region: us-east-1}}\n")
    out = _cli("truth", "--scenario", str(path), "--now", "2026-11-20T16:45:00Z")
    assert out.returncode == 0, out.stderr
    inc = json.loads(out.stdout)["incidents"][0]
    assert inc["start"] == "2026-11-20T11:00:00.000Z" and inc["end"] == "2026-11-20T12:30:00.000Z"
    assert inc["params"] == {"multiplier": 5.0}


def test_bad_scenario_exits_2_naming_file_incident_and_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("incidents:\n  - {name: boom, kind: error_burst, start: now-1h, end: now,"
                    " params: {error_rate: 3}}\n")
    out = _cli("truth", "--scenario", str(path))
    assert out.returncode == 2
    assert str(path) in out.stderr and "boom" in out.stderr and "error_rate" in out.stderr


@pytest.mark.parametrize(("doc", "needle"), [
    ({"incidents": [{"name": "x", "kind": "meteor", "start": "now"}]}, "kind"),
    ({"incidents": [{"name": "x", "kind": "user_flood", "start": "now"}]}, "user_id"),
    ({"incidents": [{"name": "x", "kind": "error_burst", "start": "now",
                     "slice": {"model": "gpt-9"}}]}, "gpt-9"),
    ({"incidents": [{"name": "x", "kind": "error_burst", "start": "now",
                     "slice": {"colour": "red"}}]}, "colour"),
    ({"incidents": [{"name": "x", "kind": "error_burst", "start": "now",
                     "params": {"error_codes": [1234]}}]}, "1234"),
    ({"data_faults": {"malformed_rate": 2}}, "malformed_rate"),
    ({"speed": 3}, "speed"),
])
def test_scenario_validation(doc, needle):
    with pytest.raises(ScenarioError, match=needle) as info:
        parse_scenario(doc, "s.yaml")
    assert "s.yaml" in str(info.value)


def test_flat_hour_has_exactly_calls_per_hour_and_seasonality_otherwise():
    now = datetime(2026, 11, 25, 0, tzinfo=UTC)  # a Wednesday
    flat = Platform(SimConfig(seed=3, calls_per_hour=2500, flat=True), SimClock(now))
    for h in (3, 15):
        start = datetime(2026, 11, 24, h, tzinfo=UTC)
        assert len(flat.served_with_truth(start, start + timedelta(hours=1), now=now)) == 2500
    season = Platform(SimConfig(seed=3, calls_per_hour=2500), SimClock(now))

    def count(day: int, hour: int) -> int:
        start = datetime(2026, 11, day, hour, tzinfo=UTC)
        return len(season.served_with_truth(start, start + timedelta(hours=1), now=now))

    assert count(24, 15) > 2 * count(24, 3)  # afternoon peak vs night trough (Tuesday)
    assert count(24, 15) > 1.4 * count(22, 15)  # a weekday vs a Sunday


def test_actions_survive_a_restart_with_a_state_file_and_faults_flag(tmp_path):
    state = tmp_path / "state.json"
    body = {"action": "rate_limit", "target": "user-007",
            "params": {"requests_per_minute": 3, "ttl_minutes": 5}, "reason": "persist"}
    faults = '[{"kind": "error", "code": 4003, "path_prefix": "/v1/gpu_metrics", "times": 1}]'
    with SimulatorProcess("--state-file", str(state), "--faults", faults) as sim:
        gpu = requests.get(sim.url + "/v1/gpu_metrics", headers=sim.headers, timeout=5)
        assert gpu.status_code == 503 and gpu.json()["error"]["code"] == 4003
        resp = requests.post(sim.url + "/v1/ops/actions", json=body, timeout=5,
                             headers=sim.headers | {"Idempotency-Key": "p-1"})
        action_id = resp.json()["action_id"]
    assert action_id in state.read_text() and "test-key" not in state.read_text()
    with SimulatorProcess("--state-file", str(state)) as sim:
        view = requests.get(f"{sim.url}/v1/ops/actions/{action_id}", headers=sim.headers,
                            timeout=5)
        assert view.status_code == 200 and view.json()["target"] == "user-007"
        again = requests.post(sim.url + "/v1/ops/actions", json=body, timeout=5,
                              headers=sim.headers | {"Idempotency-Key": "p-1"})
        assert again.json()["action_id"] == action_id


def test_rfc3339_parsing_is_strict():
    assert parse_rfc3339("2026-11-20T13:00:00Z") == datetime(2026, 11, 20, 13, tzinfo=UTC)
    assert parse_rfc3339("2026-11-20T15:00:00.5+02:00") == datetime(2026, 11, 20, 13, 0, 0,
                                                                     500000, tzinfo=UTC)
    for bad in ("2026-11-20T13:00:00", "2026-11-20 13:00:00Z", "2026-11-20", "1763643600",
                "2026-13-20T13:00:00Z", "2026-11-20T13:00Z"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)


def test_slack_sink_process(tmp_path):
    from promptops.simulator import SlackSinkProcess

    store = tmp_path / "slack.jsonl"
    with SlackSinkProcess("--store", str(store)) as sink:
        resp = requests.post(sink.webhook_url, json={"text": "CRITICAL", "blocks": []}, timeout=5)
        assert resp.status_code == 200 and resp.text == "ok"
        assert resp.headers["Content-Type"].startswith("text/plain")
        bad = requests.post(sink.webhook_url, data=b"not json", timeout=5)
        assert bad.status_code == 400
        msgs = sink.messages()
        assert len(msgs) == 1 and msgs[0]["path"] == "/services/T000/B000/XXXX"
        assert msgs[0]["body"] == {"text": "CRITICAL", "blocks": []} and msgs[0]["received_at"]
        assert requests.get(sink.url + "/health", timeout=5).status_code == 200
        sink.clear()
        assert sink.messages() == []
    assert json.loads(store.read_text().splitlines()[0])["body"]["text"] == "CRITICAL"


def test_shipped_scenarios_are_valid():

    from promptops.simulator.scenario import (
        PARAMS_BY_KIND,
        load_scenario,
        resolve_incidents,
    )

    root = ROOT / "include" / "config" / "scenarios"
    anchor = datetime(2026, 11, 20, 16, tzinfo=UTC)
    demo = load_scenario(root / "demo.yaml")
    incidents = resolve_incidents(demo.incidents, anchor)
    assert sorted(i.kind for i in incidents) == sorted(PARAMS_BY_KIND)
    assert all(anchor - timedelta(hours=24) <= i.start and i.end <= anchor for i in incidents)
    assert load_scenario(root / "quiet.yaml").incidents == []
