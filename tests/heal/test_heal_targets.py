"""Heal targets that fit real ids: the platform's user ids in several styles reach the
platform; shell and path characters are refused before anything is posted."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from promptops.heal.flow import apply_poke, plan_heal
from promptops.heal.policy import HealConfError, load_policy, parse_request
from promptops.lake.store import Lake
from promptops.platform.client import PlatformClient
from promptops.simulator import SimulatorProcess

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)

#: User ids as real platforms write them (the simulator's own shape included).
REAL_IDS = ["user-042", "u0127", "svc-batch-01", "ana.lopez@example.com",
            "3f2b8c1e-9d4a-4e6b-8f00-1c2d3e4f5a6b", "API_KEY_owner_7", "ml.ops-bot_2",
            "U" + "x" * 127]

#: Shell, path and option smuggling, each with what the refusal must name.
INJECTIONS = [
    ("u0127; rm -rf /", "shell metacharacter"),
    ("ana.lopez@example.com&&reboot", "shell metacharacter"),
    ("$(id)@example.com", "shell metacharacter"),
    ("`id`", "shell metacharacter"),
    ("svc-batch-01|nc evil 9", "shell metacharacter"),
    ("u0127\nreboot", "shell metacharacter"),
    ("'u0127'", "shell metacharacter"),
    ('"u0127"', "shell metacharacter"),
    ("u 0127", "shell metacharacter"),
    ("../../etc/passwd", "path"),
    ("users/u0127", "path"),
    ("..", "path"),
    (".u0127", "path"),
    ("-rf", "plain name"),
    ("--help", "plain name"),
    ("@example.com", "plain name"),
    ("u0127\x00", "plain name"),
    ("u%30127", "plain name"),
    ("U" + "x" * 128, "at most 128"),
]


@pytest.fixture(scope="module")
def policy():
    return load_policy()


@pytest.mark.parametrize("user_id", REAL_IDS)
def test_real_user_ids_can_be_rate_limited(policy, user_id):
    r = parse_request({"action": "rate_limit", "target": user_id, "dry_run": False}, policy)
    assert r.target == user_id
    assert r.platform_body()["target"] == user_id


@pytest.mark.parametrize("user_id", REAL_IDS)
def test_an_alert_on_a_real_user_fills_the_rate_limit_playbook(policy, user_id):
    alert = {"fingerprint": "ab12cd34ef56ab78", "rule": "abusive_caller_5m", "scope": "health",
             "labels": {"metric": "peak_calls_per_minute", "dimension": "user",
                        "slice": user_id, "user": user_id}}
    plan = plan_heal({"action": "run_playbook", "target": "rate_limit_user", "dry_run": False,
                      "alert": alert}, "r", NOW, policy=policy)
    assert [(s["request"]["action"], s["request"]["target"]) for s in plan["steps"]] == \
        [("rate_limit", user_id)]


@pytest.mark.parametrize(("target", "needle"), INJECTIONS)
def test_injection_in_a_user_id_is_refused_with_what_was_found(policy, target, needle):
    with pytest.raises(HealConfError) as err:
        parse_request({"action": "rate_limit", "target": target}, policy)
    assert needle in str(err.value)
    # The same through an alert's labels: the playbook cannot be filled with it.
    alert = {"rule": "abusive_caller_5m", "labels": {"dimension": "user", "slice": target}}
    with pytest.raises(HealConfError):
        plan_heal({"action": "run_playbook", "target": "rate_limit_user", "alert": alert},
                  "r", NOW, policy=policy)


# -- against a real platform ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--now", NOW.isoformat(), "--action-duration-s", "0") as proc:
        yield proc


@pytest.fixture()
def client(sim) -> Iterator[PlatformClient]:
    sim.clear_requests_log()
    with PlatformClient(sim.url, sim.api_key, max_retries=0) as c:
        yield c


def _posts(sim) -> list[dict]:
    return [r for r in sim.requests_log()
            if r.get("method") == "POST" and "/v1/ops/actions" in r.get("path", "")]


def test_real_ids_reach_the_platform(sim, client, policy, tmp_path):
    lake = Lake(f"file://{tmp_path / 'lake'}")
    for i, user_id in enumerate(["u0127", "svc-batch-01", "ana.lopez@example.com",
                                 "3f2b8c1e-9d4a-4e6b-8f00-1c2d3e4f5a6b"]):
        plan = plan_heal({"action": "rate_limit", "target": user_id, "dry_run": True},
                         f"targets-{i}", NOW, policy=policy)
        result = apply_poke(client, lake, plan, NOW, decision="auto_approved",
                            decided_by="policy", policy=policy)
        assert result["done"] and result["steps"][0]["action_id"]
    posted = [a["target"] for a in sim.truth()["actions"]]
    assert posted == ["u0127", "svc-batch-01", "ana.lopez@example.com",
                      "3f2b8c1e-9d4a-4e6b-8f00-1c2d3e4f5a6b"]


@pytest.mark.parametrize(("target", "needle"), INJECTIONS[:10])
def test_a_tampered_plan_is_refused_before_any_post(sim, client, policy, tmp_path, target,
                                                    needle):
    """Plans travel through XCom: the apply step validates each step again, so an id
    edited in between never reaches the platform."""
    lake = Lake(f"file://{tmp_path / 'lake'}")
    plan = plan_heal({"action": "rate_limit", "target": "u0127", "dry_run": False},
                     "tampered", NOW, policy=policy)
    plan["steps"][0]["request"]["target"] = target
    with pytest.raises(HealConfError) as err:
        apply_poke(client, lake, plan, NOW, decision="auto_approved", decided_by="policy",
                   policy=policy)
    assert needle in str(err.value)
    assert _posts(sim) == []
