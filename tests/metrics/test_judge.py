"""The relevance judge against the simulator's real endpoint: scores, faults, budget, cost,
metric rows, configuration, and the API key kept secret."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pydantic import ValidationError

from promptops.airflow_adapters.resources import relevance_judge
from promptops.contracts.metric_table import METRICS_SCHEMA
from promptops.metrics.judge import (
    JUDGE_COST_USD,
    JUDGE_FAILURES,
    JUDGE_TOKENS,
    RELEVANCE_JUDGE_COVERAGE,
    RELEVANCE_JUDGE_MEAN,
    JudgeConfig,
    JudgeResult,
    eligible_mask,
    judge_hour,
    judge_messages,
    select_sample,
)
from promptops.simulator.judge import answer_content, count_tokens, judge_score
from tests.helpers.judge import CANARY_KEY, HOUR, JUDGE_PATH, judge_requests

PROMPT, RESPONSE = "Why was I charged twice this month?", "I checked your account. (billing)"
PRICES = {"sim-judge": (1.5e-7, 6e-7)}


def expected(prompt: str, response: str, variant: str | None = None) -> tuple[int, int, int]:
    """(score, prompt tokens, completion tokens) the simulated judge gives these texts."""
    messages = judge_messages(prompt, response)
    score = judge_score(messages[1]["content"])
    return (score, sum(count_tokens(m["content"]) + 4 for m in messages),
            count_tokens(answer_content(score, variant)))


def rows(result: JudgeResult) -> dict[tuple[str, str, str], tuple[float | None, int]]:
    table = result.metrics()
    assert table.schema == METRICS_SCHEMA
    return {(r["metric"], r["dimension"], r["slice"]): (r["value"], r["samples"])
            for r in table.to_pylist()}


# -- one record ----------------------------------------------------------------------------------

def test_a_clean_verdict_with_its_tokens(make_judge) -> None:
    verdict = make_judge().judge(PROMPT, RESPONSE)
    score, pt, ct = expected(PROMPT, RESPONSE)
    assert verdict.outcome == "ok" and verdict.score == score and verdict.reason
    assert (verdict.prompt_tokens, verdict.completion_tokens) == (pt, ct)
    assert verdict.billed and verdict.attempts == 1


@pytest.mark.parametrize("variant, outcome", [
    ("prose_json", "ok"), ("score_line", "ok"), ("fenced", "ok"),
    ("garbage", "unparsed"), ("out_of_range", "unparsed"), ("empty", "unparsed"),
    ("no_choices", "failed"),
])
def test_each_garbage_form(make_judge, judge_rules, variant, outcome) -> None:
    judge_rules([{"variant": variant, "times": 1}])
    verdict = make_judge().judge(PROMPT, RESPONSE)
    score, pt, _ = expected(PROMPT, RESPONSE)
    assert verdict.outcome == outcome, verdict.detail
    assert verdict.score == (score if outcome == "ok" else None)
    # An answered call was paid for, whatever it said: its tokens count.
    assert verdict.billed and verdict.prompt_tokens == pt


@pytest.mark.parametrize("fault, outcome, attempts, detail", [
    ({"kind": "error", "code": 5000}, "failed", 3, "HTTP 500"),
    ({"kind": "error", "code": 2002, "retry_after": 0}, "failed", 3, "HTTP 429 (rate limited"),
    ({"kind": "error", "code": 2002, "retry_after": 60}, "failed", 1, "HTTP 429"),
    ({"kind": "bare_status", "status": 502}, "failed", 3, "HTTP 502"),
    ({"kind": "error", "code": 1001}, "failed", 1, "check the judge connection's API key"),
    ({"kind": "reset"}, "failed", 3, "ConnectionError"),
    ({"kind": "slow", "delay_s": 1}, "timed_out", 1, "no answer in time"),
])
def test_endpoint_faults_are_verdicts_not_exceptions(make_judge, clean_sim, fault, outcome,
                                                     attempts, detail) -> None:
    clean_sim.set_faults([{**fault, "path_prefix": JUDGE_PATH}])
    verdict = make_judge(timeout_s=0.3).judge(PROMPT, RESPONSE)
    assert verdict.outcome == outcome
    assert detail in verdict.detail
    assert verdict.attempts == attempts
    assert not verdict.billed and verdict.prompt_tokens == 0
    assert len(judge_requests(clean_sim, expect=attempts)) == attempts


def test_a_passing_429_is_retried_after_its_retry_after(make_judge, clean_sim) -> None:
    clean_sim.set_faults([{"kind": "error", "code": 2002, "retry_after": 0, "times": 1,
                           "path_prefix": JUDGE_PATH},
                          {"kind": "error", "code": 5000, "times": 1,
                           "path_prefix": JUDGE_PATH}])
    verdict = make_judge().judge(PROMPT, RESPONSE)
    assert verdict.outcome == "ok" and verdict.attempts == 3
    statuses = [e["status"] for e in judge_requests(clean_sim, expect=3)]
    assert statuses == [429, 500, 200]


# -- an hour -------------------------------------------------------------------------------------

def test_an_hour_judged(make_judge, clean_sim, config, calls) -> None:
    result = judge_hour(calls, HOUR, config, make_judge(), price_lookup=PRICES.get)
    sample = select_sample(calls, config.sample_size, config.seed)
    assert result.enabled and result.sampled == 8 == result.ok == result.billed
    assert result.eligible == pc.sum(eligible_mask(calls)).as_py()
    want = {cid: expected(p, r) for cid, p, r in zip(
        sample["call_id"].to_pylist(), sample["prompt_text"].to_pylist(),
        sample["response_text"].to_pylist(), strict=True)}
    assert result.scores == {cid: float(w[0]) for cid, w in want.items()}
    assert result.prompt_tokens == sum(w[1] for w in want.values())
    assert result.completion_tokens == sum(w[2] for w in want.values())
    price_in, price_out = PRICES["sim-judge"]
    assert result.cost_usd == pytest.approx(result.prompt_tokens * price_in
                                            + result.completion_tokens * price_out)
    assert len(judge_requests(clean_sim, expect=8)) == 8

    got = rows(result)
    mean = sum(result.scores.values()) / 8
    assert got[(RELEVANCE_JUDGE_MEAN, "overall", "*")] == (pytest.approx(mean), 8)
    assert got[(RELEVANCE_JUDGE_COVERAGE, "overall", "*")] == (
        pytest.approx(8 / result.eligible), result.eligible)
    assert got[(JUDGE_TOKENS, "overall", "*")] == (result.total_tokens, 8)
    assert got[(JUDGE_COST_USD, "overall", "*")] == (pytest.approx(result.cost_usd), 8)
    assert got[(JUDGE_FAILURES, "overall", "*")] == (0, 8)
    per_app = {k[2]: v for k, v in got.items() if k[:2] == (RELEVANCE_JUDGE_COVERAGE, "app")}
    assert sum(n for _, n in per_app.values()) == result.eligible
    assert sum(got[(RELEVANCE_JUDGE_MEAN, "app", app)][1] for app in per_app) == 8
    # Small and JSON-safe for XCom.
    json.dumps(result.summary())


def test_a_rerun_judges_the_same_records(make_judge, config, calls) -> None:
    first = judge_hour(calls, HOUR, config, make_judge())
    again = judge_hour(calls.take(pa.array(range(calls.num_rows - 1, -1, -1))), HOUR, config,
                       make_judge())
    assert again.scores == first.scores


def test_a_failing_judge_never_fails_the_hour(make_judge, clean_sim, config, calls,
                                              judge_rules) -> None:
    clean_sim.set_faults([{"kind": "error", "code": 5000, "times": 3, "path_prefix": JUDGE_PATH},
                          {"kind": "slow", "delay_s": 1, "times": 1, "path_prefix": JUDGE_PATH}])
    judge_rules([{"variant": "garbage", "times": 2}, {"variant": "out_of_range", "times": 1}])
    cfg = config.model_copy(update={"max_workers": 1, "max_retries": 0, "timeout_s": 0.3})
    result = judge_hour(calls, HOUR, cfg, make_judge(max_retries=0, timeout_s=0.3, pool_size=1),
                        price_lookup=PRICES.get)
    # One worker, no retries: the first 3 requests get 500, the 4th times out, the next 3
    # answer in garbage or out of range (billed, unparsed), the last is scored. (The server
    # thread of the 4th sleeps on past the client's timeout; the other 4 are answered
    # before it wakes, so it finds the content rules used up.)
    assert (result.failed, result.timed_out, result.unparsed, result.ok) == (3, 1, 3, 1)
    assert result.failures == 7 and result.billed == 4
    assert result.prompt_tokens > 0 and result.cost_usd is not None and result.cost_usd > 0
    assert sum(result.problems.values()) == 7
    assert any(k.startswith("failed: HTTP 500") for k in result.problems)
    assert any("outside 1-5" in k for k in result.problems)
    assert rows(result)[(JUDGE_FAILURES, "overall", "*")] == (7, 8)


def test_the_time_budget_bounds_the_run(make_judge, clean_sim, config, calls) -> None:
    clean_sim.set_faults([{"kind": "slow", "delay_s": 1, "path_prefix": JUDGE_PATH}])
    cfg = config.model_copy(update={"budget_s": 0.5, "max_workers": 2, "sample_size": 6})
    result = judge_hour(calls, HOUR, cfg, make_judge(timeout_s=5, pool_size=2))
    assert result.ok == 0 and result.timed_out + result.skipped == 6
    assert result.skipped >= 1 and any("time budget" in n for n in result.notes)


def test_unknown_judge_price_is_null_and_said(make_judge, config, calls) -> None:
    result = judge_hour(calls, HOUR, config, make_judge(), price_lookup=lambda model: None)
    assert result.total_tokens > 0 and result.cost_usd is None
    assert any("no price for judge model 'sim-judge'" in n for n in result.notes)
    assert rows(result)[(JUDGE_COST_USD, "overall", "*")] == (None, 8)
    broken = judge_hour(calls, HOUR, config, make_judge(),
                        price_lookup=lambda model: 1 / 0)
    assert broken.cost_usd is None and broken.ok == 8
    assert any("price lookup" in n for n in broken.notes)


def test_nothing_eligible_still_reports(make_judge, clean_sim, config, calls) -> None:
    none_eligible = calls.filter(pc.invert(eligible_mask(calls)))
    result = judge_hour(none_eligible, HOUR, config, make_judge())
    assert (result.eligible, result.sampled, result.cost_usd) == (0, 0, 0.0)
    got = rows(result)
    assert got[(RELEVANCE_JUDGE_MEAN, "overall", "*")] == (None, 0)
    assert got[(RELEVANCE_JUDGE_COVERAGE, "overall", "*")] == (None, 0)
    assert judge_requests(clean_sim) == []


# -- configuration --------------------------------------------------------------------------------

def test_disabled_by_default_sends_nothing(make_judge, clean_sim, calls) -> None:
    config = JudgeConfig()
    assert config.enabled is False and config.conn_id == "relevance_judge"
    assert config.sample_size == 50
    result = judge_hour(calls, HOUR, config, make_judge())
    assert not result.enabled and result.sampled == 0 and result.scores == {}
    assert result.metrics().num_rows == 0
    assert judge_requests(clean_sim) == []


def test_settings_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("PROMPTOPS_JUDGE_ENABLED", "true")
    monkeypatch.setenv("PROMPTOPS_JUDGE_SAMPLE_SIZE", "7")
    monkeypatch.setenv("PROMPTOPS_JUDGE_MODEL", "gpt-4.1-mini")
    monkeypatch.setenv("PROMPTOPS_JUDGE_BUDGET_S", "45")
    config = JudgeConfig()
    assert (config.enabled, config.sample_size, config.model, config.budget_s) == \
        (True, 7, "gpt-4.1-mini", 45)
    monkeypatch.setenv("PROMPTOPS_JUDGE_SAMPLE_SIZE", "-1")
    with pytest.raises(ValidationError, match="sample_size"):
        JudgeConfig()


def test_from_the_airflow_connection(monkeypatch, clean_sim, config, calls) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_RELEVANCE_JUDGE", json.dumps(
        {"conn_type": "http", "host": clean_sim.url, "password": CANARY_KEY}))
    result = judge_hour(calls, HOUR, config, price_lookup=PRICES.get,
                        judge_factory=relevance_judge)
    assert result.ok == 8 and result.cost_usd is not None

    from airflow.sdk.log import _secrets_masker

    assert CANARY_KEY not in _secrets_masker().redact(f"key {CANARY_KEY}")


def test_base_url_from_the_connection_extra(monkeypatch, clean_sim, config) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_RELEVANCE_JUDGE", json.dumps(
        {"conn_type": "openai", "password": CANARY_KEY,
         "extra": {"base_url": clean_sim.url + "/v1"}}))
    with relevance_judge(config) as judge:
        assert judge.url == clean_sim.url + "/v1/chat/completions"
        assert judge.judge(PROMPT, RESPONSE).outcome == "ok"


def test_enabled_without_a_connection_says_what_to_set(clean_sim, config, calls,
                                                      caplog) -> None:
    caplog.set_level(logging.WARNING, logger="promptops.metrics.judge")
    result = judge_hour(calls, HOUR, config, judge_factory=relevance_judge)
    assert result.failed == result.sampled == 8 and result.ok == 0
    assert any("'relevance_judge'" in n and "PROMPTOPS_JUDGE_ENABLED=false" in n
               for n in result.notes)
    assert "relevance judge skipped" in caplog.text
    assert judge_requests(clean_sim) == []


# -- the key --------------------------------------------------------------------------------------

def test_the_api_key_never_shows(make_judge, clean_sim, judge_rules, config, calls,
                                 caplog) -> None:
    caplog.set_level(logging.DEBUG)
    clean_sim.set_faults([
        {"kind": "error", "code": 2002, "retry_after": 0, "times": 2, "path_prefix": JUDGE_PATH},
        {"kind": "error", "code": 5000, "times": 2, "path_prefix": JUDGE_PATH,
         "message": "upstream said no"},
        {"kind": "reset", "times": 2, "path_prefix": JUDGE_PATH},
        {"kind": "slow", "delay_s": 1, "times": 1, "path_prefix": JUDGE_PATH}])
    judge_rules([{"variant": "garbage", "times": 1}])
    judge = make_judge(timeout_s=0.3, max_retries=1)
    result = judge_hour(calls, HOUR, config, judge, price_lookup=lambda m: None)
    wrong = make_judge(api_key=CANARY_KEY + "-wrong").judge(PROMPT, RESPONSE)
    assert wrong.outcome == "failed" and "HTTP 401" in wrong.detail
    assert result.failures > 0 and "DEBUG" in caplog.text  # the retries were logged
    seen = [caplog.text, repr(judge), json.dumps(result.summary()), str(result.problems),
            str(result.notes), repr(wrong), clean_sim.log_path.read_text()]
    for text in seen:
        assert CANARY_KEY not in text


def test_judge_rows_carry_their_sampling_intervals() -> None:
    """The judge's mean score has a Student-t interval and its coverage a Wilson one, overall
    and per app; an app with one score has no interval to give."""
    from scipy import stats as sps

    scores = {f"c{i}": float(s) for i, s in enumerate([5, 4, 5, 3, 5, 4, 5, 5, 2, 5])}
    apps = {c: ("chat" if i < 9 else "search") for i, c in enumerate(scores)}
    result = JudgeResult(hour=HOUR, enabled=True, model="sim-judge", eligible=20, sampled=10,
                         ok=10, scores=scores, apps=apps,
                         eligible_by_app={"chat": 15, "search": 5})
    table = {(r["metric"], r["dimension"], r["slice"]): r for r in result.metrics().to_pylist()}
    x = np.array(list(scores.values()))
    half = sps.t.ppf(0.975, 9) * x.std(ddof=1) / np.sqrt(10)
    mean = table[("relevance_judge_mean", "overall", "*")]
    assert (mean["lower"], mean["upper"]) == pytest.approx((x.mean() - half, x.mean() + half))
    coverage = table[("relevance_judge_coverage", "overall", "*")]
    assert coverage["lower"] < 0.5 < coverage["upper"]
    assert table[("relevance_judge_mean", "app", "search")]["lower"] is None
    assert table[("relevance_judge_mean", "app", "chat")]["lower"] < 4.33
