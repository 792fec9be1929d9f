"""Heals act only on fresh findings: an evaluation of the current interval triggers a heal;
a replayed or backfilled one is reported (task log, audit with decision "stale"), never
acted on."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from promptops.airflow_adapters.resources import platform_client
from promptops.heal.audit import read_audit
from promptops.heal.flow import heal_triggers, platform_clock
from promptops.heal.policy import HealConfError, load_policy
from promptops.lake.store import Lake
from promptops.simulator import SimulatorProcess

#: The health run for [10:05, 10:10) evaluates at 10:10; the hourly run for [10:00, 11:00)
#: at 11:00.
HEALTH_AT = datetime(2026, 11, 20, 10, 10, tzinfo=UTC)
HOURLY_AT = datetime(2026, 11, 20, 11, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy():
    return load_policy()


@pytest.fixture()
def lake(tmp_path) -> Lake:
    return Lake(f"file://{tmp_path / 'lake'}")


def _request(rule="abusive_caller_5m", fired_at=HEALTH_AT):
    return {"fingerprint": "0123456789abcdef0123", "rule": rule, "severity": "warning",
            "playbook": "rate_limit_user", "summary": "peak 400/min on user=u0127",
            "labels": {"metric": "peak_calls_per_minute", "dimension": "user",
                       "slice": "u0127", "user": "u0127"},
            "value": 400.0, "threshold": 100.0, "fired_at": fired_at.isoformat()}


def _audit(lake: Lake) -> list:
    return read_audit(lake, HEALTH_AT - timedelta(days=1), HEALTH_AT + timedelta(days=2))


def test_the_current_evaluation_triggers_a_heal(policy, lake):
    triggers, notes = heal_triggers([_request()], scope="health", evaluated_at=HEALTH_AT,
                                    now=HEALTH_AT + timedelta(minutes=2), policy=policy,
                                    lake=lake)
    assert [t["conf"]["target"] for t in triggers] == ["rate_limit_user"] and notes == []
    assert _audit(lake) == []  # the heal run audits itself


def test_a_backfilled_evaluation_is_reported_never_acted_on(policy, lake):
    """The demo's backfill: the hour's alert reached the heal 12 hours late."""
    late = HOURLY_AT + timedelta(hours=12, minutes=5)
    req = _request("token_burst", fired_at=HOURLY_AT)
    triggers, notes = heal_triggers([req], scope="hourly", evaluated_at=HOURLY_AT, now=late,
                                    policy=policy, lake=lake)
    assert triggers == []
    [note] = notes
    for needle in ("token_burst", "stale", "12h05m", "2026-11-20 11:00",
                   "max_finding_age.hourly", "not acted on"):
        assert needle in note, note
    [rec] = _audit(lake)
    assert (rec.decision, rec.action, rec.target, rec.alert_fingerprint, rec.requested_by) == \
        ("stale", "run_playbook", "rate_limit_user", "0123456789abcdef0123",
         "promptops_hourly:token_burst")
    assert rec.requested_at == HOURLY_AT and "12h05m" in rec.decision_reason
    assert not rec.counts_as_action  # cool-down and the hourly cap ignore it
    # The late task rerun (or retried) leaves one record, not two.
    heal_triggers([req], scope="hourly", evaluated_at=HOURLY_AT,
                  now=late + timedelta(minutes=3), policy=policy, lake=lake)
    assert len(_audit(lake)) == 1


def test_each_stale_slice_is_kept_and_none_acts(policy, lake):
    """A 19-hour backfill of one still-firing alert: one record per evaluation, no heal."""
    now = HOURLY_AT + timedelta(hours=19)
    for hour in range(18):
        at = HOURLY_AT + timedelta(hours=hour)
        triggers, notes = heal_triggers([_request("error_burst", fired_at=HOURLY_AT)],
                                        scope="hourly", evaluated_at=at, now=now,
                                        policy=policy, lake=lake)
        assert triggers == [] and "stale" in notes[0]
    assert {r.decision for r in _audit(lake)} == {"stale"}
    assert len(_audit(lake)) == 18


def test_the_hourly_runs_natural_lag_is_fresh_the_previous_hour_is_not(policy):
    """The run for [10:00, 11:00) starts at 11:00 or a little later and takes minutes;
    once the next hour's evaluation is due, this one is no longer the current one."""
    limit = policy.max_finding_age.hourly
    assert timedelta(minutes=30) <= limit <= timedelta(hours=1)
    req = [_request(fired_at=HOURLY_AT)]
    assert heal_triggers(req, scope="hourly", evaluated_at=HOURLY_AT,
                         now=HOURLY_AT + timedelta(minutes=25), policy=policy)[0]
    assert heal_triggers(req, scope="hourly", evaluated_at=HOURLY_AT,
                         now=HOURLY_AT + limit, policy=policy)[0]
    previous = HOURLY_AT - timedelta(hours=1)
    assert heal_triggers(req, scope="hourly", evaluated_at=previous,
                         now=HOURLY_AT + timedelta(minutes=1), policy=policy)[0] == []


