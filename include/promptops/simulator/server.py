"""The platform API over HTTP (platform-api.md), plus the test-only ``/_sim`` control plane
and an OpenAI-compatible ``POST /v1/chat/completions`` judge (``simulator/judge.py``).

Order of checks for a request: injected fault, then (for /v1) an active ``api_down``
incident, then authentication, then the endpoint's own strict validation. The Authorization
header is never logged, echoed or stored.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import struct
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import orjson

from promptops import __version__
from promptops.errors import ERROR_CODES
from promptops.simulator.actions import ActionInvalid
from promptops.simulator.cursor import CursorCodec, CursorError
from promptops.simulator.faults import BARE_PAGES, FaultInjector, FaultRule, parse_rules
from promptops.simulator.httpbase import JsonHandler, SimHTTPServer
from promptops.simulator.judge import (
    CHAT_COMPLETIONS,
    ChatRequestInvalid,
    JudgeFaults,
    completion,
    openai_error,
    parse_judge_rules,
    parse_request,
)
from promptops.simulator.platform import Platform
from promptops.simulator.timeutil import format_ts, parse_rfc3339, to_us

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
_CALL_RECORD_PARAMS = {"start", "end", "limit", "cursor"}


class ApiError(Exception):
    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.http_status = http_status


def error_body(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class RequestLog:
    """What clients asked (never the Authorization header), for tests to inspect."""

    def __init__(self, maxlen: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._items: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def add(self, item: dict[str, Any]) -> None:
        with self._lock:
            self._items.append(item)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class SimulatorServer(SimHTTPServer):
    def __init__(self, host: str, port: int, platform: Platform, api_key: str,
                 read_only_key: str | None = None, faults: list[FaultRule] | None = None,
                 allow_remote_control: bool = False) -> None:
        super().__init__((host, port), SimulatorHandler)
        self.platform = platform
        self.api_key = api_key
        self.read_only_key = read_only_key
        self.faults = FaultInjector(faults)
        self.judge_faults = JudgeFaults()
        self.request_log = RequestLog()
        self.cursors = CursorCodec(platform.config.seed)
        self.allow_remote_control = allow_remote_control

    @property
    def url(self) -> str:
        # An AF_INET server's address is (str, int); typeshed also allows bytes hosts.
        host, port = cast("tuple[str, int]", self.server_address[:2])
        return f"http://{host}:{port}"


class _Reset(Exception):
    """Raised to drop the connection without an answer."""


class SimulatorHandler(JsonHandler):
    server: SimulatorServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    # -- plumbing -----------------------------------------------------------------------
    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path, query = split.path, split.query
        self._status = 0
        self._fault: str | None = None
        self._truncate_next = False
        self._lose_next = False
        body = self.read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        try:
            if path.startswith("/_sim"):
                self._control(path, body)
                return
            self._serve(path, query, body)
        except _Reset:
            self._reset()
        except ConnectionError:
            raise  # the client hung up; nothing to answer (the server logs one line)
        except ApiError as exc:
            self._send_error(exc.code, exc.message, exc.headers, exc.http_status)
        except Exception as exc:  # a bug must still answer in the contract's shape
            print(f"internal error on {self.command} {path}: {exc!r}", file=sys.stderr,
                  flush=True)
            self._send_error(5000, "internal error")
        finally:
            if not path.startswith("/_sim"):
                self.server.request_log.add({
                    "method": self.command, "path": path,
                    "query": {k: v if len(v) > 1 else v[0]
                              for k, v in parse_qs(query, keep_blank_values=True).items()},
                    "status": self._status or None,
                    "idempotency_key": self.headers.get("Idempotency-Key"),
                    "fault": self._fault,
                    "ts": format_ts(datetime.now(UTC)),
                    "sim_now": format_ts(self.server.platform.now()),
                })

    def _send_error(self, code: int, message: str, headers: dict[str, str] | None = None,
                    http_status: int | None = None) -> None:
        status = http_status or ERROR_CODES[code].http_status
        self.send_json(status, error_body(code, message), headers)

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send a TCP RST: the client sees a connection reset.
        self._status = 0
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True
        print(f"{self.command} {self.path.split('?', 1)[0]} reset", file=sys.stderr, flush=True)

    # -- the platform API ------------------------------------------------------------------
    def _serve(self, path: str, query: str, body: bytes) -> None:
        rule = self.server.faults.take(self.command, path)
        if rule is not None:
            self._fault = rule.kind
            if self._apply_fault(rule, path):
                return
        if path == "/health":
            if self.command != "GET":
                raise ApiError(3002, f"method {self.command} not allowed on /health",
                               http_status=405)
            self._health()
            return
        if not path.startswith("/v1/"):
            self._send_error(3002, f"no such endpoint: {path}", http_status=404)
            return
        down = self.server.platform.api_down()
        if down is not None and not path.startswith(("/v1/ops/actions", CHAT_COMPLETIONS)):
            # The ops plane stays up during an outage, or nobody could restart the gateway;
            # the judge stands for a separate LLM service, which the outage does not touch.
            code = down.params.error_code
            raise ApiError(code, f"service unavailable ({ERROR_CODES[code].meaning})")
        role = self._authenticate()
        if path == "/v1/call_records":
            self._require("GET")
            self._call_records(query)
        elif path == "/v1/gpu_metrics":
            self._require("GET")
            self.send_json(200, {"data": self.server.platform.gpu_metrics()})
        elif path == "/v1/ops/actions":
            self._require("POST")
            if role != "full":
                raise ApiError(1002, "this key may read but not request ops actions")
            self._create_action(body)
        elif path == CHAT_COMPLETIONS:
            self._require("POST")
            self._chat_completion(body)
        elif path.startswith("/v1/ops/actions/"):
            self._require("GET")
            action_id = path[len("/v1/ops/actions/"):]
            view = self.server.platform.action_view(action_id, time.time())
            if view is None:
                self._send_error(3002, f"no action with id {action_id!r}", http_status=404)
                return
            self.send_json(200, view)
        else:
            self._send_error(3002, f"no such endpoint: {path}", http_status=404)

    def _require(self, method: str) -> None:
        if self.command != method:
            raise ApiError(3002, f"method {self.command} not allowed here; use {method}",
                           http_status=405)

    def _authenticate(self) -> str:
        header = self.headers.get("Authorization")
        if not header:
            raise ApiError(1001, "missing Authorization header (expected 'Bearer <api key>')")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(1001, "malformed Authorization header (expected 'Bearer <api key>')")
        if hmac.compare_digest(token.encode(), self.server.api_key.encode()):
            return "full"
        ro = self.server.read_only_key
        if ro and hmac.compare_digest(token.encode(), ro.encode()):
            return "read"
        raise ApiError(1001, "invalid API key")

    def _health(self) -> None:
        down = self.server.platform.api_down()
        if down is not None:
            self.send_json(503, {"status": "degraded",
                                 "reason": f"platform API down (incident {down.name!r})"})
            return
        self.send_json(200, {"status": "ok", "version": f"promptops-sim/{__version__}",
                             "time": format_ts(self.server.platform.now())})

    def _call_records(self, query: str) -> None:
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise ApiError(3002, "query string is malformed") from None
        unknown = sorted(set(params) - _CALL_RECORD_PARAMS)
        if unknown:
            raise ApiError(3002, f"unknown query parameter(s): {', '.join(unknown)}")
        for name, values in params.items():
            if len(values) > 1:
                raise ApiError(3002, f"{name}: given more than once")
        one = {k: v[0] for k, v in params.items()}
        times = {}
        for name in ("start", "end"):
            if name not in one:
                raise ApiError(3002, f"{name}: required (RFC 3339, e.g. 2026-11-20T13:00:00Z)")
            try:
                times[name] = parse_rfc3339(one[name])
            except ValueError as exc:
                raise ApiError(3002, f"{name}: {exc}") from None
        start, end = times["start"], times["end"]
        if not start < end:
            raise ApiError(3002, "start must be before end")
        limit = DEFAULT_LIMIT
        if "limit" in one:
            raw = one["limit"]
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
                raise ApiError(3002, f"limit: must be an integer from 1 to {MAX_LIMIT}, "
                                     f"got {raw[:20]!r}")
            limit = int(raw)
        start_us, end_us = to_us(start), to_us(end)
        after = None
        if "cursor" in one:
            try:
                after = self.server.cursors.decode(one["cursor"], start_us, end_us, limit)
            except CursorError as exc:
                raise ApiError(3002, f"cursor: {exc}") from None
        page = self.server.platform.page(start, end, limit, after)
        nxt = None
        if page.next_position is not None:
            nxt = self.server.cursors.encode(start_us, end_us, limit, *page.next_position)
        self.send_json(200, {"data": page.records, "next_cursor": nxt})

    def _create_action(self, body: bytes) -> None:
        key = self.headers.get("Idempotency-Key")
        if key is None or not key.strip():
            raise ApiError(3002, "Idempotency-Key header: required")
        if len(key) > 255:
            raise ApiError(3002, "Idempotency-Key header: at most 255 characters")
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            raise ApiError(3002, "body is not valid JSON") from None
        if data is None:
            raise ApiError(3002, "body: required (a JSON object)")
        try:
            action, _ = self.server.platform.create_action(data, key)
        except ActionInvalid as exc:
            raise ApiError(3002, str(exc)) from None
        self.send_json(202, {"action_id": action.action_id,
                             "status": "dry_run" if action.dry_run else "accepted"})

    def _chat_completion(self, body: bytes) -> None:
        # Any key the platform accepts (full or read-only) may use the judge.
        try:
            data = orjson.loads(body) if body else None
            req = parse_request(data)
        except orjson.JSONDecodeError:
            self.send_json(400, openai_error("body is not valid JSON"))
            return
        except ChatRequestInvalid as exc:
            self.send_json(400, openai_error(str(exc)))
            return
        self.send_json(200, completion(req, self.server.judge_faults.take()))

    # -- faults ----------------------------------------------------------------------------
    def _apply_fault(self, rule: FaultRule, path: str) -> bool:
        """Apply a fault; True when the response has been sent (or the connection dropped)."""
        kind = rule.kind
        if kind == "error":
            code = rule.code or 5000
            headers = {"Retry-After": str(rule.retry_after)} if code == 2002 else None
            msg = rule.message or f"injected fault: {ERROR_CODES[code].meaning}"
            self._send_error(code, msg, headers)
            return True
        if kind == "bare_status":
            status = rule.status or 502
            self.send_body(status, BARE_PAGES[status], "text/html")
            return True
        if kind == "degraded":
            self.send_json(503, {"status": "degraded", "reason": rule.reason})
            return True
        if kind == "reset":
            raise _Reset
        if kind == "lost_response":
            # The request is carried out, then the answer is lost (a proxy timing out): the
            # client cannot tell whether it happened, which is what Idempotency-Key is for.
            self._lose_next = True
            return False
        if kind == "slow":
            time.sleep(rule.delay_s)
            return False
        if kind == "malformed_body":
            if rule.variant == "not_json":
                self.send_body(200, b"<html><body>Service temporarily returning HTML</body>"
                                    b"</html>", "application/json; charset=utf-8")
                return True
            if rule.variant == "wrong_shape":
                self.send_json(200, {"records": [], "next": None})
                return True
            if rule.variant == "data_not_list":
                self.send_json(200, {"data": {"records": []}, "next_cursor": None})
                return True
            # truncated: answer normally, but cut the JSON body in half on the way out.
            self._truncate_next = True
            return False
        return False

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        if getattr(self, "_lose_next", False):
            self._lose_next = False
            raise _Reset
        if getattr(self, "_truncate_next", False) and status == 200:
            raw = orjson.dumps(payload)
            self._truncate_next = False
            self.send_body(200, raw[: max(1, len(raw) // 2)], headers=headers)
            return
        super().send_json(status, payload, headers)

    # -- control plane -----------------------------------------------------------------------
    def _control(self, path: str, body: bytes) -> None:
        if not self.server.allow_remote_control:
            try:
                loopback = ipaddress.ip_address(self.client_address[0]).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                self.send_json(403, error_body(1002, "control endpoints answer loopback only"))
                return
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            self.send_json(400, error_body(3002, "body is not valid JSON"))
            return
        srv, m = self.server, self.command
        if path == "/_sim/faults":
            if m == "GET":
                self.send_json(200, {"faults": srv.faults.list()})
            elif m == "POST":
                try:
                    rules = parse_rules(data)
                except ValueError as exc:  # pydantic's ValidationError is a ValueError
                    self.send_json(400, error_body(3002, f"bad fault rule: {exc}"))
                    return
                srv.faults.add(rules)
                self.send_json(200, {"faults": srv.faults.list()})
            elif m == "DELETE":
                srv.faults.clear()
                self.send_json(200, {"faults": []})
            else:
                self.send_json(405, error_body(3002, "use GET, POST or DELETE"))
        elif path == "/_sim/judge":
            if m == "GET":
                self.send_json(200, {"judge": srv.judge_faults.list()})
            elif m == "POST":
                try:
                    judge_rules = parse_judge_rules(data)
                except ValueError as exc:
                    self.send_json(400, error_body(3002, f"bad judge rule: {exc}"))
                    return
                srv.judge_faults.add(judge_rules)
                self.send_json(200, {"judge": srv.judge_faults.list()})
            elif m == "DELETE":
                srv.judge_faults.clear()
                self.send_json(200, {"judge": []})
            else:
                self.send_json(405, error_body(3002, "use GET, POST or DELETE"))
        elif path == "/_sim/clock":
            if m == "POST":
                if not isinstance(data, dict) or "now" not in data:
                    self.send_json(400, error_body(3002, 'body must be {"now": ts | null}'))
                    return
                try:
                    now = None if data["now"] is None else parse_rfc3339(data["now"])
                except ValueError as exc:
                    self.send_json(400, error_body(3002, f"now: {exc}"))
                    return
                srv.platform.clock.set(now)
            elif m != "GET":
                self.send_json(405, error_body(3002, "use GET or POST"))
                return
            self.send_json(200, {"now": format_ts(srv.platform.now()),
                                 "offset_s": srv.platform.clock.offset_s})
        elif path == "/_sim/requests":
            if m == "DELETE":
                srv.request_log.clear()
                self.send_json(200, {"requests": []})
            else:
                self.send_json(200, {"requests": srv.request_log.list()})
        elif path == "/_sim/truth":
            self.send_json(200, srv.platform.truth())
        else:
            self.send_json(404, error_body(3002, f"no such control endpoint: {path}"))


def serve_forever(server: SimHTTPServer) -> None:
    """Serve until Ctrl-C / SIGTERM, then close the socket (simulator and Slack sink)."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
