"""Debian's Prometheus and Pushgateway as real local servers for the tests (``.ci/run``
installs the packages; without the binaries the tests that need them skip, saying so)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
PROMETHEUS = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(path: str) -> str:
    found = shutil.which(path) or (path if Path(path).exists() else None)
    if found is None:
        pytest.skip(f"{path} is not installed (Debian package "
                    f"{Path(path).name}; .ci/run installs it)")
    return found


def _wait_ready(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready at {url} within {timeout_s:g} s")


@contextlib.contextmanager
def _serve(command: list[str], port: int, what: str) -> Iterator[str]:
    """Run a server on ``port`` until the block ends; yields its base URL once ready."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(f"{url}/-/ready", proc, what)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def pushgateway() -> Iterator[str]:
    """A Pushgateway on a free loopback port; yields its base URL."""
    port = free_port()
    with _serve([binary(PUSHGATEWAY), f"--web.listen-address=127.0.0.1:{port}"], port,
                "prometheus-pushgateway") as url:
        yield url


@contextlib.contextmanager
def prometheus_scraping(target: str, workdir: Path) -> Iterator[str]:
    """Prometheus scraping ``target`` (host:port) every second, honouring pushed labels;
    yields its base URL."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                      "scrape_configs:\n"
                      "  - job_name: pushgateway\n"
                      "    honor_labels: true\n"
                      f"    static_configs: [{{targets: ['{target}']}}]\n")
    with _serve([binary(PROMETHEUS), f"--config.file={config}",
                 f"--storage.tsdb.path={workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], port, "prometheus") as url:
        yield url


def query(url: str, promql: str, timeout_s: float = 30.0) -> list[dict]:
    """The instant query's result once it is not empty (a scrape or two may be needed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
        if got["status"] == "success" and got["data"]["result"]:
            return got["data"]["result"]
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql!r} has no result after {timeout_s:g} s: {got}")
        time.sleep(0.5)
