"""The hourly analysis entry points: metrics partitions with their intervals, findings for an
hour, heal requests kept in the lake, and the branch decision."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pendulum
import pytest

from promptops.contracts.records import validate_page
from promptops.lake.store import Lake
from promptops.metrics.hourly import MissingCallsPartition
from promptops.pipelines.hourly import (
    analyse_hour,
    findings_for_hour,
    read_heal_requests,
    response_for,
    write_heal_requests,
)
from promptops.simulator import Platform, SimConfig

HOUR = datetime(2026, 11, 20, 14, tzinfo=UTC)


@pytest.fixture()
def lake(tmp_path) -> Lake:
    lake = Lake(f"file://{tmp_path}")
    platform = Platform(SimConfig.build("include/config/scenarios/quiet.yaml"))
    for h in (HOUR - timedelta(hours=1), HOUR):
        served = platform.served_with_truth(h, h + timedelta(hours=1))
        lake.write_partition("calls", h, validate_page(
            [s.record for s in served], h, h + timedelta(hours=1)).good)
    return lake


def test_metrics_carry_intervals_for_rates_and_relevance(lake):
    analyse_hour(lake, HOUR)
    rows = lake.read_partition("metrics", HOUR).to_pylist()
    for r in rows:
        if r["metric"] in ("success_rate", "relevance_mean"):
            assert r["lower"] <= r["value"] <= r["upper"], r
        if r["metric"] == "success_rate" and r["dimension"] == "overall":
            # Wilson 95% by hand.
            n, p, z = r["samples"], r["value"], 1.959964
            centre = (p + z * z / (2 * n)) / (1 + z * z / n)
            half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            assert r["lower"] == pytest.approx(centre - half, abs=1e-6)
            assert r["upper"] == pytest.approx(centre + half, abs=1e-6)
    err = {(r["dimension"], r["slice"]): r for r in rows if r["metric"] == "error_rate"}
    ok = {(r["dimension"], r["slice"]): r for r in rows if r["metric"] == "success_rate"}
    for key, r in err.items():
        assert r["upper"] == pytest.approx(1 - ok[key]["lower"])


def test_quiet_hour_has_no_findings_except_the_token_budget(lake, monkeypatch):
    monkeypatch.setenv("PROMPTOPS_THRESHOLD__daily_tokens__budget", "500000000")
    for h in (HOUR - timedelta(hours=1), HOUR):
        analyse_hour(lake, h)
    # Airflow hands tasks pendulum DateTimes: they must work as well as datetimes.
    assert findings_for_hour(lake, pendulum.instance(HOUR)) == []
    monkeypatch.setenv("PROMPTOPS_THRESHOLD__daily_tokens__budget", "1000")
    assert [f.rule for f in findings_for_hour(lake, HOUR)] == ["daily_tokens"]


def test_missing_partitions_say_what_to_run(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    with pytest.raises(MissingCallsPartition, match="run the ingest"):
        analyse_hour(lake, HOUR)
    with pytest.raises(LookupError, match="run the metrics task first"):
        findings_for_hour(lake, HOUR)


#: An abusive caller's alert as the alert engine hands it to the hourly run of 14:00-15:00.
HEAL_REQUEST = {"fingerprint": "abc", "rule": "abusive_caller", "severity": "critical",
                "playbook": "rate_limit_user", "labels": {"user": "user-042"},
                "summary": "peak 300 calls/min", "fired_at": "2026-11-20T15:00:00+00:00",
                "newly_fired": True}
EVALUATED_AT = HOUR + timedelta(hours=1)
HOURLY, HEALTH = "promptops_hourly", "promptops_health"


def _heal_rows(lake: Lake) -> list[dict]:
    table = read_heal_requests(lake, HOUR - timedelta(hours=1), HOUR + timedelta(hours=4))
    return [] if table is None else table.to_pylist()


def test_heal_request_reruns_keep_exactly_the_original_rows(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    created = write_heal_requests(lake, EVALUATED_AT, [HEAL_REQUEST], dag_id=HOURLY,
                                  run_id="scheduled__2026-11-20T14:00:00+00:00")
    # Filed in the hour the alert fired, one record per request.
    assert len(created) == 1 and "heal_requests/date=2026-11-20/hour=15/" in created[0]
    original = _heal_rows(lake)
    assert [(r["dag_id"], r["fingerprint"], r["run_id"]) for r in original] == \
        [(HOURLY, "abc", "scheduled__2026-11-20T14:00:00+00:00")]
    assert original[0]["requested_at"] == EVALUATED_AT
    assert json.loads(original[0]["labels"]) == {"user": "user-042"}
    # A cleared task, a backfill and `airflow dags test` rerun the same interval, the last
    # two under run ids of their own.
    for run_id in ("scheduled__2026-11-20T14:00:00+00:00", "backfill__2026-11-20T14:00:00+00:00",
                   "manual__2026-11-21T09:12:44.123456+00:00"):
        assert write_heal_requests(lake, EVALUATED_AT, [HEAL_REQUEST], dag_id=HOURLY,
                                   run_id=run_id) == []
        assert _heal_rows(lake) == original


def test_one_heal_request_per_firing_episode(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    write_heal_requests(lake, EVALUATED_AT, [HEAL_REQUEST], dag_id=HOURLY, run_id="r1")
    # The next hour the alert still fires: the same episode, already requested.
    still = {**HEAL_REQUEST, "newly_fired": False}
    assert write_heal_requests(lake, EVALUATED_AT + timedelta(hours=1), [still],
                               dag_id=HOURLY, run_id="r2") == []
    # It resolved and fired again: a new episode, a new request.
    again = {**HEAL_REQUEST, "fired_at": "2026-11-20T17:00:00+00:00"}
    assert len(write_heal_requests(lake, EVALUATED_AT + timedelta(hours=2), [again],
                                   dag_id=HOURLY, run_id="r3")) == 1
    assert [(r["run_id"], r["newly_fired"]) for r in _heal_rows(lake)] == \
        [("r1", True), ("r3", True)]
    assert write_heal_requests(lake, EVALUATED_AT, [], dag_id=HOURLY, run_id="r4") == []


def _write_heal_in_subprocess(lake_uri: str, run_id: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=120)  # both task processes write at once
        results.put(write_heal_requests(Lake(lake_uri), EVALUATED_AT, [HEAL_REQUEST],
                                        dag_id=HOURLY, run_id=run_id))
    except Exception as exc:  # the parent reports it
        results.put(repr(exc))


def test_two_concurrent_runs_of_one_interval_record_the_request_once(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fresh interpreters, as two Airflow task processes
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_write_heal_in_subprocess,
                         args=(f"file://{tmp_path}", run_id, barrier, results))
             for run_id in ("scheduled__2026-11-20T14:00:00+00:00",
                            "backfill__2026-11-20T14:00:00+00:00")]
    for p in procs:
        p.start()
    created = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(len(c) for c in created) == [0, 1], created  # one created it, one found it
    rows = _heal_rows(Lake(f"file://{tmp_path}"))
    assert [(r["dag_id"], r["fingerprint"]) for r in rows] == [(HOURLY, "abc")]


def test_dags_sharing_a_run_id_keep_each_others_heal_requests(tmp_path):
    """The 5-minute health run and the hourly run of 10:00 are both
    ``scheduled__2026-11-20T10:00:00+00:00``."""
    lake = Lake(f"file://{tmp_path}")
    run_id = "scheduled__2026-11-20T10:00:00+00:00"
    flood = {**HEAL_REQUEST, "fingerprint": "h1", "rule": "abusive_caller_5m",
             "fired_at": "2026-11-20T10:05:00+00:00"}
    write_heal_requests(lake, datetime(2026, 11, 20, 10, 5, tzinfo=UTC), [flood],
                        dag_id=HEALTH, run_id=run_id)
    hourly = [{**HEAL_REQUEST, "fingerprint": fp, "fired_at": "2026-11-20T10:05:00+00:00"}
              for fp in ("h1", "x2")]  # the same alert raised by both DAGs, and another
    assert len(write_heal_requests(lake, datetime(2026, 11, 20, 11, tzinfo=UTC), hourly,
                                   dag_id=HOURLY, run_id=run_id)) == 2
    rows = read_heal_requests(lake, datetime(2026, 11, 20, 10, tzinfo=UTC),
                              datetime(2026, 11, 20, 11, tzinfo=UTC)).to_pylist()
    assert sorted((r["dag_id"], r["fingerprint"]) for r in rows) == \
        [(HEALTH, "h1"), (HOURLY, "h1"), (HOURLY, "x2")]


def test_a_heal_request_without_its_identity_is_refused(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    incomplete = {k: v for k, v in HEAL_REQUEST.items() if k != "fingerprint"}
    with pytest.raises(ValueError, match="fingerprint.*alert engine"):
        write_heal_requests(lake, EVALUATED_AT, [incomplete], dag_id=HOURLY, run_id="r1")
    with pytest.raises(ValueError, match="dag_id"):
        write_heal_requests(lake, EVALUATED_AT, [HEAL_REQUEST], dag_id="", run_id="r1")
    assert _heal_rows(lake) == []


def test_response_for_outcomes():
    assert response_for({"heal_requests": [{}], "notifications": [{}]}) == "request_heal"
    assert response_for({"heal_requests": [], "notifications": [{}], "firing": []}) == \
        "alerts_sent"
    assert response_for({"heal_requests": [], "notifications": [], "firing": [{}]}) == \
        "alerts_sent"
    assert response_for({"heal_requests": [], "notifications": [], "firing": []}) == \
        "all_clear"
    # A backfilled hour filling a gap: what it saw firing was over, or posted by the
    # latest run; it sent nothing itself.
    assert response_for({"heal_requests": [], "notifications": [], "firing": [{}],
                         "replay": "gap"}) == "all_clear"
    assert response_for({"heal_requests": [], "notifications": [{}], "firing": [{}],
                         "replay": "gap"}) == "alerts_sent"


def test_an_unpriced_model_is_reported_not_free(lake, monkeypatch):
    from promptops.metrics.pricing import load_price_table

    monkeypatch.setenv("PROMPTOPS_THRESHOLD__daily_tokens__budget", "500000000")
    prices = load_price_table().without("mistral-7b-instruct")
    for h in (HOUR - timedelta(hours=1), HOUR):
        summary = analyse_hour(lake, h, prices=prices)
    assert summary["unpriced_models"] == ["mistral-7b-instruct"]
    rows = lake.read_partition("metrics", HOUR).to_pylist()
    cost = next(r for r in rows if r["metric"] == "cost_usd" and r["slice"] == "mistral-7b-instruct")
    assert cost["value"] is None  # unknown, not zero
    findings = findings_for_hour(lake, HOUR)
    assert [(f.rule, f.labels["slice"]) for f in findings] == [
        ("unpriced_model", "mistral-7b-instruct")]


def test_heal_requests_on_s3_are_created_once(s3_api):
    """The object-store path: fsspec's exclusive create on a real S3 API."""
    s3_api.create_bucket(Bucket="lake")
    lake = Lake("s3://lake/promptops")
    for run_id in ("scheduled__2026-11-20T14:00:00+00:00", "manual__2026-11-21T09:00:00"):
        write_heal_requests(lake, EVALUATED_AT, [HEAL_REQUEST], dag_id=HOURLY, run_id=run_id)
    write_heal_requests(lake, EVALUATED_AT, [HEAL_REQUEST], dag_id=HEALTH, run_id="r1")
    assert sorted((r["dag_id"], r["run_id"]) for r in _heal_rows(lake)) == \
        [(HEALTH, "r1"), (HOURLY, "scheduled__2026-11-20T14:00:00+00:00")]
