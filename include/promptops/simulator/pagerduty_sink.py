"""A local PagerDuty Events API v2 receiver, so alert tests can check what PagerDuty got.

``POST /v2/enqueue`` validates the body as PagerDuty documents it and answers as PagerDuty
does:

- ``routing_key`` a 32-character string; ``event_action`` one of ``trigger``,
  ``acknowledge``, ``resolve``; ``dedup_key`` a string of at most 255 characters, required
  for acknowledge and resolve; a trigger needs ``payload`` with a non-empty ``summary`` (at
  most 1024 characters), a non-empty ``source`` and a ``severity`` of ``critical``,
  ``error``, ``warning`` or ``info``; ``timestamp`` is ISO 8601, ``custom_details`` an
  object, ``links`` and ``images`` lists of objects with ``href`` / ``src``.
- Valid: ``202 {"status": "success", "message": "Event processed", "dedup_key": ...}``
  (a trigger without a dedup key gets a new one). Invalid: ``400 {"status": "invalid
  event", "message": "Event object is invalid", "errors": [...]}``.

Alerts ("incidents" here) are kept per routing key and dedup key as PagerDuty keeps them:
a trigger opens one, a trigger for an open one is deduplicated into it (``triggers``
counts them), ``acknowledge`` acknowledges it, ``resolve`` resolves it; after that a trigger
opens a new one, and an acknowledge or resolve for a key with nothing open is dropped.
``GET /incidents`` lists them, ``GET /events`` every accepted event, ``DELETE /events``
clears both, ``GET /health`` answers ok. The routing key is never stored: events and
incidents carry ``routing_key_sha256`` (a prefix of its hash) instead.

Fault injection: ``POST /_faults`` with one rule or a list, ``GET``/``DELETE /_faults``.
A rule applies to the next ``count`` enqueue requests (``null``: until cleared):

- ``{"mode": "rate_limit", "retry_after": 1}``: ``429`` as PagerDuty's rate limit answers
  it, with ``Retry-After`` only when ``retry_after`` is given.
- ``{"mode": "server_error", "status": 500}``: ``500``/``502``/``503``.
- ``{"mode": "disconnect"}``: close the connection without any answer.

A faulted request is not processed.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, cast

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from promptops.simulator.httpbase import JsonHandler, SimHTTPServer
from promptops.simulator.slack_sink import add_fault_rules
from promptops.simulator.timeutil import format_ts

ENQUEUE = "/v2/enqueue"
ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")


class PagerDutyFault(BaseModel):
    """One injected fault rule (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["rate_limit", "server_error", "disconnect"]
    count: int | None = Field(default=1, ge=1)
    retry_after: int | None = Field(default=None, ge=0)
    status: int = 500

    @model_validator(mode="after")
    def _status(self) -> PagerDutyFault:
        if self.mode == "server_error" and self.status not in (500, 502, 503):
            raise ValueError("status for server_error must be one of [500, 502, 503]")
        return self


class _Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[PagerDutyFault] = []

    def add(self, faults: list[PagerDutyFault]) -> None:
        with self._lock:
            self._faults.extend(faults)

    def take(self) -> PagerDutyFault | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            if fault.count is not None:
                if fault.count <= 1:
                    self._faults.pop(0)
                else:
                    self._faults[0] = fault.model_copy(update={"count": fault.count - 1})
            return fault

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.model_dump() for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def validate(body: Any) -> list[str]:
    """What is wrong with an Events API v2 body (empty: nothing), in PagerDuty's words."""
    if not isinstance(body, dict):
        return ["Event object must be a JSON object"]
    errors: list[str] = []
    key = body.get("routing_key")
    if not isinstance(key, str):
        errors.append("'routing_key' is missing or blank")
    elif len(key) != 32:
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = body.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' is missing or invalid (must be one of: "
                      + ", ".join(ACTIONS) + ")")
    dedup = body.get("dedup_key")
    if dedup is not None and not isinstance(dedup, str):
        errors.append("'dedup_key' must be a string")
    elif isinstance(dedup, str) and len(dedup) > 255:
        errors.append("Length of 'dedup_key' is too long (maximum is 255 characters)")
    if action in ("acknowledge", "resolve") and not _is_str(dedup):
        errors.append(f"'dedup_key' is required for event_action {action}")
    if action == "trigger":
        errors.extend(_payload_errors(body.get("payload")))
        errors.extend(_context_errors(body, "links", "href"))
        errors.extend(_context_errors(body, "images", "src"))
    return errors


def _payload_errors(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors: list[str] = []
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        errors.append("'payload.summary' is missing or blank")
    elif len(summary) > 1024:
        errors.append("Length of 'payload.summary' is too long (maximum is 1024 characters)")
    if not _is_str(payload.get("source")):
        errors.append("'payload.source' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        errors.append("'payload.severity' is missing or invalid (must be one of: "
                      + ", ".join(SEVERITIES) + ")")
    timestamp = payload.get("timestamp")
    if timestamp is not None:
        try:
            datetime.fromisoformat(str(timestamp))
        except ValueError:
            errors.append("'payload.timestamp' is not a valid ISO 8601 timestamp")
    for name in ("component", "group", "class"):
        if name in payload and not isinstance(payload[name], str):
            errors.append(f"'payload.{name}' must be a string")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict | str):
        errors.append("'payload.custom_details' must be an object")
    return errors


def _context_errors(body: dict[str, Any], name: str, required: str) -> list[str]:
    items = body.get(name)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) and _is_str(i.get(required))
                                              for i in items):
        return [f"'{name}' must be a list of objects each with '{required}'"]
    return []


