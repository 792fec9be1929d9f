"""Run the simulator (or the Slack sink) as a real subprocess, for tests and benchmarks.

``SimulatorProcess`` starts ``python -m promptops.simulator serve`` on a free port, waits until
``/health`` answers, and offers the test-only control endpoints as methods. The API keys go
to the child through its environment, never its command line (visible in ``ps``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import requests


class _ChildServer:
    """Start a server subcommand, learn its URL from its first stdout line, stop it."""

    subcommand = "serve"
    #: The start-up line that carries the URL (the sink beside a simulator prints its own).
    listening = re.compile(r"^promptops simulator listening on (http://\S+)", re.M)
    startup_timeout_s = 30.0

    def __init__(self, args: list[str], env: dict[str, str] | None, port: int | None) -> None:
        self._args = args
        self._env = env
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.log_path: Path | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self):
        if self._proc is not None:
            return self
        env = dict(os.environ)
        env.update(self._env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        # A file, not a pipe: nobody drains a pipe during a test, and a full pipe blocks the
        # child on its request log.
        fd, name = tempfile.mkstemp(prefix=f"promptops-{self.subcommand}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        port = "0" if self._port is None else str(self._port)
        cmd = [sys.executable, "-m", "promptops.simulator", self.subcommand,
               "--host", "127.0.0.1", "--port", port, *self._args]
        self._proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while not self.url:
                self._check_alive()
                m = self.listening.search(self.log_path.read_text(errors="replace"))
                if m:
                    self.url = m.group(1).rstrip("/")
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.subcommand} did not start within "
                                       f"{self.startup_timeout_s:.0f}s; log tail:\n{self.log_tail()}")
                time.sleep(0.05)
            while True:
                self._check_alive()
                try:
                    requests.get(self.url + "/health", timeout=2)
                    return self
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.subcommand} at {self.url} never answered "
                                           f"/health; log tail:\n{self.log_tail()}") from None
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _check_alive(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"{self.subcommand} exited with code {self._proc.returncode}; "
                               f"log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # a forgotten stop() must not leave an orphan server behind
        try:
            self.stop()
        except Exception:  # noqa: S110 - interpreter shutdown
            pass

    # -- small HTTP helpers -----------------------------------------------------------------
    def _call(self, method: str, path: str, json: Any = None) -> Any:
        resp = requests.request(method, self.url + path, json=json, timeout=10)
        resp.raise_for_status()
        return resp.json() if resp.content else None


class SimulatorProcess(_ChildServer):
    """The platform simulator in a subprocess; use as a context manager."""

    subcommand = "serve"

    def __init__(self, *extra_args: str, api_key: str = "test-key", seed: int | None = 7,
                 port: int | None = None, read_only_key: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        child_env = {"PROMPT_API_KEY": api_key}
        if read_only_key is not None:
            child_env["PROMPT_READ_ONLY_API_KEY"] = read_only_key
        child_env.update(env or {})
        # seed=None leaves the seed to the scenario file (or the default, 42).
        seed_args = [] if seed is None else ["--seed", str(seed)]
        super().__init__([*seed_args, *extra_args], child_env, port)
        self.api_key = api_key
        self.read_only_key = read_only_key
        self.seed = seed

    def start(self) -> SimulatorProcess:
        return super().start()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header for the full-access key."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def set_faults(self, faults: list[dict[str, Any]]) -> None:
        """Append fault rules (see docs/simulator.md, "Faults")."""
        self._call("POST", "/_sim/faults", json=faults)

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_sim/faults")["faults"]

    def clear_faults(self) -> None:
        self._call("DELETE", "/_sim/faults")

    def set_clock(self, now: datetime | None) -> None:
        """Move the simulated clock to ``now`` (aware datetime); None = real time again."""
        if now is not None and now.tzinfo is None:
            raise ValueError("set_clock needs an aware datetime (UTC)")
        self._call("POST", "/_sim/clock", json={"now": None if now is None else now.isoformat()})

    def clock(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/clock")

    def requests_log(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_sim/requests")["requests"]

    def clear_requests_log(self) -> None:
        self._call("DELETE", "/_sim/requests")

    def truth(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/truth")


class SlackSinkProcess(_ChildServer):
    """A Slack-compatible incoming-webhook sink in a subprocess."""

    subcommand = "slack-sink"
    listening = re.compile(r"^slack sink listening on (http://\S+)", re.M)

    def __init__(self, *extra_args: str, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(list(extra_args), env, port)

    def start(self) -> SlackSinkProcess:
        return super().start()

    def __enter__(self) -> SlackSinkProcess:
        return self.start()

    @property
    def webhook_url(self) -> str:
        return self.url + "/services/T000/B000/XXXX"

    def messages(self) -> list[dict[str, Any]]:
        return self._call("GET", "/messages")["messages"]

    def clear(self) -> None:
        self._call("DELETE", "/messages")

    def add_faults(self, faults: list[dict[str, Any]] | dict[str, Any]) -> None:
        """Queue delivery faults (see ``promptops.simulator.slack_sink``)."""
        self._call("POST", "/_faults", json=faults)

    def clear_faults(self) -> None:
        self._call("DELETE", "/_faults")
