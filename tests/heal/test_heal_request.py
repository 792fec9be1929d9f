"""Heal conf validation: every bad-conf case is refused with a message naming the problem."""

from __future__ import annotations

import pytest

from promptops.heal.policy import HealConfError, load_policy, parse_request


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def _reject(policy, conf, *needles):
    with pytest.raises(HealConfError) as exc:
        parse_request(conf, policy)
    for needle in needles:
        assert needle in str(exc.value)
    return str(exc.value)


def test_valid_requests_and_defaults(policy):
    r = parse_request({"action": "rate_limit", "target": "user-042"}, policy)
    assert r.dry_run is True  # the safe default
    assert r.params == {"requests_per_minute": 60, "ttl_minutes": 60}  # policy defaults
    assert r.platform_body() == {"action": "rate_limit", "target": "user-042",
                                 "params": {"requests_per_minute": 60, "ttl_minutes": 60},
                                 "dry_run": True, "reason": ""}
    s = parse_request({"action": "scale_out", "target": "api_workers",
                       "params": {"replicas": 12}, "dry_run": False}, policy)
    assert s.params["replicas"] == 12 and s.dry_run is False
    m = parse_request({"action": "switch_model", "target": "gpt-4o",
                       "params": {"to": "gpt-4o-mini"}}, policy)
    assert m.params == {"to": "gpt-4o-mini"}


def test_unknown_action(policy):
    _reject(policy, {"action": "reboot_cluster", "target": "api_gateway"},
            "action", "restart_service", "run_playbook")


@pytest.mark.parametrize("target", ["api_gateway; rm -rf /", "api_gateway|cat", "$(id)",
                                    "`id`", "api gateway", "user-001&&true", "a>b"])
def test_shell_metacharacters(policy, target):
    _reject(policy, {"action": "restart_service", "target": target}, "shell metacharacter")


@pytest.mark.parametrize("target", ["../etc/passwd", "..", "a/b", ".hidden"])
def test_path_traversal(policy, target):
    _reject(policy, {"action": "run_playbook", "target": target}, "path")


def test_unknown_service_user_model(policy):
    _reject(policy, {"action": "restart_service", "target": "db_primary"},
            "unknown service 'db_primary'", "api_gateway")
    # A safe name, but not in the user id alphabet (':' is for model tags).
    _reject(policy, {"action": "rate_limit", "target": "team:ml-ops"},
            "'team:ml-ops' is not a user id", policy.user_id_pattern)
    _reject(policy, {"action": "switch_model", "target": "gpt-9",
                     "params": {"to": "gpt-4o-mini"}}, "unknown model 'gpt-9'")
    _reject(policy, {"action": "switch_model", "target": "gpt-4o",
                     "params": {"to": "free-model"}}, "params.to", "unknown model 'free-model'")
    _reject(policy, {"action": "switch_model", "target": "gpt-4o", "params": {"to": "gpt-4o"}},
            "same model")


@pytest.mark.parametrize("replicas", [0, 13, -1, "6", True, 6.0])
def test_replicas_out_of_range(policy, replicas):
    msg = _reject(policy, {"action": "scale_out", "target": "api_workers",
                           "params": {"replicas": replicas}}, "params.replicas")
    assert "from 1 to 12" in msg


def test_other_bounds_params_and_fields(policy):
    _reject(policy, {"action": "rate_limit", "target": "user-001",
                     "params": {"requests_per_minute": 10001}}, "from 1 to 10000")
    _reject(policy, {"action": "rate_limit", "target": "user-001",
                     "params": {"ttl_minutes": 2000}}, "params.ttl_minutes", "from 1 to 1440")
    _reject(policy, {"action": "scale_out", "target": "api_workers"},
            "params.replicas: required")
    _reject(policy, {"action": "restart_service", "target": "api_gateway",
                     "params": {"force": True}}, "unknown for restart_service: force")
    _reject(policy, {"action": "restart_service", "target": "api_gateway", "dry_run": "no"},
            "dry_run")
    _reject(policy, {"action": "restart_service", "target": "api_gateway", "sudo": True},
            "sudo")


def test_playbook_targets(policy):
    assert parse_request({"action": "run_playbook", "target": "api_timeouts"}, policy)
    r = parse_request({"action": "run_playbook", "target": "drain_node.sh",
                       "params": {"args": ["node-7"]}}, policy)
    assert r.params["args"] == ["node-7"]
    _reject(policy, {"action": "run_playbook", "target": "rm"},
            "neither a playbook", "api_timeouts", "not found", "drain_node.sh")
    _reject(policy, {"action": "run_playbook", "target": "drain_node.sh",
                     "params": {"args": "node-7; reboot"}}, "params.args")
    with pytest.raises(HealConfError, match="not a platform action"):
        parse_request({"action": "run_playbook", "target": "api_timeouts"},
                      policy).platform_body()


def test_bad_policy_file(tmp_path):
    bad = tmp_path / "heal_policy.yaml"
    bad.write_text("services: [api_gateway]\nuser_id_pattern: '('\nmodels: [gpt-4o]\n"
                   "max_replicas: 0\nbounds: {}\nactions: {}\ncooldown: soon\n"
                   "max_actions_per_hour: 1\napproval_timeout: 1h\n")
    with pytest.raises(HealConfError) as exc:
        load_policy(bad)
    msg = str(exc.value)
    for needle in ("heal_policy.yaml: user_id_pattern", "max_replicas", "cooldown",
                   "'soon' is not a duration"):
        assert needle in msg
    with pytest.raises(HealConfError, match="file not found"):
        load_policy(tmp_path / "missing.yaml")
