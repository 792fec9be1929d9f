"""scripts/dev_stack.py (``./run.sh``) without Airflow: help without a virtualenv, the
watcher against real processes, waits and REST retries against a real HTTP server, the
order of the demo's start, and what a rerun after an aborted start finds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest

from promptops.simulator.httpbase import JsonHandler, SimHTTPServer
from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import dev_stack  # noqa: E402
from dev_stack_args import parse_args  # noqa: E402

HOURLY = "promptops_hourly"
PASSWORD = "s3cret-admin-pw"


# -- ./run.sh --help ----------------------------------------------------------------------

def test_help_is_printed_without_creating_the_virtualenv(tmp_path):
    shutil.copy2(ROOT / "run.sh", tmp_path / "run.sh")
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    marker = tmp_path / "bootstrapped"
    (tmp_path / "scripts" / "bootstrap.sh").write_text(
        f"#!/usr/bin/env bash\ntouch {marker}\necho 'bootstrap ran' >&2\nexit 1\n")
    for flag in ("--help", "-h"):
        proc = subprocess.run(["./run.sh", flag], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("usage: ./run.sh")
        for option in ("--clean", "--host", "--start-timeout", "--api-retry",
                       "--backfill-hours"):
            assert option in proc.stdout
    assert not marker.exists()
    assert not (tmp_path / ".venv").exists()


# -- binding ------------------------------------------------------------------------------

def test_airflow_listens_on_loopback_unless_told_otherwise(tmp_path):
    env = dev_stack.stack_env(parse_args(["--home", str(tmp_path / "home")]))
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8080"
    env = dev_stack.stack_env(parse_args(["--home", str(tmp_path / "home"), "--host", "0.0.0.0"]))
    assert env["AIRFLOW__API__HOST"] == "0.0.0.0"
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8080"
    # The scheduler's and triggerer's log servers would listen on every interface.
    assert "--skip-serve-logs" in dev_stack.AIRFLOW_COMPONENTS["scheduler"]
    assert "--skip-serve-logs" in dev_stack.AIRFLOW_COMPONENTS["triggerer"]


# -- the watcher --------------------------------------------------------------------------

def sleeper(seconds: float = 120) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def test_a_dying_component_ends_the_wait_naming_it_its_log_and_its_last_error(tmp_path):
    stack = dev_stack.Stack(parse_args(["--home", str(tmp_path / "home")]))
    try:
        triggerer = stack.start("triggerer", sleeper())
        stack.start("scheduler", [sys.executable, "-c", (
            "import sys, time\n"
            "print('scheduler starting', flush=True)\n"
            "print('sqlite3.IntegrityError: FOREIGN KEY constraint failed', flush=True)\n"
            "time.sleep(1)\n"
            "sys.exit(3)\n")])
        with pytest.raises(dev_stack.ComponentDied) as err:
            dev_stack.poll("Airflow's API server", lambda: None, timeout=120, stack=stack)
        message = str(err.value)
        assert message.startswith("scheduler (pid ")
        assert "exited with code 3" in message
        assert str(tmp_path / "home" / "logs-dev-stack" / "scheduler.log") in message
        assert "sqlite3.IntegrityError: FOREIGN KEY constraint failed" in message
        assert triggerer.poll() is None
    finally:
        stack.stop()
    assert triggerer.poll() is not None


def test_a_killed_component_is_named_with_its_signal(tmp_path):
    stack = dev_stack.Stack(parse_args(["--home", str(tmp_path / "home")]))
    try:
        victim = stack.start("dag-processor", sleeper())
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        with pytest.raises(dev_stack.ComponentDied, match=r"dag-processor \(pid \d+\) was "
                                                          r"killed by SIGKILL"):
            stack.check_alive()
    finally:
        stack.stop()


def test_stop_also_ends_a_task_runner_whose_component_died(tmp_path):
    """An orphan (its parent, the scheduler, killed) has left the process tree."""
    stack = dev_stack.Stack(parse_args(["--home", str(tmp_path / "home")]))
    pid_file = tmp_path / "orphan.pid"
    parent = stack.start("scheduler", [sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n")])
    try:
        dev_stack.poll("the orphan", lambda: pid_file.read_text() or None
                       if pid_file.exists() else None, timeout=30)
        orphan = psutil.Process(int(pid_file.read_text()))
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert orphan.is_running()
    finally:
        stack.stop()
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE


# -- waits ----------------------------------------------------------------------------------

def test_a_wait_says_what_it_waits_for_and_gives_up_with_what_to_do(monkeypatch, capsys):
    monkeypatch.setattr(dev_stack, "PROGRESS_EVERY_S", 0)
    answers = iter([None, None, "up"])
    assert dev_stack.poll("the simulator", lambda: next(answers), timeout=60) == "up"
    assert "waiting for the simulator" in capsys.readouterr().out
    with pytest.raises(dev_stack.StackError,
                       match=r"Airflow's API server: nothing after 2 s; raise --start-timeout"):
        dev_stack.poll("Airflow's API server", lambda: None, timeout=2,
                       hint="raise --start-timeout")


# -- Airflow's REST API, as a real HTTP server answering from a script ------------------------

class FakeAirflow:
    """The REST calls the dev stack makes, answered from a script: per (method, path) a
    list of answers, the last one repeated; ``("stall", s)`` answers after ``s`` seconds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.script: dict[tuple[str, str], list[tuple]] = {
            ("POST", "/auth/token"): [("json", 201, {"access_token": "tok"})]}
        fake = self

        class Handler(JsonHandler):
            access_log = False

            def answer(self) -> None:
                url = urlsplit(self.path)
                body = self.read_body()
                fake.calls.append((self.command, url.path,
                                   json.loads(body) if body else parse_qs(url.query)))
                answers = fake.script.get((self.command, url.path)) or [
                    ("json", 404, {"detail": "not scripted"})]
                kind, *rest = answers.pop(0) if len(answers) > 1 else answers[0]
                if kind == "stall":
                    time.sleep(rest[0])
                    rest = [200, {}]
                self.send_json(*rest)

            do_GET = do_POST = do_PATCH = do_PUT = answer

        self.server = SimHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on(self, method: str, path: str, *answers: tuple) -> None:
        self.script[(method, path)] = list(answers)

    def changes(self) -> list[tuple[str, str, Any]]:
        return [c for c in self.calls if c[0] not in ("GET",) and c[1] != "/auth/token"]


