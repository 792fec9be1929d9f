"""A Slack-compatible incoming-webhook sink, so alert tests can read what was posted.

Any POST with a JSON body is stored (path, received_at, body) and answered like Slack does:
``200`` with the text ``ok``. A body that is not JSON gets Slack's ``400 invalid_payload``.
``GET /messages`` lists what was stored, ``DELETE /messages`` clears it, ``GET /health``
answers ``ok``. With ``store`` every message is also appended to a JSONL file.

Fault injection, for tests of delivery errors: ``POST /_faults`` with one rule or a list of
rules queues them, ``GET /_faults`` lists what is left, ``DELETE /_faults`` clears them.
A rule applies to the next ``count`` webhook POSTs (``null``: until cleared) whose path
starts with ``path`` (default: any), first queued first used:

- ``{"mode": "rate_limit", "retry_after": 1}``: ``429 rate_limited`` with ``Retry-After``.
- ``{"mode": "invalid_webhook", "status": 404}``: Slack's answer to a wrong or revoked
  webhook: ``404 no_service`` (or ``403 invalid_token``, ``410 channel_is_archived``).
- ``{"mode": "server_error", "status": 500}``: ``500``/``503`` with a body Slack might send.
- ``{"mode": "slow", "delay_s": 2}``: answer (and store) only after the delay, as a slow
  Slack does; a client that timed out meanwhile may retry and post twice.
- ``{"mode": "disconnect"}``: close the connection without any answer.

A faulted request is not stored, except ``slow`` ones (Slack got them, late).

Slack's Web API, for bot tokens (``slack_sdk.WebClient(token, base_url=<sink>/api/)``):
``POST /api/chat.postMessage`` (JSON or form body with ``channel``, ``text``/``blocks``,
optionally ``thread_ts``) stores the message with a new ``ts`` and answers
``{"ok": true, "channel", "ts", "message"}``; ``POST /api/chat.update`` (``channel``, ``ts``)
stores the update and answers the same, or ``{"ok": false, "error": "message_not_found"}``
for a ``ts`` it never gave out in that channel. A request without a bearer token
(``Authorization: Bearer xoxb-...``) gets ``{"ok": false, "error": "not_authed"}``. The
token is never stored. Stored API messages carry ``ts`` (and ``thread_ts`` in their body).
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from promptops.simulator.httpbase import JsonHandler, SimHTTPServer
from promptops.simulator.timeutil import format_ts


class MessageStore:
    def __init__(self, store: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._store = store

    def add(self, path: str, body: Any, **more: Any) -> None:
        msg = {"path": path, "received_at": format_ts(datetime.now(UTC)), "body": body,
               **more}
        with self._lock:
            self._messages.append(msg)
            if self._store is not None:
                with self._store.open("ab") as fh:
                    fh.write(orjson.dumps(msg) + b"\n")

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()


_INVALID_WEBHOOK_BODY = {403: "invalid_token", 404: "no_service", 410: "channel_is_archived"}


class SinkFault(BaseModel):
    """One injected fault rule (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["rate_limit", "invalid_webhook", "server_error", "slow", "disconnect"]
    #: How many requests it applies to; None = until cleared.
    count: int | None = Field(default=1, ge=1)
    path: str = ""
    retry_after: int = Field(default=1, ge=0)
    status: int | None = None
    delay_s: float = Field(default=2.0, ge=0, le=300)

    @model_validator(mode="after")
    def _status_fits_mode(self) -> SinkFault:
        allowed = {"invalid_webhook": (404, {403, 404, 410}), "server_error": (500, {500, 502, 503})}
        if self.mode in allowed:
            default, ok = allowed[self.mode]
            if self.status is None:
                self.status = default
            elif self.status not in ok:
                raise ValueError(f"status for {self.mode} must be one of {sorted(ok)}")
        return self


def add_fault_rules(handler: JsonHandler, raw: bytes, model: type[BaseModel]) -> None:
    """``POST /_faults`` of any sink: one rule or a list of rules of ``model``, queued on
    ``handler.server.faults`` (answered with what is queued), or 400 naming what is wrong."""
    try:
        data = orjson.loads(raw)
        items = data if isinstance(data, list) else [data]
        faults = [model.model_validate(item) for item in items]
    except orjson.JSONDecodeError:
        handler.send_json(400, {"error": "body must be a JSON fault rule or a list of them"})
        return
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'rule'}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        handler.send_json(400, {"error": problems})
        return
    queue = handler.server.faults  # type: ignore[attr-defined]
    queue.add(faults)
    handler.send_json(200, {"faults": queue.list()})


class FaultQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[SinkFault] = []

    def add(self, faults: list[SinkFault]) -> None:
        with self._lock:
            self._faults.extend(faults)

    def take(self, path: str) -> SinkFault | None:
        """The first rule for this path, used once (removed when its count runs out)."""
        with self._lock:
            for i, fault in enumerate(self._faults):
                if path.startswith(fault.path):
                    if fault.count is not None:
                        if fault.count <= 1:
                            del self._faults[i]
                        else:
                            self._faults[i] = fault.model_copy(update={"count": fault.count - 1})
                    return fault
            return None

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.model_dump() for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


