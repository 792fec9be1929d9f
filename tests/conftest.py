"""Test session set-up: a private Airflow home, lake and state dir; shared fixtures; the order
of the Airflow stack's tests.

Environment variables are set here, at import time, because Airflow reads its configuration
when it is first imported. Each process has its own session dir (so each pytest-xdist worker).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promptops.simulator import SimulatorProcess
from tests.helpers import ROOT, health
from tests.helpers.s3 import moto_server
from tests.helpers.stack import SharedStack

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="promptops-tests-"))

os.environ.update({
    "AIRFLOW_HOME": str(_SESSION_DIR / "airflow_home"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_SESSION_DIR / 'airflow.db'}",
    "PROMPTOPS_LAKE_URI": f"file://{_SESSION_DIR / 'lake'}",
    "PROMPTOPS_STATE_DIR": str(_SESSION_DIR / "state"),
})
os.environ.pop("PROMPT_API_KEY", None)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) for dag.test() runs."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return _SESSION_DIR / "airflow.db"


@pytest.fixture(scope="session")
def sink_server():
    """A Slack-compatible sink in a thread of the test process (alerts and report tests)."""
    from promptops.simulator.slack_sink import start_in_thread

    server = start_in_thread("127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def health_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """A real simulator with a flooding user at the fixed "now" (the health metrics and the
    health pipeline's tests)."""
    path = tmp_path_factory.mktemp("health-scenario") / "scenario.yaml"
    path.write_text(health.SCENARIO)
    with SimulatorProcess("--scenario", str(path), "--now", health.NOW.isoformat(),
                          seed=11) as proc:
        yield proc


@pytest.fixture
def s3_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 server on a free port, with the AWS environment pointing at it; yields a
    boto3 client (no buckets yet). For the lake's, the push's and the hourly analysis'
    object-store paths."""
    import boto3
    from airflow.sdk.io import store
    from s3fs import S3FileSystem

    # ObjectStoragePath keeps one filesystem per protocol, and fsspec caches s3fs instances by
    # their arguments (the endpoint comes from the environment, so not among them): start and
    # end without a stale one pointing at an earlier test's server.
    def forget_filesystems() -> None:
        store._STORE_CACHE.pop("s3", None)
        S3FileSystem.clear_instance_cache()

    with moto_server() as endpoint:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        forget_filesystems()
        try:
            yield boto3.client("s3")
        finally:
            forget_filesystems()


@pytest.fixture
def s3_landing(s3_api: Any) -> Any:
    """A real S3 API with the bucket ``push-landing`` (the push and lake tests)."""
    s3_api.create_bucket(Bucket="push-landing")
    return s3_api


_STACK = pytest.StashKey[SharedStack]()


@pytest.fixture(scope="session")
def airflow_stack(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStack]:
    """The README's stack, one for every test that needs Airflow's scheduler, REST API or UI
    (tests.helpers.stack.SharedStack says what they share). Those tests run one after another
    in one process, and the stack stops after the last of them (hooks below)."""
    stack = SharedStack(tmp_path_factory.mktemp("airflow-stack"))
    request.config.stash[_STACK] = stack
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


#: Fixtures that start Airflow: its metadata database (dag.test(), the notifier, the API app)
#: or a whole stack. A test that uses one is marked slow, so ``-m "not slow"`` leaves it out.
AIRFLOW_FIXTURES = ("airflow_db", "airflow_stack")


def _uses_stack(item: pytest.Item) -> bool:
    return "airflow_stack" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [i.nodeid for i in items if i.get_closest_marker("slow") is None
                and any(f in getattr(i, "fixturenames", ()) for f in AIRFLOW_FIXTURES)]
    if unmarked:
        raise pytest.UsageError("these tests start Airflow; mark them @pytest.mark.slow:\n  "
                                + "\n  ".join(unmarked))
    # The shared stack's tests first, the UI tests last among them (they unpause the hourly
    # DAG): first so that under pytest-xdist one worker runs them while the other runs the
    # rest, together so that the stack can stop after them.
    items.sort(key=lambda i: (not _uses_stack(i), "ui" in getattr(i, "fixturenames", ())))
    if getattr(config.option, "loadgroup", False):  # a pytest-xdist worker, --dist loadgroup
        for item in filter(_uses_stack, items):
            _join_xdist_group(item, "airflow_stack")


def _join_xdist_group(item: pytest.Item, group: str) -> None:
    """What pytest-xdist's ``xdist_group`` mark does: a test id ending in ``@group`` puts the
    test in that group, all of whose tests run on one worker. xdist 3.8 writes the suffix into
    ``item._nodeid``, which pytest 9.2 no longer reads (pytest-dev/pytest-xdist#1386), so the
    mark does nothing: set the id pytest reads, as the proposed fix does."""
    from _pytest.nodeid import NodeId

    item._id = NodeId.parse(f"{item.nodeid}@{group}")
    if not item.nodeid.endswith(f"@{group}"):
        raise pytest.UsageError(f"cannot put {item.nodeid} in the xdist group {group!r}: "
                                "run with -n 0 or another --dist")


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # Stop the shared stack after its last test, not at the session's end: it would load the
    # box while the rest of the suite runs.
    stack = item.config.stash.get(_STACK, None)
    if stack is not None and _uses_stack(item) and not any(
            map(_uses_stack, item.session.items[item.session.items.index(item) + 1:])):
        stack.stop()