def key_hash(routing_key: str) -> str:
    return hashlib.sha256(routing_key.encode()).hexdigest()[:16]


class IncidentBook:
    """Accepted events and the alerts they open, keyed like PagerDuty's (routing key hash,
    dedup key)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._incidents: list[dict[str, Any]] = []
        self._open: dict[tuple[str, str], int] = {}

    def apply(self, body: dict[str, Any]) -> str:
        """Record an accepted event; returns its dedup key."""
        now = format_ts(datetime.now(UTC))
        rk = key_hash(body["routing_key"])
        dedup = body.get("dedup_key") or uuid.uuid4().hex
        action = body["event_action"]
        stored = {k: v for k, v in body.items() if k != "routing_key"}
        with self._lock:
            self._events.append({**stored, "dedup_key": dedup, "routing_key_sha256": rk,
                                 "received_at": now})
            index = self._open.get((rk, dedup))
            if action == "trigger":
                if index is None:
                    payload = body["payload"]
                    self._open[(rk, dedup)] = len(self._incidents)
                    self._incidents.append({
                        "dedup_key": dedup, "routing_key_sha256": rk, "status": "triggered",
                        "summary": payload["summary"], "severity": payload["severity"],
                        "source": payload["source"], "triggered_at": now,
                        "resolved_at": None, "triggers": 1})
                else:
                    incident = self._incidents[index]
                    incident["triggers"] += 1
                    incident["summary"] = body["payload"]["summary"]
                    incident["severity"] = body["payload"]["severity"]
            elif index is not None:  # acknowledge/resolve for nothing open are dropped
                incident = self._incidents[index]
                if action == "acknowledge":
                    incident["status"] = "acknowledged"
                else:
                    incident["status"] = "resolved"
                    incident["resolved_at"] = now
                    del self._open[(rk, dedup)]
        return dedup

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._events]

    def incidents(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(i) for i in self._incidents]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self._incidents.clear()
            self._open.clear()


class PagerDutySinkHandler(JsonHandler):
    server: PagerDutySinkServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/events":
            self.send_json(200, {"events": self.server.book.events()})
        elif path == "/incidents":
            self.send_json(200, {"incidents": self.server.book.incidents()})
        elif path == "/_faults":
            self.send_json(200, {"faults": self.server.faults.list()})
        elif path == "/health":
            self.send_json(200, {"status": "ok"})
        else:
            self.send_json(404, {"status": "not found"})

    def do_DELETE(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/events":
            self.server.book.clear()
            self.send_json(200, {"events": []})
        elif path == "/_faults":
            self.server.faults.clear()
            self.send_json(200, {"faults": []})
        else:
            self.send_json(404, {"status": "not found"})

    def do_POST(self) -> None:
        raw = self.read_body()
        path = self.path.split("?", 1)[0]
        if path == "/_faults":
            self._add_faults(raw)
            return
        if path != ENQUEUE:
            self.send_json(404, {"status": "not found"})
            return
        fault = self.server.faults.take()
        if fault is not None:
            self._answer_fault(fault)
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._invalid(["Event object is not valid JSON"])
            return
        errors = validate(body)
        if errors:
            self._invalid(errors)
            return
        dedup = self.server.book.apply(body)
        self.send_json(202, {"status": "success", "message": "Event processed",
                             "dedup_key": dedup})

    def _invalid(self, errors: list[str]) -> None:
        self.send_json(400, {"status": "invalid event", "message": "Event object is invalid",
                             "errors": errors})

    def _add_faults(self, raw: bytes) -> None:
        add_fault_rules(self, raw, PagerDutyFault)

    def _answer_fault(self, fault: PagerDutyFault) -> None:
        if fault.mode == "rate_limit":
            headers = ({"Retry-After": str(fault.retry_after)}
                       if fault.retry_after is not None else None)
            self.send_json(429, {"status": "throttle event",
                                 "message": "Requests for this service are arriving too "
                                            "quickly. Please retry later."}, headers)
        elif fault.mode == "server_error":
            self.send_json(fault.status, {"status": "error", "message": "Internal error"})
        else:  # disconnect: no status line at all
            self.close_connection = True
            self._log_access(0)


class PagerDutySinkServer(SimHTTPServer):
    def __init__(self, host: str, port: int) -> None:
        super().__init__((host, port), PagerDutySinkHandler)
        self.book = IncidentBook()
        self.faults = _Faults()

    @property
    def url(self) -> str:
        host, port = cast("tuple[str, int]", self.server_address[:2])
        return f"http://{host}:{port}"


def start_in_thread(host: str, port: int) -> PagerDutySinkServer:
    """Run a sink in this process (tests; port 0 picks a free one)."""
    server = PagerDutySinkServer(host, port)
    threading.Thread(target=server.serve_forever, name="pagerduty-sink", daemon=True).start()
    return server


__all__ = ["ENQUEUE", "IncidentBook", "PagerDutyFault", "PagerDutySinkServer",
           "start_in_thread", "validate"]