def test_a_late_health_run_is_stale(policy):
    """The health run every 5 minutes judges the last 5 minutes of calls: a run that ran
    well after its interval would act on a flood that may be over."""
    limit = policy.max_finding_age.health
    assert timedelta(minutes=5) <= limit < timedelta(minutes=30)
    req = [_request()]
    assert heal_triggers(req, scope="health", evaluated_at=HEALTH_AT, now=HEALTH_AT + limit,
                         policy=policy)[0]
    triggers, notes = heal_triggers(req, scope="health", evaluated_at=HEALTH_AT,
                                    now=HEALTH_AT + limit + timedelta(minutes=1),
                                    policy=policy)
    assert triggers == [] and "max_finding_age.health" in notes[0]


def test_freshness_is_configurable(policy):
    """An operator may allow older findings (or fewer): heal_policy.yaml max_finding_age."""
    wide = policy.model_copy(update={"max_finding_age": policy.max_finding_age.model_copy(
        update={"hourly": timedelta(hours=24)})})
    assert heal_triggers([_request()], scope="hourly", evaluated_at=HOURLY_AT,
                         now=HOURLY_AT + timedelta(hours=12), policy=wide)[0]


def test_an_unknown_scope_is_refused(policy):
    with pytest.raises(HealConfError, match="scope 'daily'.*hourly, health"):
        heal_triggers([_request()], scope="daily", evaluated_at=HOURLY_AT, now=HOURLY_AT,
                      policy=policy)


@pytest.mark.parametrize(("value", "needle"), [
    ({"hourly": "soon"}, "max_finding_age.hourly: 'soon' is not a duration"),
    ({"health": "0s"}, "max_finding_age.health: must be longer than 0"),
    ({"weekly": "1h"}, "max_finding_age.weekly"),
])
def test_bad_freshness_settings_name_the_key(tmp_path, value, needle):
    import yaml

    from promptops.heal.policy import POLICY_PATH

    path = tmp_path / "heal_policy.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(POLICY_PATH.read_text()),
                                    "max_finding_age": value}))
    with pytest.raises(HealConfError) as err:
        load_policy(path)
    assert "heal_policy.yaml" in str(err.value) and needle in str(err.value)


# -- whose clock -----------------------------------------------------------------------------

@pytest.fixture()
def sim_at_health_time(monkeypatch) -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--now", HEALTH_AT.isoformat()) as sim:
        monkeypatch.setenv("PROMPTOPS_PLATFORM_URL", sim.url)
        monkeypatch.setenv("PROMPT_API_KEY", sim.api_key)
        yield sim


def test_age_is_measured_on_the_platforms_clock(sim_at_health_time):
    """The heal acts on the platform, so "now" is the platform's time (a simulator may run
    at another date than the worker)."""
    now = platform_clock(platform_client)
    assert HEALTH_AT <= now < HEALTH_AT + timedelta(hours=1)


def test_without_a_platform_the_workers_clock_is_used(monkeypatch):
    monkeypatch.delenv("PROMPTOPS_PLATFORM_URL", raising=False)
    monkeypatch.delenv("PROMPT_API_KEY", raising=False)
    before = datetime.now(UTC)
    assert before <= platform_clock(platform_client) <= datetime.now(UTC)


def test_a_request_the_engine_marks_stale_is_never_acted_on(policy, lake):
    """A backfilled hour that fills a gap before the latest evaluation: the alert engine marks
    its requests stale even when the run itself started on time (it replays an older hour
    within max_finding_age of now)."""
    req = {**_request(), "stale": True, "evaluated_at": HEALTH_AT.isoformat()}
    triggers, notes = heal_triggers([req], scope="health", evaluated_at=HEALTH_AT,
                                    now=HEALTH_AT + timedelta(minutes=2), policy=policy,
                                    lake=lake)
    assert triggers == []
    assert len(notes) == 1 and "older than the latest evaluation" in notes[0]
    [record] = _audit(lake)
    assert record.decision == "stale"
