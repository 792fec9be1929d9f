"""The targets' shared HTTP session: retries with backoff, and a bounded Retry-After."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from urllib3 import HTTPResponse

from promptops.alerts.targets import attempts_of, http_session


class _Busy(BaseHTTPRequestHandler):
    """429 with a long Retry-After twice, then 200."""

    calls = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        type(self).calls += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if type(self).calls <= 2:
            self.send_response(429)
            self.send_header("Retry-After", "3600")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_long_retry_after_is_waited_only_up_to_the_cap():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        session = http_session(max_retries=3, backoff_s=0.01, max_retry_after_s=0.2)
        # Without the cap this waits two hours (and the test's timeout fails it).
        response = session.post(url, json={}, timeout=5)
        retry = session.get_adapter(url).max_retries
    finally:
        server.shutdown()
    assert response.status_code == 200
    assert attempts_of(response) == 3
    asked = HTTPResponse(headers={"Retry-After": "3600"}, status=429)
    assert retry.get_retry_after(asked) == 0.2
    assert retry.new(total=1).get_retry_after(asked) == 0.2  # kept across retries