@pytest.fixture
def fake_airflow():
    fake = FakeAirflow()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_timeouts_and_503s_are_retried_with_what_failed_and_no_secret(fake_airflow, capsys):
    fake_airflow.on("PATCH", "/api/v2/dags/promptops_daily",
                    ("stall", 3), ("json", 503, {"detail": "database is locked"}),
                    ("json", 200, {"is_paused": False}))
    api = dev_stack.AirflowApi(fake_airflow.base, PASSWORD, timeout=1, retry_s=120)
    api.unpause("promptops_daily")
    assert [c[:2] for c in fake_airflow.changes()] == \
        [("PATCH", "/api/v2/dags/promptops_daily")] * 3
    out = capsys.readouterr().out
    assert "PATCH /api/v2/dags/promptops_daily: no answer in time; retrying" in out
    assert "PATCH /api/v2/dags/promptops_daily: HTTP 503; retrying" in out
    assert PASSWORD not in out


def test_an_api_that_keeps_failing_ends_with_what_to_do(fake_airflow):
    fake_airflow.on("PATCH", "/api/v2/dags/promptops_daily", ("json", 503, {}))
    api = dev_stack.AirflowApi(fake_airflow.base, PASSWORD, timeout=5, retry_s=2,
                               hint="raise --api-retry")
    with pytest.raises(dev_stack.StackError, match=r"PATCH /api/v2/dags/promptops_daily still "
                                                   r"failing after \d+ s \(HTTP 503\); raise "
                                                   r"--api-retry"):
        api.unpause("promptops_daily")


