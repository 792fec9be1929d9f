"""A Slack-compatible incoming-webhook sink, so alert tests can read what was posted.

Any POST with a JSON body is stored (path, received_at, body) and answered like Slack does:
``200`` with the text ``ok``. A body that is not JSON gets Slack's ``400 invalid_payload``.
``GET /messages`` lists what was stored, ``DELETE /messages`` clears it, ``GET /health``
answers ``ok``. With ``store`` every message is also appended to a JSONL file.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from promptops.simulator.httpbase import JsonHandler, SimHTTPServer
from promptops.simulator.timeutil import format_ts


class MessageStore:
    def __init__(self, store: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []
        self._store = store

    def add(self, path: str, body: Any) -> None:
        msg = {"path": path, "received_at": format_ts(datetime.now(UTC)), "body": body}
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


class SlackSinkHandler(JsonHandler):
    server: SlackSinkServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/messages":
            self.send_json(200, {"messages": self.server.messages.list()})
        elif path == "/health":
            self.send_json(200, {"status": "ok"})
        else:
            self.send_body(404, b"no_service", "text/plain; charset=utf-8")

    def do_DELETE(self) -> None:
        if self.path.split("?", 1)[0] == "/messages":
            self.server.messages.clear()
            self.send_json(200, {"messages": []})
        else:
            self.send_body(404, b"no_service", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        raw = self.read_body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.send_body(400, b"invalid_payload", "text/plain; charset=utf-8")
            return
        self.server.messages.add(self.path.split("?", 1)[0], body)
        self.send_body(200, b"ok", "text/plain; charset=utf-8")


class SlackSinkServer(SimHTTPServer):
    def __init__(self, host: str, port: int, store: Path | None = None) -> None:
        super().__init__((host, port), SlackSinkHandler)
        self.messages = MessageStore(store)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_in_thread(host: str, port: int, store: Path | None = None) -> SlackSinkServer:
    """Run a sink beside the simulator in the same process (``serve --slack-sink-port``)."""
    server = SlackSinkServer(host, port, store)
    threading.Thread(target=server.serve_forever, name="slack-sink", daemon=True).start()
    return server