class SlackSinkHandler(JsonHandler):
    server: SlackSinkServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/messages":
            self.send_json(200, {"messages": self.server.messages.list()})
        elif path == "/_faults":
            self.send_json(200, {"faults": self.server.faults.list()})
        elif path == "/health":
            self.send_json(200, {"status": "ok"})
        else:
            self.send_body(404, b"no_service", "text/plain; charset=utf-8")

    def do_DELETE(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/messages":
            self.server.messages.clear()
            self.send_json(200, {"messages": []})
        elif path == "/_faults":
            self.server.faults.clear()
            self.send_json(200, {"faults": []})
        else:
            self.send_body(404, b"no_service", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        raw = self.read_body()
        path = self.path.split("?", 1)[0]
        if path == "/_faults":
            self._add_faults(raw)
            return
        fault = self.server.faults.take(path)
        if fault is not None and fault.mode != "slow":
            self._answer_fault(fault)
            return
        if fault is not None:
            time.sleep(fault.delay_s)
        if path.startswith("/api/"):
            self._web_api(path.removeprefix("/api/"), raw)
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._text(400, "invalid_payload")
            return
        self.server.messages.add(path, body)
        self._text(200, "ok")

    def _web_api(self, method: str, raw: bytes) -> None:
        """``chat.postMessage`` and ``chat.update`` as Slack's Web API answers them."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= len("Bearer "):
            self.send_json(200, {"ok": False, "error": "not_authed"})
            return
        body = _api_body(raw, self.headers.get("Content-Type", ""))
        if body is None:
            self.send_json(200, {"ok": False, "error": "invalid_json"})
            return
        channel = str(body.get("channel") or "")
        if method not in ("chat.postMessage", "chat.update"):
            self.send_json(200, {"ok": False, "error": "unknown_method"})
            return
        if not channel:
            self.send_json(200, {"ok": False, "error": "channel_not_found"})
            return
        if method == "chat.update":
            ts = str(body.get("ts") or "")
            if not self.server.has_ts(channel, ts):
                self.send_json(200, {"ok": False, "error": "message_not_found"})
                return
        else:
            ts = self.server.new_ts(channel)
        self.server.messages.add(f"/api/{method}", body, ts=ts, channel=channel)
        self.send_json(200, {"ok": True, "channel": channel, "ts": ts, "message": body})

    def _text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self.send_body(status, text.encode(), "text/plain; charset=utf-8", headers)

    def _add_faults(self, raw: bytes) -> None:
        add_fault_rules(self, raw, SinkFault)

    def _answer_fault(self, fault: SinkFault) -> None:
        if fault.mode == "rate_limit":
            self._text(429, "rate_limited", {"Retry-After": str(fault.retry_after)})
        elif fault.mode == "invalid_webhook":
            assert fault.status is not None
            self._text(fault.status, _INVALID_WEBHOOK_BODY[fault.status])
        elif fault.mode == "server_error":
            self._text(fault.status or 500, "internal_error")
        else:  # disconnect: no status line at all
            self.close_connection = True
            self._log_access(0)


def _api_body(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """A Web API request's arguments: a JSON object or a form (blocks as JSON text)."""
    if "json" in content_type:
        try:
            data = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None
    form: dict[str, Any] = dict(parse_qsl(raw.decode("utf-8", "replace")))
    if isinstance(form.get("blocks"), str):
        try:
            form["blocks"] = orjson.loads(form["blocks"])
        except orjson.JSONDecodeError:
            return None
    return form


class SlackSinkServer(SimHTTPServer):
    def __init__(self, host: str, port: int, store: Path | None = None) -> None:
        super().__init__((host, port), SlackSinkHandler)
        self.messages = MessageStore(store)
        self.faults = FaultQueue()
        self._ts_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._posted: set[tuple[str, str]] = set()

    def new_ts(self, channel: str) -> str:
        """A message timestamp as Slack writes them (seconds.micro), unique in the sink."""
        with self._ts_lock:
            ts = f"{int(time.time())}.{next(self._seq):06d}"
            self._posted.add((channel, ts))
        return ts

    def has_ts(self, channel: str, ts: str) -> bool:
        with self._ts_lock:
            return (channel, ts) in self._posted

    @property
    def url(self) -> str:
        # An AF_INET server's address is (str, int); typeshed also allows bytes hosts.
        host, port = cast("tuple[str, int]", self.server_address[:2])
        return f"http://{host}:{port}"


def start_in_thread(host: str, port: int, store: Path | None = None) -> SlackSinkServer:
    """Run a sink beside the simulator in the same process (``serve --slack-sink-port``)."""
    server = SlackSinkServer(host, port, store)
    threading.Thread(target=server.serve_forever, name="slack-sink", daemon=True).start()
    return server
