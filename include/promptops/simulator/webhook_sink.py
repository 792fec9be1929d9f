"""A local receiver for promptops' signed webhooks, so tests (and a demo) can read what was
sent and check it was signed.

Started with the shared secret (:class:`WebhookSinkServer`, :func:`start_in_thread`, or
``python -m promptops.simulator.webhook_sink --port 8702`` with the secret in
``$PROMPTOPS_WEBHOOK_SECRET``). It answers a POST to any path the way a careful receiver
does (``docs/webhook.md``):

- ``401`` with ``{"error": ...}`` when ``X-Promptops-Signature`` or
  ``X-Promptops-Timestamp`` is missing, the timestamp is further than ``tolerance_s`` from
  its clock (a replay), or the signature does not verify
  (:func:`promptops.alerts.webhook.verify_signature`);
- ``400`` when ``X-Promptops-Delivery`` is missing or the body is not a JSON object;
- ``200 {"ok": true, "duplicate": false}`` and the message stored (path, received_at,
  body, delivery_id, raw: the body as sent, headers: the signing headers) when it is new;
  ``200 {"ok": true, "duplicate": true}`` and nothing stored when a message with that
  delivery id was accepted before: the id is the idempotency key, and the duplicate is
  counted.

``GET /messages`` lists what was stored with the duplicate count
(``{"messages": [...], "duplicates": N}``), ``DELETE /messages`` clears both (and the ids
seen), ``GET /health`` answers ok. The secret is never stored, logged or answered.

Fault injection, as in :mod:`promptops.simulator.slack_sink` (the same rules and queue):
``POST /_faults`` with one rule or a list, ``GET``/``DELETE /_faults``. A rule applies to the
next ``count`` POSTs whose path starts with ``path``, before the signature is checked:
``rate_limit`` (``429`` with ``Retry-After: retry_after``), ``server_error`` (``500``,
``502`` or ``503``), ``invalid_webhook`` (``404``, ``403`` or ``410``), ``slow`` (answers
after ``delay_s``) and ``disconnect`` (closes the connection without an answer). A faulted
request is not stored, except a slow one.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import cast

import orjson

from promptops.alerts.webhook import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)
from promptops.simulator.httpbase import JsonHandler, SimHTTPServer
from promptops.simulator.slack_sink import FaultQueue, MessageStore, SinkFault, add_fault_rules

_KEPT_HEADERS = (TIMESTAMP_HEADER, SIGNATURE_HEADER, DELIVERY_HEADER, "Content-Type",
                 "User-Agent")
SECRET_ENV = "PROMPTOPS_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret


class WebhookSinkHandler(JsonHandler):
    server: WebhookSinkServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/messages":
            self.send_json(200, {"messages": self.server.messages.list(),
                                 "duplicates": self.server.duplicates})
        elif path == "/_faults":
            self.send_json(200, {"faults": self.server.faults.list()})
        elif path == "/health":
            self.send_json(200, {"status": "ok"})
        else:
            self.send_json(404, {"error": "not found"})

    def do_DELETE(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/messages":
            self.server.clear()
            self.send_json(200, {"messages": [], "duplicates": 0})
        elif path == "/_faults":
            self.server.faults.clear()
            self.send_json(200, {"faults": []})
        else:
            self.send_json(404, {"error": "not found"})

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
        problem = self._unsigned(raw)
        if problem is not None:
            self.send_json(401, {"error": problem})
            return
        delivery_id = self.headers.get(DELIVERY_HEADER, "").strip()
        if not delivery_id:
            self.send_json(400, {"error": f"missing {DELIVERY_HEADER}"})
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            self.send_json(400, {"error": "the body must be a JSON object"})
            return
        duplicate = not self.server.accept(delivery_id)
        if not duplicate:
            # The raw body and the signing headers too, so a test can verify the signature
            # itself; none of them is the secret.
            headers = {name: self.headers.get(name, "") for name in _KEPT_HEADERS}
            self.server.messages.add(path, body, delivery_id=delivery_id, headers=headers,
                                     raw=raw.decode("utf-8", "replace"))
        self.send_json(200, {"ok": True, "duplicate": duplicate})

    def _unsigned(self, raw: bytes) -> str | None:
        """Why the request is not signed with the sink's secret; None when it is."""
        timestamp = self.headers.get(TIMESTAMP_HEADER)
        sig = self.headers.get(SIGNATURE_HEADER)
        if not timestamp or not sig:
            return f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}"
        try:
            ts = int(timestamp)
        except ValueError:
            return f"{TIMESTAMP_HEADER} is not unix seconds"
        if abs(time.time() - ts) > self.server.tolerance_s:
            return f"stale {TIMESTAMP_HEADER}: outside the {self.server.tolerance_s:g}s window"
        if not verify_signature(self.server.secret, timestamp, raw, sig,
                                tolerance_s=self.server.tolerance_s):
            return "signature does not match"
        return None

    def _add_faults(self, raw: bytes) -> None:
        add_fault_rules(self, raw, SinkFault)

    def _answer_fault(self, fault: SinkFault) -> None:
        if fault.mode == "rate_limit":
            self.send_json(429, {"error": "rate limited"},
                           {"Retry-After": str(fault.retry_after)})
        elif fault.mode in ("server_error", "invalid_webhook"):
            self.send_json(fault.status or 500, {"error": f"injected {fault.mode}"})
        else:  # disconnect: no status line at all
            self.close_connection = True
            self._log_access(0)


class WebhookSinkServer(SimHTTPServer):
    def __init__(self, host: str, port: int, secret: str, *,
                 tolerance_s: float = 300.0) -> None:
        if not secret:
            raise ValueError("the webhook sink needs the shared secret it verifies with")
        super().__init__((host, port), WebhookSinkHandler)
        self.secret = secret
        self.tolerance_s = tolerance_s
        self.messages = MessageStore()
        self.faults = FaultQueue()
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self.duplicates = 0

    def accept(self, delivery_id: str) -> bool:
        """True for a delivery id not seen before (and remember it); False counts a
        duplicate."""
        with self._lock:
            if delivery_id in self._seen:
                self.duplicates += 1
                return False
            self._seen.add(delivery_id)
            return True

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self._seen.clear()
            self.duplicates = 0

    @property
    def url(self) -> str:
        host, port = cast("tuple[str, int]", self.server_address[:2])
        return f"http://{host}:{port}"


def start_in_thread(host: str, port: int, secret: str, *,
                    tolerance_s: float = 300.0) -> WebhookSinkServer:
    """Run a sink in this process (tests; ``port`` 0 picks a free one)."""
    server = WebhookSinkServer(host, port, secret, tolerance_s=tolerance_s)
    threading.Thread(target=server.serve_forever, name="webhook-sink", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m promptops.simulator.webhook_sink",
        description=f"A receiver for promptops' signed webhooks; the shared secret comes "
                    f"from ${SECRET_ENV} (never the command line, which others can read).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8702, help="0 picks a free port")
    parser.add_argument("--tolerance-s", type=float, default=300.0,
                        help="how old a timestamp may be before a request counts as a replay")
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        print(f"set ${SECRET_ENV} to the secret the webhook connection's password holds",
              file=sys.stderr)
        return 2
    server = WebhookSinkServer(args.host, args.port, secret, tolerance_s=args.tolerance_s)
    print(f"webhook sink listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


__all__ = ["SECRET_ENV", "WebhookSinkServer", "main", "start_in_thread"]


if __name__ == "__main__":
    sys.exit(main())
