"""The simulator's OpenAI-compatible judge endpoint: shape, strictness, content faults."""

from __future__ import annotations

import pytest
import requests

from promptops.simulator.judge import answer_content, count_tokens, judge_score
from tests.helpers.judge import CANARY_KEY, JUDGE_PATH

BODY = {"model": "sim-judge", "temperature": 0, "max_tokens": 200,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": "Grade 1-5, answer JSON."},
                     {"role": "user", "content": "<request>hi</request><answer>hello</answer>"}]}
AUTH = {"Authorization": f"Bearer {CANARY_KEY}"}


def post(sim, body, headers=AUTH) -> requests.Response:
    return requests.post(sim.url + JUDGE_PATH, json=body, headers=headers, timeout=10)


def test_a_chat_completion_in_openai_shape(clean_sim) -> None:
    resp = post(clean_sim, BODY)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["object"] == "chat.completion" and doc["model"] == "sim-judge"
    assert doc["id"].startswith("chatcmpl-") and isinstance(doc["created"], int)
    (choice,) = doc["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    score = judge_score(BODY["messages"][1]["content"])
    assert 1 <= score <= 5
    assert choice["message"]["content"] == answer_content(score, None)
    assert doc["usage"] == {
        "prompt_tokens": sum(count_tokens(m["content"]) + 4 for m in BODY["messages"]),
        "completion_tokens": count_tokens(answer_content(score, None)),
        "total_tokens": doc["usage"]["prompt_tokens"] + doc["usage"]["completion_tokens"]}
    # Deterministic: the same text, the same score.
    assert post(clean_sim, BODY).json()["choices"][0]["message"]["content"] == \
        choice["message"]["content"]


@pytest.mark.parametrize("change, where", [
    ({"model": ""}, "model"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "only a rubric"}]}, "role 'user'"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"temperature": 3}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stream": True}, "stream"),
    ({"response_format": {"type": "xml"}}, "response_format"),
])
def test_strict_request_validation(clean_sim, change, where) -> None:
    resp = post(clean_sim, {**BODY, **change})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and where in err["message"]


def test_auth_method_and_body(clean_sim) -> None:
    assert post(clean_sim, BODY, headers={}).status_code == 401
    assert post(clean_sim, BODY, headers={"Authorization": "Bearer wrong"}).status_code == 401
    resp = requests.get(clean_sim.url + JUDGE_PATH, headers=AUTH, timeout=10)
    assert resp.status_code == 405
    resp = requests.post(clean_sim.url + JUDGE_PATH, data=b"{not json", headers=AUTH,
                         timeout=10)
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]
    log = clean_sim.log_path.read_text()
    assert CANARY_KEY not in log


def test_content_faults_fire_in_order_then_stop(clean_sim, judge_rules) -> None:
    judge_rules([{"variant": "garbage", "times": 1}, {"variant": "score_line", "times": 2}])
    listed = requests.get(clean_sim.url + "/_sim/judge", timeout=5).json()["judge"]
    assert listed == [{"variant": "garbage", "times": 1}, {"variant": "score_line", "times": 2}]
    contents = [post(clean_sim, BODY).json()["choices"][0]["message"]["content"]
                for _ in range(4)]
    score = judge_score(BODY["messages"][1]["content"])
    assert contents[0] == "I think it's good"
    assert contents[1] == contents[2] == answer_content(score, "score_line")
    assert contents[1].startswith(f"Score: {score}\n")
    assert contents[3] == answer_content(score, None)
    bad = requests.post(clean_sim.url + "/_sim/judge", json=[{"variant": "poetry"}], timeout=5)
    assert bad.status_code == 400 and "bad judge rule" in bad.json()["error"]["message"]


def test_transport_faults_use_the_usual_rules(clean_sim) -> None:
    clean_sim.set_faults([{"kind": "error", "code": 2002, "retry_after": 3,
                           "path_prefix": JUDGE_PATH, "times": 1}])
    resp = post(clean_sim, BODY)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    assert post(clean_sim, BODY).status_code == 200
