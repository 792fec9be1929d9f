"""An OpenAI-compatible ``POST /v1/chat/completions`` endpoint: a stand-in LLM relevance judge.

promptops' optional judge (``promptops.metrics.judge``) asks a chat-completions endpoint for a 1-5
relevance score. This module lets the simulator play that endpoint, so the judge is tested
against a real HTTP server: the request is validated strictly (as the platform API is), the
score is deterministic (a hash of the last user message, so a test can predict it), and the
answer has OpenAI's shape with a ``usage`` block whose token counts follow from the text.

Transport faults (500, 429 with ``Retry-After``, slow answers, resets) come from the usual
``/_sim/faults`` rules with ``path_prefix: /v1/chat/completions``. What a real judge model
gets wrong *inside* a 200 (prose around the JSON, "Score: 4", "I think it's good", a 7) comes
from :class:`JudgeFaults`, set through ``/_sim/judge``.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptops.simulator.faults import CountedRules

CHAT_COMPLETIONS = "/v1/chat/completions"

#: How a faulty judge model's answer looks (the HTTP status stays 200).
JudgeVariant = Literal["garbage", "out_of_range", "prose_json", "score_line", "fenced",
                       "empty", "no_choices"]

_REASONS = {1: "The answer does not address the question.",
            2: "The answer touches the topic but misses the request.",
            3: "The answer is partly relevant.",
            4: "The answer is relevant with minor gaps.",
            5: "The answer fully addresses the question."}


# -- the request (strict, like the rest of the simulator) --------------------------------------

class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class _ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["text", "json_object", "json_schema"]


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat-completions request the judge uses; anything else is
    refused so a client that sends something unexpected finds out here, not in production."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    temperature: float | int | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    response_format: _ResponseFormat | None = None
    seed: int | None = None
    n: Literal[1] | None = None


class ChatRequestInvalid(ValueError):
    """The request body breaks the schema; the message names the field."""


def parse_request(data: Any) -> ChatRequest:
    if not isinstance(data, dict):
        raise ChatRequestInvalid("body must be a JSON object")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ChatRequestInvalid(f"{where}: {first['msg']}") from None
    if not any(m.role == "user" for m in req.messages):
        raise ChatRequestInvalid("messages: at least one message with role 'user' is required")
    return req


def openai_error(message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body (the judge endpoint speaks OpenAI, not the platform contract)."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}


# -- the judge's answer ---------------------------------------------------------------------------

def judge_score(text: str) -> int:
    """The deterministic 1-5 score the simulated judge gives a user message."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "big") % 5


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: about four characters per token, at least one."""
    return max(1, math.ceil(len(text) / 4))


def answer_content(score: int, variant: str | None) -> str:
    """The assistant message for ``score``, well-formed or in one of the faulty forms."""
    reason = _REASONS[score]
    clean = f'{{"score": {score}, "reason": "{reason}"}}'
    if variant is None:
        return clean
    if variant == "garbage":
        return "I think it's good"
    if variant == "out_of_range":
        return '{"score": 7, "reason": "Exceptionally relevant."}'
    if variant == "prose_json":
        return f"Sure! Here is my assessment:\n{clean}\nLet me know if you need more."
    if variant == "score_line":
        return f"Score: {score}\nReason: {reason}"
    if variant == "fenced":
        return f"```json\n{clean}\n```"
    if variant == "empty":
        return ""
    raise ValueError(f"unknown judge variant {variant!r}")


def completion(req: ChatRequest, variant: str | None, created: int | None = None,
               ) -> dict[str, Any]:
    """The chat.completion body for a valid request."""
    user_text = next(m.content for m in reversed(req.messages) if m.role == "user")
    score = judge_score(user_text)
    content = answer_content(score, None if variant == "no_choices" else variant)
    prompt_tokens = sum(count_tokens(m.content) + 4 for m in req.messages)
    completion_tokens = count_tokens(content) if content else 0
    if req.max_tokens is not None and completion_tokens > req.max_tokens:
        # A real model stops at max_tokens; so does this one (and says so).
        content = content[: req.max_tokens * 4]
        completion_tokens, finish = req.max_tokens, "length"
    else:
        finish = "stop"
    call_hash = hashlib.blake2b(f"{user_text}|{time.time_ns()}".encode(),
                                digest_size=12).hexdigest()
    choices = [] if variant == "no_choices" else [
        {"index": 0, "message": {"role": "assistant", "content": content},
         "finish_reason": finish, "logprobs": None}]
    return {
        "id": f"chatcmpl-sim-{call_hash}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": req.model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


# -- content faults (/_sim/judge) ----------------------------------------------------------------

class JudgeRule(BaseModel):
    """The next ``times`` judge answers (forever when null) come back in ``variant``'s form."""

    model_config = ConfigDict(extra="forbid")

    variant: JudgeVariant
    times: int | None = Field(default=None, ge=1)


def parse_judge_rules(data: Any) -> list[JudgeRule]:
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError("judge rules must be a JSON list of {variant, times} objects")
    return [JudgeRule.model_validate(item) for item in data]


class JudgeFaults(CountedRules):
    """The live list of content rules; the first with times left fires and is decremented."""

    def take(self) -> str | None:
        rule = self._take_first(lambda rule: True)
        return None if rule is None else rule.variant
