"""Test session set-up: a private Airflow home, lake and state dir; shared fixtures.

Environment variables are set here, at import time, because Airflow reads its configuration
when it is first imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
