"""The apply step against a real simulator when the platform refuses the action for good: a
key that may read but not act gets 403 once, the refusal is audited with the platform's
answer, and a later look with a key that may act posts the same step (same Idempotency-Key)
and the platform acts once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from promptops.errors import PERMANENT_ERRORS, PermissionDenied
from promptops.heal.audit import read_audit
from promptops.heal.flow import apply_poke, plan_heal
from promptops.heal.policy import load_policy
from promptops.lake.store import Lake
from promptops.platform.client import PlatformClient
from promptops.simulator import SimulatorProcess

RO_KEY = "sk-canary-readonly-3141"


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess("--action-duration-s", "0", api_key="full-key",
                          read_only_key=RO_KEY) as proc:
        yield proc


def posts(sim: SimulatorProcess) -> list[dict]:
    return [r for r in sim.requests_log()
            if r["method"] == "POST" and r["path"] == "/v1/ops/actions"]


def test_a_refused_action_is_posted_once_audited_and_raised_as_permanent(sim, tmp_path):
    lake, policy, now = Lake(f"file://{tmp_path}"), load_policy(), datetime.now(UTC)
    plan = plan_heal({"action": "rate_limit", "target": "user-042", "dry_run": False,
                      "reason": "flood"}, "run-ro", now, policy=policy)
    with PlatformClient(sim.url, RO_KEY, max_retries=3, backoff_factor=0.01) as client, \
            pytest.raises(PermissionDenied) as info:
        apply_poke(client, lake, plan, now, decision="auto_approved", decided_by="policy",
                   policy=policy)
    assert isinstance(info.value, PERMANENT_ERRORS)  # the DAG fails it without a retry
    assert [p["status"] for p in posts(sim)] == [403]

    [rec] = read_audit(lake, now - timedelta(hours=1), now + timedelta(hours=1))
    assert (rec.platform_status, rec.action_id) == ("refused", None)
    assert "check the service account's permissions" in rec.platform_detail
    assert RO_KEY not in rec.platform_detail
    assert not rec.counts_as_action  # no cool-down from an action that never happened

    # Permissions fixed and the task cleared: the same step is posted again, and acts.
    with PlatformClient(sim.url, sim.api_key) as client:
        result = apply_poke(client, lake, plan, now + timedelta(minutes=1),
                            decision="auto_approved", decided_by="policy", policy=policy)
    assert [s["status"] for s in result["steps"]] in (["accepted"], ["running"],
                                                      ["succeeded"])
    assert len({p["idempotency_key"] for p in posts(sim)}) == 1
    assert [a["target"] for a in sim.truth()["actions"]] == ["user-042"]
