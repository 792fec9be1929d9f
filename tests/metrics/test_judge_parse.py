"""parse_verdict: a score out of whatever a judge model wrote, or None with the problem."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from promptops.airflow_adapters.connections import base_url_from_connection
from promptops.metrics.judge import (
    JudgeNotConfigured,
    chat_completions_url,
    judge_messages,
    parse_verdict,
)


@pytest.mark.parametrize("content, score", [
    ('{"score": 4, "reason": "Relevant."}', 4.0),
    ('  {"score": 5}  ', 5.0),
    ('{"Score": "3"}', 3.0),
    ('{"relevance": 2.5, "reason": "partly"}', 2.5),
    ('```json\n{"score": 2, "reason": "Off topic."}\n```', 2.0),
    ('```\n{"score": 1}\n```', 1.0),
    ('Sure! Here is my assessment:\n{"score": 4, "reason": "Relevant."}\nHope it helps.', 4.0),
    ('My take: {not json} and then {"score": 3, "reason": "ok"}', 3.0),
    ("Score: 4", 4.0),
    ("score = 2\nReason: misses the refund part.", 2.0),
    ("Relevance: 4/5", 4.0),
    ("Rating: 5 out of 5", 5.0),
    ("**Score:** 3", 3.0),
    ("4", 4.0),
    ("4/5", 4.0),
    ("5.", 5.0),
])
def test_scores_from_each_form(content: str, score: float) -> None:
    parsed = parse_verdict(content)
    assert parsed.score == score, parsed.problem
    assert parsed.problem is None


@pytest.mark.parametrize("content, problem", [
    ("I think it's good", "no score"),
    ("", "empty"),
    (None, "empty"),
    ("   \n ", "empty"),
    ('{"score": 7, "reason": "Exceptionally relevant."}', "outside 1-5"),
    ("7", "outside 1-5"),
    ("Score: 0", "outside 1-5"),
    ("Score: 8/10", "scale of 10"),
    ('{"score": "high"}', "not a number"),
    ('{"score": true}', "not a number"),
    ('{"score": null}', "not a number"),
    ('{"score": [4]}', "not a number"),
    ('{"reason": "fine"}', "no score"),
    ('{"score": NaN}', "not a number"),
    ("The answer is relevant; I'd give it high marks.", "no score"),
])
def test_garbage_and_out_of_range_are_unparsed(content: str | None, problem: str) -> None:
    parsed = parse_verdict(content)
    assert parsed.score is None
    assert parsed.problem is not None and problem in parsed.problem


def test_json_out_of_range_is_not_rescued_by_a_number_in_the_prose() -> None:
    # The model said 7 in its JSON; a "3" elsewhere must not be taken instead.
    assert parse_verdict('Between 3 and 5 overall: {"score": 7}').score is None


def test_reason_is_kept_and_bounded() -> None:
    parsed = parse_verdict('{"score": 4, "reason": "' + "x" * 2000 + '"}')
    assert parsed.score == 4 and parsed.reason is not None and len(parsed.reason) == 500


@pytest.mark.parametrize("base, url", [
    ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
    ("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
    ("http://127.0.0.1:8700", "http://127.0.0.1:8700/v1/chat/completions"),
    ("http://gw.internal/openai/v1", "http://gw.internal/openai/v1/chat/completions"),
    ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
])
def test_endpoint_from_base_url(base: str, url: str) -> None:
    assert chat_completions_url(base) == url


def test_rubric_and_texts_as_data() -> None:
    system, user = judge_messages("What is 2+2?", "4" * 50, max_text_chars=100)
    assert system["role"] == "system" and "1 to 5" in system["content"]
    assert '"score"' in system["content"] and "JSON" in system["content"]
    assert user["content"] == "<request>\nWhat is 2+2?\n</request>\n<answer>\n" + "4" * 50 \
        + "\n</answer>"
    _, long = judge_messages("p" * 500, "r", max_text_chars=100)
    assert "p" * 100 + " [truncated]" in long["content"] and "p" * 101 not in long["content"]


def test_a_base_url_that_is_not_http_is_refused_without_its_credentials() -> None:
    with pytest.raises(JudgeNotConfigured, match="http:// or https://") as info:
        chat_completions_url("ftp://user:secret@host/v1")
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("conn, base", [
    (dict(host="api.openai.com/v1", schema=None, conn_type="openai", port=None),
     "https://api.openai.com/v1"),
    (dict(host="judge.internal", schema="http", conn_type="http", port=8000),
     "http://judge.internal:8000"),
    (dict(host="vllm", schema=None, conn_type="http", port=8000), "http://vllm:8000"),
    # One parser for the platform and the judge: no trailing slash (the endpoint is the same,
    # chat_completions_url strips it).
    (dict(host="http://127.0.0.1:8700/", schema=None, conn_type="http", port=None),
     "http://127.0.0.1:8700"),
    (dict(host="https://gw.example.com/openai/v1", schema=None, conn_type="http", port=443),
     "https://gw.example.com:443/openai/v1"),
    (dict(host="", schema=None, conn_type="http", port=None), None),
])
def test_base_url_from_a_connection(conn: dict, base: str | None) -> None:
    """The judge's: https unless the connection says otherwise."""
    assert base_url_from_connection(SimpleNamespace(**conn), default_scheme="https") == base
    if base:
        assert chat_completions_url(base) == chat_completions_url(base + "/")
