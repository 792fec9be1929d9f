"""The README's local stack (scripts/dev_stack.py: simulator, Slack sink, airflow standalone)
for the tests, with a small client for Airflow's REST API; ``SharedStack`` is the one the
stack tests share (fixture ``airflow_stack``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from promptops.lake.store import Lake
from tests.helpers import ROOT
from tests.helpers.heal import short_policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_using(home: Path) -> list[int]:
    """Pids of the processes running with this AIRFLOW_HOME (what a stack left behind)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("AIRFLOW_HOME") == str(home):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class AirflowRest:
    """Just what the tests need of Airflow's REST API v2, logged in as the admin."""

    def __init__(self, base: str, password: str) -> None:
        self.base = base
        token = requests.post(f"{base}/auth/token",
                              json={"username": "admin", "password": password}, timeout=30)
        token.raise_for_status()
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        deadline = time.monotonic() + 60
        while True:
            resp = self.s.request(method, f"{self.base}/api/v2{path}", timeout=30, **kw)
            # SQLite allows one writer: the scheduler's writes can make the API answer 5xx.
            if resp.status_code < 500 or time.monotonic() > deadline:
                break
            time.sleep(1)
        if resp.status_code >= 400:
            raise AssertionError(f"{method} {path}: HTTP {resp.status_code} {resp.text[:500]}")
        return resp.json() if resp.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params=params)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, run_id: str, conf: dict) -> dict:
        return self._call("POST", f"/dags/{dag_id}/dagRuns",
                          json={"dag_run_id": run_id, "logical_date": None, "conf": conf})

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        doc = self._call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in doc["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        doc = self._call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                                f"{task_id}/xcomEntries/{key}", params={"deserialize": "true"})
        return doc["value"]

    def respond(self, dag_id: str, run_id: str, task_id: str, option: str) -> dict:
        return self._call("PATCH", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/"
                                   f"taskInstances/{task_id}/-1/hitlDetails",
                          json={"chosen_options": [option], "params_input": {}})

    def wait_task(self, dag_id: str, run_id: str, task_id: str, states: set[str],
                  timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.task_states(dag_id, run_id).get(task_id)
            if state in states:
                return state
            time.sleep(2)
        raise AssertionError(f"{dag_id} {run_id} {task_id}: state {state!r}, wanted {states}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.run(dag_id, run_id)["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise AssertionError(f"{dag_id} {run_id} still {state!r} after {timeout:.0f} s: "
                             f"{self.task_states(dag_id, run_id)}")


class LocalStack:
    """``scripts/dev_stack.py`` in a subprocess on free ports; stops it (and everything it
    started) on exit."""

    def __init__(self, home: Path, *, scenario: Path, env: dict[str, str] | None = None,
                 unpause: tuple[str, ...] = (), simulator_args: tuple[str, ...] = (),
                 api_key: str = "stack-key") -> None:
        self.home = home
        self.ports = {"airflow": free_port(), "simulator": free_port(), "slack": free_port()}
        self.base = f"http://127.0.0.1:{self.ports['airflow']}"
        self.simulator_url = f"http://127.0.0.1:{self.ports['simulator']}"
        self.slack_url = f"http://127.0.0.1:{self.ports['slack']}"
        self.api_key = api_key
        cmd = [sys.executable, str(ROOT / "scripts/dev_stack.py"), "--home", str(home),
               "--airflow-port", str(self.ports["airflow"]),
               "--simulator-port", str(self.ports["simulator"]),
               "--slack-port", str(self.ports["slack"]), "--backfill-hours", "0",
               "--scenario", str(scenario), "--api-key", api_key, "--unpause", *unpause]
        cmd += [f"--simulator-arg={a}" for a in simulator_args]
        self.log = home.parent / "dev_stack.log"
        home.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.api: AirflowRest | None = None

    def wait_ready(self, timeout: float = 420) -> AirflowRest:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dev_stack exited {self.proc.returncode}:\n{self.tail()}")
            if "Airflow UI:" in self.log.read_text(errors="replace"):
                pw_file = self.home / "simple_auth_manager_passwords.json.generated"
                import json

                self.api = AirflowRest(self.base, json.loads(pw_file.read_text())["admin"])
                return self.api
            time.sleep(2)
        raise AssertionError(f"the stack was not ready within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # dev_stack stops what it started
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._out.close()

    def slack_messages(self) -> list[dict]:
        return requests.get(f"{self.slack_url}/messages", timeout=10).json()["messages"]

    def sim(self, path: str) -> Any:
        return requests.get(f"{self.simulator_url}{path}", timeout=10).json()

    def sim_action_ids(self) -> set[str]:
        """The ids of the actions the simulated platform has taken so far."""
        return {a["action_id"] for a in self.sim("/_sim/truth")["actions"]}


#: The shared stack's platform. Where the heal approval test sets the simulator's clock
#: (2026-11-20 10:12) the error burst its approved heal ends is on, at 60,000 calls an hour
#: so a one-minute verification window holds enough calls; from noon on traffic is a tenth of
#: that (about quiet.yaml's), which keeps the hourly runs of the UI test light.
SHARED_SCENARIO = """
seed: 9
calls_per_hour: 60000
data_faults: {malformed_rate: 0.0, duplicate_rate: 0.0, late_rate: 0.0}
incidents:
  - {name: mini-errors, kind: error_burst, start: 2026-11-20T10:00:00Z,
     end: 2026-11-20T12:00:00Z, slice: {model: gpt-4o-mini},
     params: {error_rate: 0.3, error_codes: [5000]}}
  - {name: quiet-from-noon, kind: traffic_dip, start: 2026-11-20T12:00:00Z,
     end: 2100-01-01T00:00:00Z, params: {multiplier: 0.1}}
faults: []
"""
#: Running from the start: the heal DAG (runs triggered by the tests) and the push DAG (runs
#: triggered by asset events). The hourly DAG runs only while the UI test unpauses it; health
#: and daily stay paused: on a 2-core box they would slow everything else down.
SHARED_UNPAUSED = ("promptops_heal", "promptops_push")


class SharedStack(LocalStack):
    """One README stack for every test that needs Airflow's scheduler, REST API or UI
    (fixture ``airflow_stack``): a start costs the better part of a minute of a 2-core box.

    Set up once for all of them: a lake, a landing area for pushed batches, the heal policy
    with short verification timings, a 3-minute approval timeout (swept every 2 s) and dry
    runs sent to a person. Each test keeps to its own run ids and lake hours, calls ``forget``
    before reading Slack or the simulator's request log, and counts only the simulator's
    actions it did not see at its start (``sim_action_ids``)."""

    def __init__(self, tmp: Path) -> None:
        self.lake_dir, self.landing_dir = tmp / "lake", tmp / "landing"
        self.landing_dir.mkdir(parents=True)
        scenario = tmp / "scenario.yaml"
        scenario.write_text(SHARED_SCENARIO)
        policy = short_policy(tmp, **{
            # Long enough for three runs to park and be answered on a busy box.
            "approval_timeout: 30m": "approval_timeout: 3m",
            "dry_run_needs_approval: false": "dry_run_needs_approval: true"})
        super().__init__(tmp / "airflow_home", scenario=scenario, unpause=SHARED_UNPAUSED,
                         simulator_args=("--action-duration-s=1",),
                         env={"PROMPTOPS_LAKE_URI": f"file://{self.lake_dir}",
                              "PROMPTOPS_LANDING_URI": f"file://{self.landing_dir}",
                              "PROMPTOPS_STATE_DIR": str(tmp / "state"),
                              "PROMPTOPS_HEAL_POLICY_FILE": str(policy),
                              # The approval-timeout sweep: look every 2 s, not every 15 s.
                              "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2"})

    @property
    def lake(self) -> Lake:
        return Lake(f"file://{self.lake_dir}")

    def forget(self) -> None:
        """Empty the Slack sink and the simulator's request log: what a test reads of them
        from here on is its own."""
        requests.delete(f"{self.slack_url}/messages", timeout=10).raise_for_status()
        requests.delete(f"{self.simulator_url}/_sim/requests", timeout=10).raise_for_status()

    def set_sim_clock(self, now: datetime | None) -> None:
        """The simulated platform's clock jumps to ``now`` and ticks on; None: real time."""
        requests.post(f"{self.simulator_url}/_sim/clock", timeout=10,
                      json={"now": None if now is None else now.isoformat()}
                      ).raise_for_status()
