"""The README's run command, for real: simulator + Slack sink + Airflow's components, the
login as soon as the UI answers, a backfill created through Airflow's REST API while the
hourly DAG is paused and run oldest first, everything on 127.0.0.1; a killed component
stops the stack with its name and log."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import pytest

from promptops.lake.store import Lake
from tests.helpers import ROOT
from tests.helpers.stack import AirflowRest, free_port, processes_using

HOURLY = "promptops_hourly"


def wait_until(what: str, check, proc: subprocess.Popen, log: Path, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dev_stack exited {proc.returncode} waiting for {what}:\n"
                                 f"{log.read_text(errors='replace')[-4000:]}")
        if result := check():
            return result
        time.sleep(3)
    raise AssertionError(f"no {what} after {timeout:.0f} s:\n"
                         f"{log.read_text(errors='replace')[-4000:]}")


def listening(procs: list[psutil.Process]) -> set[tuple[str, int]]:
    found = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def when(value: str | None) -> datetime:
    return datetime.fromisoformat(value)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_run_command_backfills_in_order_on_loopback_and_stops_when_a_component_dies(tmp_path):
    home, lake_dir = tmp_path / "airflow_home", tmp_path / "lake"
    env = dict(os.environ, PROMPTOPS_LAKE_URI=f"file://{lake_dir}",
               PROMPTOPS_STATE_DIR=str(tmp_path / "state"))
    ports = {"airflow": free_port(), "simulator": free_port(), "slack": free_port()}
    hours = 2
    log = tmp_path / "dev_stack.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts/dev_stack.py"), "--home", str(home),
             "--airflow-port", str(ports["airflow"]), "--simulator-port", str(ports["simulator"]),
             "--slack-port", str(ports["slack"]), "--backfill-hours", str(hours),
             "--scenario", str(ROOT / "include/config/scenarios/quiet.yaml")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until("ready banner", lambda: "Airflow UI:" in log.read_text(), proc, log, 600)
        text = log.read_text()
        # The login comes as soon as the UI answers, before the backfill is created.
        assert text.index("log in as admin / ") < text.index(f"backfill 1: {HOURLY}")

        # Nothing of the stack listens beyond loopback.
        tree = psutil.Process(proc.pid).children(recursive=True)
        sockets = listening(tree)
        assert {p for _, p in sockets} >= set(ports.values()), sockets
        assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets

        password = json.loads((home / "simple_auth_manager_passwords.json.generated")
                              .read_text())["admin"]
        api = AirflowRest(f"http://127.0.0.1:{ports['airflow']}", password)
        backfill = wait_until(
            "finished backfill",
            lambda: next((b for b in api.get("/backfills", dag_id=HOURLY)
                          ["backfills"] if b["completed_at"]), None), proc, log, 600)

        # The backfill covers the last complete hours and ran them oldest first, one at a time.
        created = when(backfill["created_at"]).replace(minute=0, second=0, microsecond=0)
        expected = [created - timedelta(hours=h) for h in range(hours, 0, -1)]
        assert when(backfill["from_date"]) == expected[0]
        assert when(backfill["to_date"]) == expected[-1]
        runs = api.get(f"/dags/{HOURLY}/dagRuns", limit=100)["dag_runs"]
        backfilled = sorted((r for r in runs if r["run_type"] == "backfill"),
                            key=lambda r: when(r["start_date"]))
        assert [when(r["logical_date"]) for r in backfilled] == expected
        assert all(r["state"] == "success" for r in backfilled), backfilled
        for before, after in zip(backfilled, backfilled[1:], strict=False):
            assert when(after["start_date"]) >= when(before["end_date"])
        # The scheduler made no run of its own for a backfilled hour.
        assert all(when(r["logical_date"]) > expected[-1] for r in runs
                   if r["run_type"] == "scheduled"), runs

        # The hourly DAG was held paused until the backfill existed.
        events = api.get("/eventLogs", dag_id=HOURLY, limit=100, order_by="event_log_id")
        names = [e["event"] for e in events["event_logs"]]
        assert "create_backfill" in names and "patch_dag" in names, names
        assert names.index("create_backfill") < names.index("patch_dag"), names

        # The backfilled hours are in the lake, each call once.
        lake = Lake(f"file://{lake_dir}")
        for hour in expected:
            table = lake.read_partition("calls", hour)
            assert table is not None and table.num_rows > 0, f"no calls partition for {hour}"
            assert len(table.column("call_id").unique()) == table.num_rows

        # A component that dies stops the stack, named with its log.
        scheduler = psutil.Process(int(re.search(r"started scheduler \(pid (\d+)", text)[1]))
        tree = psutil.Process(proc.pid).children(recursive=True)
        scheduler.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=120) == 1
        text = log.read_text()
        assert f"scheduler (pid {scheduler.pid}) was killed by SIGKILL" in text, text[-3000:]
        assert str(home / "logs-dev-stack" / "scheduler.log") in text
        assert "stopped everything." in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=90)
    assert processes_using(home) == []
    assert [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert not (home / "dev_stack.pid").exists()