def backfill_doc(backfill_id: int, first: str, last: str) -> dict:
    return {"id": backfill_id, "from_date": first, "to_date": last, "completed_at": None}


FIRST, LAST = "2026-11-19T10:00:00+00:00", "2026-11-20T09:00:00+00:00"


def test_a_retried_backfill_whose_first_try_went_through_is_not_duplicated(fake_airflow):
    fake_airflow.on("POST", "/api/v2/backfills",
                    ("stall", 3), ("json", 409, {"detail": "already a running backfill"}))
    fake_airflow.on("GET", "/api/v2/backfills",
                    ("json", 200, {"backfills": [backfill_doc(5, FIRST, LAST)]}))
    fake_airflow.on("GET", f"/api/v2/dags/{HOURLY}/dagRuns",
                    ("json", 200, {"dag_runs": [{"state": "queued"}], "total_entries": 1}))
    api = dev_stack.AirflowApi(fake_airflow.base, PASSWORD, timeout=1, retry_s=120)
    got = api.backfill(HOURLY, datetime.fromisoformat(FIRST), datetime.fromisoformat(LAST))
    assert got == 5
    assert [c[:2] for c in fake_airflow.changes()] == [("POST", "/api/v2/backfills")] * 2


def test_a_half_created_backfill_is_cancelled_and_created_again(fake_airflow):
    fake_airflow.on("POST", "/api/v2/backfills", ("json", 409, {"detail": "running"}),
                    ("json", 200, backfill_doc(6, FIRST, LAST)))
    fake_airflow.on("GET", "/api/v2/backfills",
                    ("json", 200, {"backfills": [backfill_doc(5, FIRST, LAST)]}))
    fake_airflow.on("GET", f"/api/v2/dags/{HOURLY}/dagRuns",
                    ("json", 200, {"dag_runs": [], "total_entries": 0}))
    fake_airflow.on("PUT", "/api/v2/backfills/5/cancel", ("json", 200, {}))
    api = dev_stack.AirflowApi(fake_airflow.base, PASSWORD, timeout=5, retry_s=60)
    assert api.backfill(HOURLY, datetime.fromisoformat(FIRST), datetime.fromisoformat(LAST)) == 6
    assert [c[:2] for c in fake_airflow.changes()] == [
        ("POST", "/api/v2/backfills"), ("PUT", "/api/v2/backfills/5/cancel"),
        ("POST", "/api/v2/backfills")]


def test_someone_elses_backfill_is_named_with_what_to_do(fake_airflow):
    fake_airflow.on("POST", "/api/v2/backfills", ("json", 409, {"detail": "running"}))
    fake_airflow.on("GET", "/api/v2/backfills", ("json", 200, {
        "backfills": [backfill_doc(3, "2026-11-01T00:00:00+00:00", LAST)]}))
    api = dev_stack.AirflowApi(fake_airflow.base, PASSWORD, timeout=5, retry_s=60)
    with pytest.raises(dev_stack.StackError, match=r"already has a backfill running \(id 3.*"
                                                   r"--clean"):
        api.backfill(HOURLY, datetime.fromisoformat(FIRST), datetime.fromisoformat(LAST))


class RecordingStack(dev_stack.Stack):
    """The real stack object; starting a component is only recorded in the call list."""

    def __init__(self, args, calls: list) -> None:
        super().__init__(args)
        self.calls = calls

    def start_airflow(self, *names: str) -> None:
        self.calls.extend(("start", name, None) for name in names)


