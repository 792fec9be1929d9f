"""Look-alike traffic (a nightly batch, a prompt rollout) and a per-app traffic drop: each
changes exactly what it says, in its window and slice, and nothing else."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from promptops.simulator import Platform, ScenarioError, SimConfig, load_scenario

DAY = datetime(2026, 9, 8, tzinfo=UTC)  # a Tuesday
CLEAN = {"malformed_rate": 0.0, "duplicate_rate": 0.0, "late_rate": 0.0}


def platform(tmp_path, incidents, seed=3, calls_per_hour=2000):
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({"seed": seed, "calls_per_hour": calls_per_hour,
                                    "data_faults": CLEAN, "incidents": incidents}))
    return Platform(SimConfig.build(path))


def records(p, start, hours=1):
    return [s.record for s in p.served_with_truth(start, start + timedelta(hours=hours))]


BATCH = {"name": "nightly", "kind": "scheduled_batch", "start": "2026-09-07T00:00:00Z",
         "slice": {"user_id": "svc-nightly-batch"},
         "params": {"daily_start": "02:00", "minutes": 60}}


def test_batch_recurs_every_night_at_its_rate_and_tokens(tmp_path):
    p = platform(tmp_path, [BATCH])
    for day in range(3):
        at = DAY + timedelta(days=day, hours=2)
        batch = [r for r in records(p, at) if r["user_id"] == "svc-nightly-batch"]
        per_minute = Counter(r["ts"][:16] for r in batch)
        assert len(per_minute) == 60
        assert 50 <= min(per_minute.values()) and max(per_minute.values()) <= 80
        tokens = Counter()
        for r in batch:
            tokens[r["ts"][:16]] += r["prompt_tokens"] + r["completion_tokens"]
        mean_tokens = sum(tokens.values()) / len(tokens)
        # Above the token-burst warning line (100k), below critical (300k) in every minute.
        assert 120_000 < mean_tokens < 180_000
        assert max(tokens.values()) < 300_000
        assert {(r["app"], r["model"], r["prompt_template"]) for r in batch} == {
            ("doc-summarizer", "gpt-4o-mini", "summarize_doc")}
        # Nothing outside its window.
        for hour in (1, 3, 14):
            other = records(p, DAY + timedelta(days=day, hours=hour))
            assert not any(r["user_id"] == "svc-nightly-batch" for r in other)


def test_batch_does_not_load_the_gpus_or_change_ordinary_callers(tmp_path):
    with_batch = platform(tmp_path, [BATCH])
    plain = Platform(SimConfig.build(None, seed=3, calls_per_hour=2000, malformed_rate=0.0,
                                     duplicate_rate=0.0, late_rate=0.0))

    def mean_utilisation(p):
        # Over the batch's hour (a 5-minute reading of a node rests on a handful of calls).
        readings = [g["utilization_pct"] for k in range(1, 13)
                    for g in p.gpu_metrics(DAY + timedelta(hours=2, minutes=5 * k))]
        return sum(readings) / len(readings)

    # The batch runs on a hosted model: the GPUs see ordinary load (the yardstick is not
    # moved by the batch's calls either).
    assert abs(mean_utilisation(with_batch) - mean_utilisation(plain)) < 8
    n_ordinary = sum(r["user_id"] != "svc-nightly-batch"
                     for r in records(with_batch, DAY + timedelta(hours=2)))
    n_plain = len(records(plain, DAY + timedelta(hours=2)))
    assert abs(n_ordinary - n_plain) <= 3 * n_plain ** 0.5


def test_rollout_changes_version_and_length_but_not_quality(tmp_path):
    rollout = {"name": "answer-v4", "kind": "prompt_rollout", "start": "2026-09-08T10:00:00Z",
               "slice": {"prompt_template": "support_answer"},
               "params": {"version": "v4", "prompt_tokens_multiplier": 1.1}}
    p = platform(tmp_path, [rollout], calls_per_hour=20_000)
    before = [r for r in records(p, DAY + timedelta(hours=8), 2)
              if r["prompt_template"] == "support_answer"]
    after = [r for r in records(p, DAY + timedelta(hours=10), 2)
             if r["prompt_template"] == "support_answer"]
    assert {r["prompt_version"] for r in before} == {"v2", "v3"}
    assert {r["prompt_version"] for r in after} == {"v4"}

    def accuracy(rs):
        labelled = [r for r in rs if r.get("expected_intent")]
        return sum(r["predicted_intent"] == r["expected_intent"] for r in labelled) / len(labelled)

    def relevance(rs):
        scores = [r["relevance_score"] for r in rs if r.get("relevance_score") is not None]
        return sum(scores) / len(scores)

    def errors(rs):
        return sum(r["status"] == "error" for r in rs) / len(rs)

    assert abs(accuracy(after) - accuracy(before)) < 0.02
    assert abs(relevance(after) - relevance(before)) < 0.1
    assert errors(after) < 0.02
    mean_prompt = lambda rs: sum(r["prompt_tokens"] for r in rs) / len(rs)  # noqa: E731
    assert 1.0 < mean_prompt(after) / mean_prompt(before) < 1.25


def test_app_traffic_drop_removes_that_apps_calls_only(tmp_path):
    drop = {"name": "broken-client", "kind": "app_traffic_drop",
            "start": "2026-09-08T10:00:00Z", "end": "2026-09-08T12:00:00Z",
            "slice": {"app": "support-chat"}, "params": {"multiplier": 0.2}}
    dropped = platform(tmp_path, [drop])
    plain = Platform(SimConfig.build(None, seed=3, calls_per_hour=2000, malformed_rate=0.0,
                                     duplicate_rate=0.0, late_rate=0.0))
    by_app = lambda rs: Counter(r["app"] for r in rs)  # noqa: E731
    during_a = by_app(records(dropped, DAY + timedelta(hours=10), 2))
    during_b = by_app(records(plain, DAY + timedelta(hours=10), 2))
    assert 0.1 < during_a["support-chat"] / during_b["support-chat"] < 0.3
    for app in ("code-assistant", "search-qa", "email-drafter"):
        assert during_a[app] == during_b[app]
    after_a = records(dropped, DAY + timedelta(hours=12))
    assert len(after_a) == len(records(plain, DAY + timedelta(hours=12)))


@pytest.mark.parametrize("incident, problem", [
    ({**BATCH, "slice": {"user_id": "svc-nightly-batch", "app": "search-qa"}}, "caller only"),
    ({**BATCH, "params": {"calls_per_minute_min": 90, "calls_per_minute_max": 60}}, "below"),
    ({**BATCH, "params": {"model": "gpt-9"}}, "gpt-9"),
    ({"name": "r", "kind": "prompt_rollout", "start": "2026-09-08T10:00:00Z",
      "params": {"version": "v4"}}, "slice.prompt_template"),
    ({"name": "d", "kind": "app_traffic_drop", "start": "2026-09-08T10:00:00Z"}, "slice.app"),
])
def test_lookalike_scenarios_are_validated(tmp_path, incident, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"incidents": [incident]}))
    with pytest.raises(ScenarioError, match=problem):
        load_scenario(path)


def test_a_wrong_typed_user_id_fault_on_a_service_account_is_a_number_not_a_crash():
    """Data faults and a scheduled batch together: the batch's caller has no digits to turn
    into the wrong type (the demo scenario's day crashed on it)."""
    from promptops.simulator.records import apply_mutation
    from promptops.simulator.traffic import Mutation

    for user, want in (("user-042", 42), ("svc-nightly-batch", sum(map(ord, "svc-nightly-batch")))):
        rec = {"user_id": user}
        apply_mutation(rec, Mutation("wrong_type", "user_id", 0), None, 0)  # type: ignore[arg-type]
        assert rec["user_id"] == want
