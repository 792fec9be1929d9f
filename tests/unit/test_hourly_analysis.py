"""The hourly analysis entry points: metrics partitions with their intervals, findings for an
hour, heal requests kept in the lake, and the branch decision."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pendulum
import pytest

from promptops.hourly_analysis import (
    HEAL_REQUESTS,
    analyse_hour,
    findings_for_hour,
    response_for,
    write_heal_requests,
)
from promptops.hourly_metrics import MissingCallsPartition
from promptops.lake import Lake
from promptops.records import validate_page
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


def test_heal_requests_of_a_run_replace_only_that_runs_rows(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    request = {"fingerprint": "abc", "rule": "abusive_caller", "severity": "critical",
               "playbook": "rate_limit_user", "labels": {"user": "user-042"},
               "summary": "peak 300 calls/min", "newly_fired": True}
    uri = write_heal_requests(lake, HOUR, [request], run_id="r2")
    assert uri and "heal_requests/date=2026-11-20/hour=14" in uri
    write_heal_requests(lake, HOUR, [request], run_id="r2")  # a rerun (cleared task: same run)
    rows = lake.read_partition(HEAL_REQUESTS, HOUR).to_pylist()
    assert len(rows) == 1 and rows[0]["run_id"] == "r2"
    assert json.loads(rows[0]["labels"]) == {"user": "user-042"}
    # Another run in the same hour (the health sensor runs every 5 minutes) adds its own.
    write_heal_requests(lake, HOUR, [{**request, "fingerprint": "def"}], run_id="r3")
    rows = lake.read_partition(HEAL_REQUESTS, HOUR).to_pylist()
    assert sorted((r["run_id"], r["fingerprint"]) for r in rows) == [("r2", "abc"), ("r3", "def")]
    # A rerun with nothing to request removes only its own rows.
    assert write_heal_requests(lake, HOUR, [], run_id="r3") is not None
    assert [r["run_id"] for r in lake.read_partition(HEAL_REQUESTS, HOUR).to_pylist()] == ["r2"]
    assert write_heal_requests(lake, HOUR, [], run_id="r2") is None
    assert not lake.has_partition(HEAL_REQUESTS, HOUR)


def test_response_for_outcomes():
    assert response_for({"heal_requests": [{}], "notifications": [{}]}) == "request_heal"
    assert response_for({"heal_requests": [], "notifications": [{}], "firing": []}) == \
        "alerts_sent"
    assert response_for({"heal_requests": [], "notifications": [], "firing": [{}]}) == \
        "alerts_sent"
    assert response_for({"heal_requests": [], "notifications": [], "firing": []}) == \
        "all_clear"


def test_an_unpriced_model_is_reported_not_free(lake, monkeypatch):
    from promptops.pricing import load_price_table

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


def test_root_cause_prefers_the_coarsest_sufficient_layer():
    from types import SimpleNamespace as NS

    from promptops.hourly_analysis import _coarsest_explanation

    def answers(shares: dict[int, float | None]):
        asked = []

        def localise(layers: int):
            asked.append(layers)
            share = shares[layers]
            return NS(causes=[] if share is None else [NS(share=share, layers=layers)])
        return localise, asked

    localise, asked = answers({1: 0.99, 2: 0.99, 3: 0.99})
    assert _coarsest_explanation(localise).causes[0].layers == 1 and asked == [1]
    localise, asked = answers({1: None, 2: 0.7, 3: 0.9})
    assert _coarsest_explanation(localise).causes[0].layers == 2 and asked == [1, 2]
    localise, asked = answers({1: 0.1, 2: 0.2, 3: 0.3})  # nothing sufficient: the deepest
    assert _coarsest_explanation(localise).causes[0].layers == 3 and asked == [1, 2, 3]
