"""Debian's Alertmanager as a real local server for the tests, with basic auth and a webhook
receiver that records what Alertmanager notifies (``.ci/run`` installs the package; without
the binary the tests that need it skip, saying so)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.helpers.prometheus import binary, free_port

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"

#: Basic-auth user of the test Alertmanager and its password (a canary: tests assert it
#: never shows in an error). The hash is bcrypt (cost 4, the lowest Alertmanager takes, to
#: keep each request fast), made once with ``crypt.crypt(PASSWORD, crypt.mksalt(
#: crypt.METHOD_BLOWFISH, rounds=16))``.
LOGIN = "promptops"
PASSWORD = "canary-am-password-7731"
PASSWORD_BCRYPT = "$2b$04$7dOaA.xc7WxPV6wnyGyd.OCTO3aftg.H9VESScvVXd4p7bLhOBcMi"


class WebhookReceiver(ThreadingHTTPServer):
    """Stores the JSON body of every POST (Alertmanager's webhook notifications); any other
    request gets 404, so its URL also serves as "not Alertmanager"."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self._lock = threading.Lock()
        self._bodies: list[dict[str, Any]] = []
        threading.Thread(target=self.serve_forever, name="am-webhook", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._bodies.append(body)

    def notifications(self, **group_labels: str) -> list[dict[str, Any]]:
        """Received notifications whose group labels include ``group_labels``."""
        with self._lock:
            bodies = list(self._bodies)
        return [b for b in bodies
                if all((b.get("groupLabels") or {}).get(k) == v for k, v in group_labels.items())]

    def wait_for(self, count: int, timeout_s: float = 30.0, **group_labels: str
                 ) -> list[dict[str, Any]]:
        """The notifications for the group once there are at least ``count``."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.notifications(**group_labels)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(got)} notification(s) for {group_labels} after "
                                     f"{timeout_s:g} s, wanted {count}: {got}")
            time.sleep(0.1)


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: WebhookReceiver

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path != "/hook":
            self._answer(404)
            return
        self.server.add(orjson.loads(raw))
        self._answer(200)

    def do_GET(self) -> None:
        self._answer(404)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@dataclass
class Alertmanager:
    url: str
    auth: tuple[str, str]

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` filtered by label equality."""
        params = {"filter": [f'{k}="{v}"' for k, v in labels.items()]}
        response = httpx.get(f"{self.url}/api/v2/alerts", params=params, auth=self.auth,
                             timeout=5)
        response.raise_for_status()
        return list(response.json())


def _wait_ready(url: str, auth: tuple[str, str], proc: subprocess.Popen,
                timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus-alertmanager exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", auth=auth, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"prometheus-alertmanager not ready at {url} within {timeout_s:g} s")


@contextlib.contextmanager
def alertmanager(workdir: Path, webhook_url: str) -> Iterator[Alertmanager]:
    """Alertmanager on a free loopback port behind basic auth (:data:`LOGIN`,
    :data:`PASSWORD`), grouping by ``incident_id`` with one-second group wait and interval,
    notifying ``webhook_url`` of firing and resolved groups; no cluster gossip."""
    executable = binary(ALERTMANAGER)
    port = free_port()
    config = workdir / "alertmanager.yml"
    config.write_text("route:\n"
                      "  receiver: hook\n"
                      "  group_by: [incident_id]\n"
                      "  group_wait: 1s\n"
                      "  group_interval: 1s\n"
                      "  repeat_interval: 1h\n"
                      "receivers:\n"
                      "  - name: hook\n"
                      "    webhook_configs:\n"
                      f"      - url: {webhook_url}\n"
                      "        send_resolved: true\n")
    web = workdir / "web.yml"
    web.write_text(f"basic_auth_users:\n  {LOGIN}: {PASSWORD_BCRYPT}\n")
    proc = subprocess.Popen([executable, f"--config.file={config}",
                             f"--web.config.file={web}",
                             f"--storage.path={workdir / 'data'}", "--cluster.listen-address=",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, (LOGIN, PASSWORD), proc)
        yield Alertmanager(url, (LOGIN, PASSWORD))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
