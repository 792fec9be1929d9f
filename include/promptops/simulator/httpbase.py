"""What the simulator's two HTTP servers share: a threading server and reply helpers.

The standard library's server is enough here and lets a fault close a connection without an
answer or stall one reply, which a framework would hide.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

JSON_TYPE = "application/json; charset=utf-8"


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Connections queue up when a test opens many at once; the default of 5 drops some.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (e.g. after its read timeout on a 'slow' fault) is normal
        # here; one line instead of a traceback.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            print(f"client {client_address[0]} went away: {type(exc).__name__}",
                  file=sys.stderr, flush=True)
            return
        super().handle_error(request, client_address)


class JsonHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler with JSON helpers and a one-line access log."""

    protocol_version = "HTTP/1.1"
    server_version = "promptops-sim"
    sys_version = ""
    #: Set by subclasses that want the one-line access log on stderr.
    access_log = True

    def parse_request(self) -> bool:
        self._t0 = time.perf_counter()  # per request, also on a kept-alive connection
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # The default logs the full request line; we log our own short line instead and never
        # any header (the Authorization header is a secret).
        return

    def send_body(self, status: int, body: bytes, content_type: str = JSON_TYPE,
                  headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._status = status
        self._log_access(status)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_body(status, orjson.dumps(payload), JSON_TYPE, headers)

    def read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            return b""
        return self.rfile.read(max(0, n))

    def _log_access(self, status: int) -> None:
        if not self.access_log:
            return
        ms = (time.perf_counter() - getattr(self, "_t0", time.perf_counter())) * 1000
        path = self.path.split("?", 1)[0]
        print(f"{self.command} {path} {status} {ms:.1f}ms", file=sys.stderr, flush=True)
