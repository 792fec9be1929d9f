"""Injected API faults: the ways a real platform (or the proxy in front of it) misbehaves.

A rule matches requests by path prefix and method and fires for its next ``times`` matches
(or forever when ``times`` is null). The first matching rule with times left fires and is
decremented; rules come from ``--faults``, a scenario's ``faults:`` or ``POST /_sim/faults``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from promptops.errors import ERROR_CODES

FaultKind = Literal["error", "bare_status", "slow", "malformed_body", "reset", "degraded",
                    "lost_response"]


class FaultRule(BaseModel):
    """One fault rule; see docs/simulator.md for every kind."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    path_prefix: str = "/v1"
    method: Literal["GET", "POST", "DELETE"] | None = None
    times: int | None = Field(default=None, ge=1)
    #: error: the platform error code; 2002 also sends ``Retry-After: retry_after``.
    code: int | None = None
    retry_after: int = Field(default=1, ge=0)
    #: bare_status: the proxy's HTTP status (an HTML page, no JSON).
    status: Literal[502, 503, 504] | None = None
    #: slow: seconds to wait before answering normally.
    delay_s: float = Field(default=0.0, ge=0, le=600)
    #: malformed_body: what the HTTP 200 body looks like.
    variant: Literal["not_json", "truncated", "wrong_shape", "data_not_list"] = "not_json"
    #: degraded: the reason /health gives with its 503.
    reason: str = "injected fault"
    message: str | None = None

    @model_validator(mode="after")
    def _kind_params(self) -> FaultRule:
        if not self.path_prefix.startswith("/"):
            raise ValueError("path_prefix must start with '/'")
        if self.kind == "error":
            if self.code is None:
                raise ValueError("an 'error' fault needs 'code'")
            if self.code not in ERROR_CODES:
                raise ValueError(f"unknown platform error code {self.code}; "
                                 f"known: {sorted(ERROR_CODES)}")
        if self.kind == "bare_status" and self.status is None:
            raise ValueError("a 'bare_status' fault needs 'status' (502, 503 or 504)")
        if self.kind == "slow" and self.delay_s <= 0:
            raise ValueError("a 'slow' fault needs 'delay_s' > 0")
        return self

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path_prefix) and (self.method is None
                                                       or self.method == method)


class CountedRules:
    """A live list of rules with an optional ``times`` each: the first rule that matches
    fires and is used up one time. Thread-safe: requests are served by many threads."""

    def __init__(self, rules: list | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list = list(rules or [])

    def add(self, rules: list) -> None:
        with self._lock:
            self._rules.extend(rules)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.model_dump() for r in self._rules]

    def _take_first(self, matches: Callable[[Any], bool]) -> Any:
        with self._lock:
            for i, rule in enumerate(self._rules):
                if not matches(rule):
                    continue
                if rule.times is not None:
                    if rule.times <= 1:
                        del self._rules[i]
                    else:
                        self._rules[i] = rule.model_copy(update={"times": rule.times - 1})
                return rule
        return None


class FaultInjector(CountedRules):
    """The live transport-fault rules of the platform API."""

    def take(self, method: str, path: str) -> FaultRule | None:
        """The rule that fires for this request, with its remaining count decremented."""
        if path.startswith("/_sim"):
            return None  # the control plane is never faulted, or a test could lock itself out
        return self._take_first(lambda rule: rule.matches(method, path))


def parse_rules(data: Any) -> list[FaultRule]:
    """A list (or one object) of rules from JSON data; pydantic errors name the field."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError("faults must be a JSON list of rule objects")
    return [FaultRule.model_validate(item) for item in data]


BARE_PAGES = {
    502: b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
         b"</h1></center><hr><center>nginx</center></body></html>\n",
    503: b"<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
         b"<h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center>"
         b"</body></html>\n",
    504: b"<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 Gateway"
         b" Time-out</h1></center><hr><center>nginx</center></body></html>\n",
}
