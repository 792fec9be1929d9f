"""Scenario incidents show up in the window and slice the scenario names, and not elsewhere.
Statistics come from records served over HTTP by the real process."""

from __future__ import annotations

from datetime import timedelta
from statistics import mean, median

import pytest

from tests.helpers.simulator import NOW, clean, ts, walk

DAY = NOW.replace(hour=0, minute=0)


@pytest.fixture(scope="module")
def day(sim):
    """Clean records from 04:00 to 16:00 on the test day (malformed ones left out)."""
    start, end = DAY + timedelta(hours=4), DAY + timedelta(hours=16)
    return clean(walk(sim, start, end)[0], start, end)


def hours(records, first, last):
    lo, hi = DAY + timedelta(hours=first), DAY + timedelta(hours=last)
    return [r for r in records if lo <= ts(r["ts"]) < hi]


def err_rate(rs):
    return sum(r["status"] == "error" for r in rs) / max(1, len(rs))


def test_error_burst_hits_its_model_in_its_window_only(day):
    burst = hours(day, 13, 15)
    sonnet = [r for r in burst if r["model"] == "claude-3-5-sonnet"]
    others = [r for r in burst if r["model"] != "claude-3-5-sonnet"]
    sonnet_before = [r for r in hours(day, 10, 13) if r["model"] == "claude-3-5-sonnet"]
    assert len(sonnet) > 300
    assert 0.4 < err_rate(sonnet) < 0.6
    assert err_rate(others) < 0.02 and err_rate(sonnet_before) < 0.02
    codes = {r["error_code"] for r in sonnet if r["status"] == "error"}
    assert {5000, 2001} <= codes
    assert all(r["http_status"] in (500, 504) for r in sonnet
               if r["status"] == "error" and r["error_code"] in (5000, 2001))


def test_latency_spike_in_its_region_only(day):
    ok = [r for r in hours(day, 10, 11) if r["status"] == "success"]
    eu = median(r["latency_ms"] for r in ok if r["region"] == "eu-west-1")
    rest = median(r["latency_ms"] for r in ok if r["region"] != "eu-west-1")
    eu_after = median(r["latency_ms"] for r in hours(day, 11, 12)
                      if r["region"] == "eu-west-1" and r["status"] == "success")
    assert eu > 4 * rest
    assert eu_after < 1.5 * rest


def test_user_flood(day):
    def per_minute(rs):
        return len([r for r in rs if r["user_id"] == "user-042"]) / 30

    flood = per_minute(hours(day, 8, 8.5))
    calm = per_minute(hours(day, 8.5, 9))
    assert flood > 150 and calm < 20


def test_token_surge_on_its_app(day):
    def avg(rs, app):
        return mean(r["prompt_tokens"] for r in rs if r["app"] == app)

    surge, normal = hours(day, 9, 10), hours(day, 11, 12)
    assert avg(surge, "code-assistant") > 3 * avg(normal, "code-assistant")
    assert avg(surge, "support-chat") < 1.5 * avg(normal, "support-chat")


def test_intent_drop_follows_a_prompt_version_change(day):
    def labelled(rs):
        return [r for r in rs if r.get("prompt_template") == "support_triage"
                and "expected_intent" in r]

    def accuracy(rs):
        return mean(r["predicted_intent"] == r["expected_intent"] for r in rs)

    during, after = labelled(hours(day, 6, 8)), labelled(hours(day, 8, 16))
    assert len(during) > 50
    assert {r["prompt_version"] for r in during} == {"v3"}
    assert accuracy(during) < 0.75 and accuracy(after) > 0.9
    assert {r["prompt_version"] for r in after} <= {"v1", "v2"}
    other = [r for r in hours(day, 6, 8) if "expected_intent" in r
             and r.get("prompt_template") != "support_triage"]
    assert accuracy(other) > 0.9


def test_relevance_drop_on_its_app(day):
    def score(rs, pred):
        return mean(r["relevance_score"] for r in rs if "relevance_score" in r and pred(r))

    drop = hours(day, 5, 6)
    assert score(drop, lambda r: r["app"] == "search-qa") < 3.2
    assert score(drop, lambda r: r["app"] != "search-qa") > 4.3
    assert score(hours(day, 6, 16), lambda r: r["app"] == "search-qa") > 4.3


def test_realistic_baseline_shape(day):
    quiet = hours(day, 11, 12)
    assert 0.001 < err_rate(quiet) < 0.02
    rel = [r["relevance_score"] for r in quiet if "relevance_score" in r]
    assert 0.2 < len(rel) / len(quiet) < 0.4 and 4.4 < mean(rel) < 4.8
    assert 0.15 < sum("expected_intent" in r for r in quiet) / len(quiet) < 0.25
    texts = [r for r in quiet if "prompt_text" in r]
    assert 0.02 < len(texts) / len(quiet) < 0.08
    assert any(r["prompt_text"] == "[redacted]" for r in texts)
    assert {r["provider"] for r in quiet} == {"openai", "anthropic", "self-hosted"}
    for r in quiet:
        assert ("gpu_node" in r) == (r["provider"] == "self-hosted")
        if "cached_tokens" in r:
            assert 0 <= r["cached_tokens"] <= r["prompt_tokens"]
    assert len({r["user_id"] for r in quiet}) > 100
    assert len({r["team"] for r in quiet}) == 6 and len({r["region"] for r in quiet}) == 4
