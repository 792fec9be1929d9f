"""Policy decisions, playbook expansion and idempotency keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from promptops.heal.audit import AuditRecord
from promptops.heal.policy import (
    HealConfError,
    check_policy,
    expand_playbook,
    idempotency_key,
    load_playbooks,
    load_policy,
    parse_request,
)

NOW = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def _done(target, minutes_ago, *, dry_run=False, action_id="act-1", key=None):
    return AuditRecord(idempotency_key=key or f"k-{target}-{minutes_ago}",
                       requested_at=NOW - timedelta(minutes=minutes_ago), action="restart_service",
                       target=target, decision="auto_approved", dry_run=dry_run,
                       action_id=action_id)


def _req(policy, action="restart_service", target="api_gateway", **kw):
    return parse_request({"action": action, "target": target, "dry_run": False, **kw}, policy)


def test_approval_per_action(policy):
    assert check_policy(_req(policy, "rate_limit", "user-001"), [], NOW, policy) == \
        check_policy(_req(policy, "rate_limit", "user-001"), [], NOW, policy)
    d = check_policy(_req(policy, "rate_limit", "user-001"), [], NOW, policy)
    assert d.allowed and not d.needs_approval
    d = check_policy(_req(policy), [], NOW, policy)
    assert d.allowed and d.needs_approval and "needs approval" in d.reason
    small = _req(policy, "scale_out", "api_workers", params={"replicas": 6})
    big = _req(policy, "scale_out", "api_workers", params={"replicas": 7})
    assert not check_policy(small, [], NOW, policy).needs_approval
    d = check_policy(big, [], NOW, policy)
    assert d.needs_approval and "up to 6" in d.reason
    sw = _req(policy, "switch_model", "gpt-4o", params={"to": "gpt-4o-mini"})
    assert check_policy(sw, [], NOW, policy).needs_approval


def test_cooldown_per_target(policy):
    req = _req(policy, "rate_limit", "user-001")
    d = check_policy(req, [_done("user-001", 10)], NOW, policy)
    assert not d.allowed and "cooling down" in d.reason and "11:50" in d.reason
    assert "12:20" in d.reason  # when it is allowed again
    # Other targets, old actions, dry runs and never-posted actions do not count.
    history = [_done("user-002", 5), _done("user-001", 31), _done("user-001", 1, dry_run=True),
               _done("user-001", 2, action_id=None)]
    assert check_policy(req, history, NOW, policy).allowed


def test_hourly_cap(policy):
    history = [_done(f"user-{i:03d}", 5 * i + 1) for i in range(1, 7)]  # 6 within the hour
    d = check_policy(_req(policy, "rate_limit", "user-100"), history, NOW, policy)
    assert not d.allowed and "hourly cap" in d.reason and "6" in d.reason
    # One of them slides out of the hour: allowed again.
    later = NOW + timedelta(minutes=30)
    assert check_policy(_req(policy, "rate_limit", "user-100"), history, later, policy).allowed


def test_dry_run_bypasses_cooldown_and_approval(policy):
    req = parse_request({"action": "restart_service", "target": "api_gateway"}, policy)
    d = check_policy(req, [_done("api_gateway", 1)], NOW, policy)
    assert d.allowed and not d.needs_approval and "dry run" in d.reason


def test_expand_api_timeouts(policy):
    steps = expand_playbook("api_timeouts", {"rule": "api_timeouts"}, policy=policy)
    assert [(s.action.value, s.target, s.params) for s in steps] == [
        ("restart_service", "api_gateway", {}), ("scale_out", "api_workers", {"replicas": 6})]
    assert all(s.dry_run and s.requested_by == "playbook:api_timeouts" for s in steps)


def test_expand_fills_labels_and_cheaper_model(policy):
    labels = {"dimension": "user_id", "slice": "user-042", "model": "claude-3-5-sonnet"}
    steps = expand_playbook("high_token_usage", labels, dry_run=False,
                            alert_fingerprint="0123456789abcdef", policy=policy)
    assert [(s.action.value, s.target) for s in steps] == [
        ("rate_limit", "user-042"), ("switch_model", "claude-3-5-sonnet")]
    assert steps[1].params == {"to": "claude-3-haiku"}
    assert all(not s.dry_run and s.alert_fingerprint == "0123456789abcdef" for s in steps)
    # A model with no configured stand-in falls back to a cheaper one of the same provider.
    steps = expand_playbook("high_token_usage", {"user_id": "user-001", "model": "gpt-4.1"},
                            policy=policy)
    assert steps[1].params["to"] == "gpt-5-nano"  # cheapest openai model


def test_expand_errors(policy):
    with pytest.raises(HealConfError, match="unknown playbook 'nope'; known: api_timeouts"):
        expand_playbook("nope", {}, policy=policy)
    with pytest.raises(HealConfError, match="needs label 'user_id'"):
        expand_playbook("rate_limit_user", {"rule": "abuse"}, policy=policy)
    # A label value is validated like a hand-typed target: no smuggling through alerts.
    with pytest.raises(HealConfError, match="step 1.*shell metacharacter"):
        expand_playbook("rate_limit_user", {"user_id": "user-001;reboot"}, policy=policy)


def test_bad_playbooks_file(tmp_path):
    f = tmp_path / "playbooks.yaml"
    f.write_text("playbooks:\n  x:\n    steps:\n      - {action: format_disk, target: a}\n")
    with pytest.raises(HealConfError, match=r"playbooks.yaml: playbooks.x.steps.0.action"):
        load_playbooks(f)
    f.write_text("cheaper_models: {gpt-4o-mini: gpt-4o}\nplaybooks:\n  x:\n"
                 "    steps: [{action: restart_service, target: api_gateway}]\n")
    with pytest.raises(HealConfError, match="gpt-4o is not cheaper than gpt-4o-mini"):
        load_playbooks(f)


def test_idempotency_key():
    k = idempotency_key("manual__2025-03-04T12:00:00+00:00", 1)
    assert k == idempotency_key("manual__2025-03-04T12:00:00+00:00", "1")  # stable
    assert k.startswith("heal-") and len(k) <= 40
    assert k != idempotency_key("manual__2025-03-04T12:00:00+00:00", 2)
    assert k != idempotency_key("manual__2025-03-04T12:00:01+00:00", 1)
    assert set(k[5:]) <= set("0123456789abcdef")
    # Known value: the key must not change between releases (retries span deploys).
    assert idempotency_key("run", "step") == "heal-e8827f57823e86e65963acf3c7d6ba17"