def test_the_backfill_is_created_while_hourly_is_paused_and_before_the_scheduler(
        fake_airflow, tmp_path):
    daily = "promptops_daily"
    for dag_id in (HOURLY, daily):
        fake_airflow.on("GET", f"/api/v2/dags/{dag_id}/details", ("json", 200, {}))
        fake_airflow.on("PATCH", f"/api/v2/dags/{dag_id}", ("json", 200, {}))
    # An earlier start left the hourly DAG unpaused.
    fake_airflow.on("GET", f"/api/v2/dags/{HOURLY}", ("json", 200, {"is_paused": False}))
    fake_airflow.on("POST", "/api/v2/backfills", ("json", 200, backfill_doc(7, FIRST, LAST)))
    args = parse_args(["--home", str(tmp_path / "home"), "--unpause", daily, HOURLY])
    stack = RecordingStack(args, fake_airflow.calls)
    api = dev_stack.AirflowApi(fake_airflow.base, PASSWORD, timeout=5, retry_s=60)

    now = datetime(2026, 11, 20, 10, 25, tzinfo=UTC)
    assert dev_stack.start_demo(stack, api, args, now) == 7

    assert fake_airflow.changes() == [
        ("PATCH", f"/api/v2/dags/{HOURLY}", {"is_paused": True}),
        ("POST", "/api/v2/backfills", {
            "dag_id": HOURLY, "from_date": FIRST, "to_date": LAST, "max_active_runs": 1,
            "reprocess_behavior": "failed", "run_backwards": False}),
        ("start", "scheduler", None),
        ("PATCH", f"/api/v2/dags/{HOURLY}", {"is_paused": False}),
        ("PATCH", f"/api/v2/dags/{daily}", {"is_paused": False}),
    ]


def test_without_a_backfill_the_scheduler_starts_before_the_unpause(fake_airflow, tmp_path):
    fake_airflow.on("GET", "/api/v2/dags/promptops_heal/details", ("json", 200, {}))
    fake_airflow.on("PATCH", "/api/v2/dags/promptops_heal", ("json", 200, {}))
    args = parse_args(["--home", str(tmp_path / "home"), "--backfill-hours", "0",
                       "--unpause", "promptops_heal"])
    stack = RecordingStack(args, fake_airflow.calls)
    api = dev_stack.AirflowApi(fake_airflow.base, PASSWORD, timeout=5, retry_s=60)
    assert dev_stack.start_demo(stack, api, args, datetime.now(UTC)) is None
    assert fake_airflow.changes() == [
        ("start", "scheduler", None),
        ("PATCH", "/api/v2/dags/promptops_heal", {"is_paused": False})]


# -- a rerun after an aborted start -------------------------------------------------------------

def stack_args(tmp_path: Path, *extra: str) -> Any:
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return parse_args(["--home", str(tmp_path / "home"), "--airflow-port", str(ports[0]),
                       "--simulator-port", str(ports[1]), "--slack-port", str(ports[2]),
                       *extra])


def test_a_taken_port_is_named_with_the_option_to_choose_another(tmp_path):
    args = stack_args(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", args.simulator_port))
        s.listen()
        with pytest.raises(dev_stack.StackError) as err:
            dev_stack.preflight(args)
    message = str(err.value)
    assert f"port {args.simulator_port} (the simulator) is in use by pid {os.getpid()}" in message
    assert "--simulator-port" in message
    assert "--clean" not in message  # a fresh start would not free it


def write_pid_file(home: Path, pid: int, started: float, **sessions: int) -> None:
    (home / dev_stack.PID_FILE).write_text(
        f"{pid} dev_stack {started}\n" + "".join(f"{p} {n}\n" for n, p in sessions.items()))


def test_a_stale_pid_file_is_removed_and_said_so(tmp_path, capsys):
    args = stack_args(tmp_path)
    home = Path(args.home)
    home.mkdir()
    write_pid_file(home, 999_999_999, time.time() - 60, scheduler=999_999_998)
    dev_stack.preflight(args)
    assert not (home / dev_stack.PID_FILE).exists()
    assert "removed the stale pid file" in capsys.readouterr().out


def test_leftovers_of_an_aborted_start_are_named_and_clean_stops_them(tmp_path, monkeypatch):
    args = stack_args(tmp_path)
    home = Path(args.home)
    home.mkdir()
    (home / "airflow.cfg").write_text("[core]\n")
    started = time.time() - 1
    # Airflow's components rewrite their title, which hides their environment: found by
    # the session they lead.
    titled = subprocess.Popen([sys.executable, "-c", (
        "import setproctitle, time\n"
        "setproctitle.setproctitle('airflow scheduler -- DagFileProcessorManager')\n"
        "time.sleep(120)\n")], env={**os.environ, dev_stack.MARKER: str(home)},
        start_new_session=True)
    marked = subprocess.Popen(sleeper(), env={**os.environ, dev_stack.MARKER: str(home)})
    # Their dev_stack was killed -9.
    write_pid_file(home, 999_999_999, started, scheduler=titled.pid)
    try:
        dev_stack.poll("the title", lambda: True if psutil.Process(titled.pid).cmdline()[0]
                       .startswith("airflow scheduler") else None, timeout=30)
        assert dev_stack.MARKER not in psutil.Process(titled.pid).environ()
        with pytest.raises(dev_stack.StackError) as err:
            dev_stack.preflight(args)
        message = str(err.value)
        assert "left processes running:" in message
        assert f"pid {titled.pid} (airflow scheduler -- DagFileProcessorManager" in message
        assert f"pid {marked.pid} (" in message
        assert "./run.sh --clean" in message

        lake, state = tmp_path / "data" / "lake", tmp_path / "data" / "state"
        lake.mkdir(parents=True)
        state.mkdir()
        monkeypatch.setattr(dev_stack, "DEMO_DATA", {"lake": lake, "state": state})
        monkeypatch.delenv("PROMPTOPS_LAKE_URI")
        monkeypatch.setenv("PROMPTOPS_STATE_DIR", str(state))  # set by the user: kept
        dev_stack.clean(args)
        assert titled.wait(timeout=30) is not None and marked.wait(timeout=30) is not None
        assert not home.exists() and not lake.exists() and state.exists()
        dev_stack.preflight(args)
    finally:
        for proc in (titled, marked):
            if proc.poll() is None:
                proc.kill()


def test_a_half_created_database_is_named_and_clean_removes_it(tmp_path):
    args = stack_args(tmp_path)
    home = Path(args.home)
    home.mkdir()
    with sqlite3.connect(home / "airflow.db") as con:  # tables, but never stamped
        con.execute("CREATE TABLE dag_run (id INTEGER PRIMARY KEY)")
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
    with pytest.raises(dev_stack.StackError, match=r"half-created.*\n.*--clean"):
        dev_stack.preflight(args)
    dev_stack.clean(args)
    dev_stack.preflight(args)


def test_a_running_stack_on_the_same_home_is_not_started_over(tmp_path):
    args = stack_args(tmp_path)
    home = Path(args.home)
    home.mkdir()
    other = subprocess.Popen([*sleeper(), "scripts/dev_stack.py"])
    write_pid_file(home, other.pid, psutil.Process(other.pid).create_time())
    try:
        dev_stack.poll("the exec", lambda: True if "scripts/dev_stack.py" in psutil.Process(
            other.pid).cmdline() else None, timeout=30)
        for step in (dev_stack.preflight, dev_stack.clean):
            with pytest.raises(dev_stack.StackError, match=rf"another ./run.sh is running with "
                                                           rf"{home} \(pid {other.pid}\)"):
                step(args)
        assert home.exists()
    finally:
        other.kill()
        other.wait()


def test_clean_leaves_a_folder_that_is_no_airflow_home(tmp_path):
    args = stack_args(tmp_path, "--home", str(tmp_path))
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(dev_stack.StackError, match="does not look like an Airflow home"):
        dev_stack.clean(args)
    assert (tmp_path / "thesis.tex").exists()
