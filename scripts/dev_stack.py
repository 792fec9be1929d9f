"""Start the local promptops stack (``./run.sh``): platform simulator, Slack sink, Airflow.

Airflow runs on SQLite with the LocalExecutor under a project-local ``AIRFLOW_HOME``
(``airflow_home/``), with this project's dags/ and plugins/, examples off and the
connections set through ``AIRFLOW_CONN_*`` environment variables. Its components are
processes of this script, each logging to ``<home>/logs-dev-stack/<name>.log``: the API
server (on 127.0.0.1 unless ``--host``), the DAG processor, the triggerer and the scheduler.
Their log servers are off: they would listen on every interface, and the API server reads
the task logs from the local folder.

Start-up, every wait with back-off and a progress line every ~15 s: checks (ports, a stack
still running or left over from an aborted start, a half-created database), ``airflow db
migrate``, the components but the scheduler, the login as soon as the UI answers, the
backfill of ``promptops_hourly`` created while that DAG is paused, then the scheduler and
the unpause: the backfilled hours run oldest first, before any scheduled run, so the alert
engine sees the history in order. Every process is watched; when one dies the stack stops,
naming it and its log. Ctrl-C (or SIGTERM) stops every process this script started, the
whole process tree of each, and checks that none is left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psutil
import requests
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_stack_args import HOURLY_DAG, ROOT, parse_args  # noqa: E402

VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
#: Every process of a stack carries its AIRFLOW_HOME here: how a later start finds what an
#: aborted one left running, without touching anything else that uses the same home.
MARKER = "PROMPTOPS_DEV_STACK"
#: In the home: "pid dev_stack start-time" of this script, then "pid name" of each process it
#: started. Each of those leads a session of its own, which its descendants share: how the
#: processes whose title rewrite hides their environment (Airflow's) are found again.
PID_FILE = "dev_stack.pid"
PROGRESS_EVERY_S = 15
#: The Airflow components and their arguments, in start order. The scheduler starts last,
#: once the backfill exists (see ``start_demo``).
AIRFLOW_COMPONENTS = {
    "api-server": ["api-server"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
}
#: Lines that name an error (a traceback's last line), as a dead process leaves them.
ERROR_LINE = re.compile(r"^\w+(\.\w+)*(Error|Exception): ")
T = TypeVar("T")

#: The demo's data where no PROMPTOPS_LAKE_URI / PROMPTOPS_STATE_DIR says otherwise.
DEMO_DATA = {"lake": ROOT / "data" / "lake", "state": ROOT / "data" / "state"}
DEMO_DATA_ENV = {"lake": "PROMPTOPS_LAKE_URI", "state": "PROMPTOPS_STATE_DIR"}


class StackError(RuntimeError):
    """A start-up or run-time problem, said with what to do about it."""


class ComponentDied(StackError):
    """A process of the stack exited."""


def connect_host(host: str) -> str:
    """Where this machine reaches a server listening on ``host``."""
    return LOOPBACK if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - compared, not bound


def stack_env(args: argparse.Namespace) -> dict[str, str]:
    home = Path(args.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    # distributed_stack's options have no --host; it sets its own API host.
    host = getattr(args, "host", LOOPBACK)
    platform = {"conn_type": "http", "host": f"http://127.0.0.1:{args.simulator_port}",
                "password": args.api_key}
    slack = {"conn_type": "slackwebhook",
             "password": f"http://127.0.0.1:{args.slack_port}/services/T0000/B0000/local"}
    judge = {"conn_type": "http", "host": f"http://127.0.0.1:{args.simulator_port}",
             "password": args.api_key}
    env = dict(os.environ)
    env.update({
        # The components launch `airflow ...` sub-commands (task runners) from PATH.
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        MARKER: str(home),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(args.airflow_port),
        "AIRFLOW__API__BASE_URL": f"http://{connect_host(host)}:{args.airflow_port}",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW_CONN_PROMPT_PLATFORM": json.dumps(platform),
        "AIRFLOW_CONN_SLACK_ALERTS": json.dumps(slack),
        # The simulator's judge endpoint; the judge itself stays off unless
        # PROMPTOPS_JUDGE_ENABLED=true is set before starting the stack.
        "AIRFLOW_CONN_RELEVANCE_JUDGE": json.dumps(judge),
        # The simulated platform burns ~140M tokens a day; the seed's 100k/day budget is for
        # a real tenant. Keep the demo's budget alert meaningful (override it as you like).
        "PROMPTOPS_THRESHOLD__DAILY_TOKENS__BUDGET": env.get(
            "PROMPTOPS_THRESHOLD__DAILY_TOKENS__BUDGET", "200000000"),
        "PROMPTOPS_LAKE_URI": env.get("PROMPTOPS_LAKE_URI", f"file://{DEMO_DATA['lake']}"),
        "PROMPTOPS_STATE_DIR": env.get("PROMPTOPS_STATE_DIR", str(DEMO_DATA["state"])),
    })
    return env


def last_errors(log: Path, n: int = 3) -> list[str]:
    """The last ``n`` error lines of a log (what a dead process said last)."""
    if not log.exists():
        return []
    lines = (ln.strip() for ln in log.read_text(errors="replace").splitlines())
    return [ln for ln in lines if ERROR_LINE.match(ln)][-n:]


def exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Stack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.home = Path(args.home).resolve()
        self.env = stack_env(args)
        self.base = self.env["AIRFLOW__API__BASE_URL"]
        self.procs: list[tuple[str, subprocess.Popen]] = []
        #: One-off commands (the migration): stopped with the rest, not watched.
        self.steps: list[tuple[str, subprocess.Popen]] = []
        self.logs = self.home / "logs-dev-stack"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pid_file = self.home / PID_FILE

    def record(self) -> None:
        """Write the pid file (see PID_FILE)."""
        me = psutil.Process()
        self.pid_file.write_text(f"{me.pid} dev_stack {me.create_time()}\n" + "".join(
            f"{proc.pid} {name}\n" for name, proc in self.procs + self.steps))

    def forget(self) -> None:
        """Remove the pid file, if it is this process's."""
        if read_pid_file(self.home)[0] == os.getpid():
            self.pid_file.unlink()

    def log_of(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.log_of(name), "ab")  # noqa: SIM115 - lives as long as the child
        return subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        proc = self._spawn(name, cmd)
        self.procs.append((name, proc))
        self.record()
        print(f"  started {name} (pid {proc.pid}, log {self.log_of(name)})", flush=True)
        return proc

    def run_step(self, name: str, cmd: list[str], what: str, timeout: float,
                 hint: str = "") -> None:
        """Run a one-off command to its end, watching the rest of the stack meanwhile."""
        print(f"  {what} (log {self.log_of(name)})", flush=True)
        proc = self._spawn(name, cmd)
        self.steps.append((name, proc))
        self.record()
        code = poll(what, proc.poll, timeout=timeout, stack=self,
                    hint=f"raise --start-timeout on a slow machine; see {self.log_of(name)}")
        self.steps.remove((name, proc))
        if code:
            raise StackError(f"{what} {exit_text(code)}; its output is in {self.log_of(name)}"
                             + "".join(f"\n    {e}" for e in last_errors(self.log_of(name)))
                             + (f"\n{hint}" if hint else ""))

    def start_airflow(self, *names: str) -> None:
        for name in names:
            self.start(name, [str(VENV_BIN / "airflow"), *AIRFLOW_COMPONENTS[name]])

    def check_alive(self) -> None:
        """Raise ComponentDied, naming the process, its log and its last errors, when a
        process of the stack has exited."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                log = self.log_of(name)
                raise ComponentDied(
                    f"{name} (pid {proc.pid}) {exit_text(proc.returncode)}; its output is in "
                    f"{log}" + "".join(f"\n    {e}" for e in last_errors(log)))

    def stop(self) -> None:
        """Terminate every started process and all of its descendants, then verify."""
        victims: dict[int, psutil.Process] = {}
        for _, proc in self.procs + self.steps:
            try:
                parent = psutil.Process(proc.pid)
                victims.update({p.pid: p for p in [*parent.children(recursive=True), parent]})
            except psutil.NoSuchProcess:
                pass
        # A task runner whose parent died (a killed scheduler) has left the tree.
        sessions = {proc.pid for _, proc in self.procs + self.steps}
        since = psutil.Process().create_time()
        victims.update({p.pid: p for p in stack_processes(self.home, sessions, since)})
        alive = list(victims.values())
        for action, grace in (("terminate", 15), ("kill", 5)):
            for p in alive:
                try:
                    getattr(p, action)()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(alive, timeout=grace)
        for _, proc in self.procs + self.steps:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        left = [p.pid for p in alive if p.is_running()]
        print("stopped everything." if not left else f"could not stop pids {left}", flush=True)


# -- waiting --------------------------------------------------------------------------------

def poll(what: str, probe: Callable[[], T | None], *, timeout: float,
         stack: Stack | None = None, hint: str = "") -> T:
    """``probe()`` with back-off (1 s growing to 10 s) until it returns something other than
    None. Between tries ``stack.check_alive()`` ends the wait as soon as a process died;
    every ~15 s a line says what is awaited. After ``timeout`` seconds a StackError names
    what did not happen (and ``hint``, what to do)."""
    started = last_note = time.monotonic()

    def attempt() -> T | None:
        if stack is not None:
            stack.check_alive()
        return probe()

    def note(state: RetryCallState) -> None:
        nonlocal last_note
        now = time.monotonic()
        if now - last_note >= PROGRESS_EVERY_S:
            last_note = now
            print(f"  ... waiting for {what} ({now - started:.0f} s; giving up after "
                  f"{timeout:.0f} s)", flush=True)

    def give_up(state: RetryCallState) -> T:
        raise StackError(f"{what}: nothing after {timeout:.0f} s" + (f"; {hint}" if hint else ""))

    retrying = Retrying(retry=retry_if_result(lambda r: r is None),
                        stop=stop_after_delay(timeout),
                        wait=wait_exponential(multiplier=1, min=1, max=10),
                        before_sleep=note, retry_error_callback=give_up)
    return retrying(attempt)


def wait_for(url: str, stack: Stack, timeout: float, what: str, hint: str = "") -> None:
    """Until ``url`` answers (any status below 500)."""
    def answers() -> bool | None:
        try:
            return True if requests.get(url, timeout=10).status_code < 500 else None
        except requests.RequestException:
            return None

    poll(what, answers, timeout=timeout, stack=stack, hint=hint)


def admin_password(home: str | Path, timeout: float = 120) -> str:
    path = Path(home).resolve() / "simple_auth_manager_passwords.json.generated"

    def password() -> str | None:
        try:
            return json.loads(path.read_text())["admin"]
        except (FileNotFoundError, ValueError, KeyError):  # not written (completely) yet
            return None

    return poll(f"the admin password in {path}", password, timeout=timeout)


# -- Airflow's REST API -----------------------------------------------------------------------

def _transient(exc: BaseException) -> bool:
    """No answer in time, a dropped connection or a 5xx: SQLite allows one writer, and
    while the scheduler writes the API server answers 503 (or 500: database is locked)."""
    if isinstance(exc, requests.HTTPError):
        return exc.response is not None and exc.response.status_code >= 500
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    return type(exc).__name__ if exc else "?"


class AirflowApi:
    """The REST calls the stack makes, logged in as the admin. Every call is retried with
    back-off after a timeout, a dropped connection or a 5xx, for ``retry_s`` seconds; then
    the error says what failed, and ``hint`` what to do."""

    def __init__(self, base: str, password: str, *, timeout: float = 60,
                 retry_s: float = 900, hint: str = "") -> None:
        self.base = base
        self.timeout = timeout
        self.retry_s = retry_s
        self.hint = hint
        self.session = requests.Session()
        token = self.request("POST", "/auth/token",
                             json={"username": "admin", "password": password})
        token.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        """One call; 4xx answers are the caller's to read."""
        what = f"{method} {path}"

        def note(state: RetryCallState) -> None:
            sleep = state.next_action.sleep if state.next_action else 0
            print(f"  Airflow's API: {what}: {_reason(state.outcome.exception())}; retrying in "
                  f"{sleep:.0f} s ({state.seconds_since_start:.0f} of {self.retry_s:.0f} s)",
                  flush=True)

        def give_up(state: RetryCallState) -> requests.Response:
            raise StackError(
                f"Airflow's API: {what} still failing after {state.seconds_since_start:.0f} s "
                f"({_reason(state.outcome.exception())})" + (f"; {self.hint}" if self.hint else ""))

        retrying = Retrying(retry=retry_if_exception(_transient),
                            stop=stop_after_delay(self.retry_s),
                            wait=wait_exponential(multiplier=1, min=1, max=15),
                            before_sleep=note, retry_error_callback=give_up)
        return retrying(self._once, method, path, **kw)

    def _once(self, method: str, path: str, **kw: Any) -> requests.Response:
        resp = self.session.request(method, f"{self.base}{path}", timeout=self.timeout, **kw)
        if resp.status_code >= 500:
            resp.raise_for_status()
        return resp

    def call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.request(method, f"/api/v2{path}", **kw)
        if resp.status_code >= 400:
            raise StackError(f"Airflow's API: {method} /api/v2{path}: HTTP {resp.status_code} "
                             f"{resp.text[:300]}")
        return resp.json() if resp.content else None

    def wait_for_dag(self, dag_id: str, stack: Stack, timeout: float = 180) -> None:
        """Until the DAG processor has parsed and serialised ``dag_id``."""
        def parsed() -> bool | None:
            try:
                resp = self.session.get(f"{self.base}/api/v2/dags/{dag_id}/details",
                                        timeout=self.timeout)
            except requests.RequestException:
                return None
            return True if resp.ok else None

        poll(f"DAG {dag_id} to be parsed", parsed, timeout=timeout, stack=stack,
             hint="see the import errors in the UI (or `airflow dags list-import-errors`) and "
                  "the dag-processor's log")

    def is_paused(self, dag_id: str) -> bool:
        return bool(self.call("GET", f"/dags/{dag_id}")["is_paused"])

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})

    def unpause(self, dag_id: str) -> None:
        self.set_paused(dag_id, False)

    def backfill(self, dag_id: str, start: datetime, end: datetime, *,
                 max_active_runs: int = 2) -> int:
        """Create a backfill of the logical dates ``start`` .. ``end`` (reprocessing failed
        runs), oldest first. A retried request whose first try went through (or a backfill
        left half-created by a failed one) is recognised, not duplicated."""
        body = {"dag_id": dag_id, "from_date": start.isoformat(), "to_date": end.isoformat(),
                "max_active_runs": max_active_runs, "reprocess_behavior": "failed",
                "run_backwards": False}
        for _ in range(3):
            resp = self.request("POST", "/api/v2/backfills", json=body)
            if resp.status_code != 409:
                break
            active = self.active_backfill(dag_id)
            if active is None:  # finished in between: create it again
                continue
            same = (datetime.fromisoformat(active["from_date"]) == start
                    and datetime.fromisoformat(active["to_date"]) == end)
            if not same:
                raise StackError(
                    f"{dag_id} already has a backfill running (id {active['id']}, "
                    f"{active['from_date']} .. {active['to_date']}): let it finish, cancel it "
                    f"in the UI, or start from scratch with --clean")
            if self.backfill_runs(dag_id, start, end):
                return int(active["id"])  # this request's earlier try went through
            # Created, but its runs were not (the creating request failed half-way).
            self.call("PUT", f"/backfills/{active['id']}/cancel")
        if resp.status_code >= 400:
            raise StackError(f"creating the backfill of {dag_id} failed: HTTP "
                             f"{resp.status_code} {resp.text[:300]}")
        return int(resp.json()["id"])

    def active_backfill(self, dag_id: str) -> dict[str, Any] | None:
        doc = self.call("GET", "/backfills", params={"dag_id": dag_id, "limit": 100})
        return next((b for b in doc["backfills"] if b["completed_at"] is None), None)

    def backfill_done(self, backfill_id: int) -> bool:
        return self.call("GET", f"/backfills/{backfill_id}")["completed_at"] is not None

    def backfill_runs(self, dag_id: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        doc = self.call("GET", f"/dags/{dag_id}/dagRuns", params={
            "run_type": "backfill", "logical_date_gte": start.isoformat(),
            "logical_date_lte": end.isoformat(), "order_by": "logical_date", "limit": 100})
        return list(doc["dag_runs"])

    def components_healthy(self) -> list[str]:
        """The components the API reports unhealthy (empty: all heartbeating)."""
        doc = self.call("GET", "/monitor/health")
        return [name for name in ("scheduler", "dag_processor", "triggerer")
                if (doc.get(name) or {}).get("status") != "healthy"]


# -- before starting: what an earlier start left ---------------------------------------------

def stack_processes(home: Path, sessions: set[int], since: float) -> list[psutil.Process]:
    """The processes of a stack with this home: by the marker in their environment, or by
    the session of a process the stack started (Airflow's components rewrite their title,
    and with it the environment /proc shows) if created since the stack started (a reused
    pid is not the stack's)."""
    found = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        if proc.pid == os.getpid():
            continue
        try:
            if (os.getsid(proc.pid) in sessions and proc.info["create_time"] >= since) \
                    or proc.environ().get(MARKER) == str(home):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def read_pid_file(home: Path) -> tuple[int | None, float, set[int]]:
    """From ``home``'s pid file: the stack's pid, its start time and its sessions."""
    try:
        first, *rest = (home / PID_FILE).read_text().splitlines()
        pid, _, started = first.split()
        return int(pid), float(started), {int(line.split()[0]) for line in rest if line.strip()}
    except (FileNotFoundError, ValueError):
        return None, 0.0, set()


def leftovers(home: Path) -> list[psutil.Process]:
    """What a stack on ``home`` that is gone left running (nothing after a reboot)."""
    _, started, sessions = read_pid_file(home)
    if started < psutil.boot_time():
        sessions = set()
    return stack_processes(home, sessions, started)


def describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(Path(a).name if i < 2 else a for i, a in enumerate(proc.cmdline()))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        cmd = "?"
    return f"pid {proc.pid} ({cmd[:80]})"


def running_stack(home: Path) -> int | None:
    """The pid of a live dev stack on ``home``, by its pid file."""
    pid, _, _ = read_pid_file(home)
    try:
        if pid and pid != os.getpid() and any(
                "dev_stack.py" in a for a in psutil.Process(pid).cmdline()):
            return pid
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    return None


def port_owner(port: int) -> psutil.Process | None:
    try:
        conns = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return None
    pid = next((c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr
                and c.laddr.port == port and c.pid), None)
    try:
        return psutil.Process(pid) if pid else None
    except psutil.NoSuchProcess:
        return None


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def database_problem(db: Path) -> str | None:
    """Why the SQLite database cannot be used as it is, or None."""
    if not db.exists() or db.stat().st_size == 0:
        return None
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master "
                                                "WHERE type = 'table'")}
            stamped = "alembic_version" in tables and con.execute(
                "SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.DatabaseError as exc:
        return f"the database {db} cannot be read ({exc})"
    if tables and not stamped:
        return (f"the database {db} is half-created (tables, but no migration version): "
                f"a start was aborted while it was being created")
    return None


def preflight(args: argparse.Namespace) -> None:
    """Refuse to start over what is in the way, naming it and what to do."""
    home = Path(args.home).resolve()
    if pid := running_stack(home):
        raise StackError(f"another ./run.sh is running with {home} (pid {pid}): stop it with "
                         f"Ctrl-C in its terminal (or `kill {pid}`), or start this one with "
                         f"its own --home and ports")
    problems, fresh_start_helps = [], False
    if left := leftovers(home):
        fresh_start_helps = True
        problems.append("an earlier start of this stack left processes running: "
                        + ", ".join(describe(p) for p in left))
    elif (pid_file := home / PID_FILE).exists():
        pid_file.unlink()
        print(f"  removed the stale pid file {pid_file} (its stack has gone)", flush=True)
    ports = ((args.host, args.airflow_port, "Airflow's API server", "--airflow-port"),
             (LOOPBACK, args.simulator_port, "the simulator", "--simulator-port"),
             (LOOPBACK, args.slack_port, "the Slack sink", "--slack-port"))
    left_pids = {p.pid for p in left}
    for host, port, what, option in ports:
        if port_free(host, port):
            continue
        owner = port_owner(port)
        if owner is not None and owner.pid in left_pids:
            continue  # named above
        by = f" by {describe(owner)}" if owner else ""
        problems.append(f"port {port} ({what}) is in use{by}: stop that process or choose "
                        f"another port with {option}")
    if db_note := database_problem(home / "airflow.db"):
        fresh_start_helps = True
        problems.append(db_note)
    if problems:
        raise StackError("cannot start:\n  - " + "\n  - ".join(problems) + (
            f"\n./run.sh --clean stops what an earlier start left running and deletes {home} "
            f"(database, logs) and the demo's data, to start from scratch."
            if fresh_start_helps else ""))


def clean(args: argparse.Namespace) -> None:
    """--clean: stop what an earlier start left, delete the home and the demo's data."""
    home = Path(args.home).resolve()
    if pid := running_stack(home):
        raise StackError(f"another ./run.sh is running with {home} (pid {pid}); stop it "
                         f"before --clean")
    if left := leftovers(home):
        print("  stopping what an earlier start left: "
              + ", ".join(describe(p) for p in left), flush=True)
        for p in left:
            p.terminate()
        _, alive = psutil.wait_procs(left, timeout=15)
        for p in alive:
            p.kill()
        psutil.wait_procs(alive, timeout=5)
    if home.exists():
        known = {"airflow.db", "airflow.cfg", "logs", "logs-dev-stack"}
        if any(home.iterdir()) and not known & {p.name for p in home.iterdir()}:
            raise StackError(f"--clean: {home} does not look like an Airflow home; not "
                             f"deleting it")
        shutil.rmtree(home)
        print(f"  deleted {home}", flush=True)
    for name, path in DEMO_DATA.items():
        if os.environ.get(DEMO_DATA_ENV[name]):
            print(f"  kept the {name} set by {DEMO_DATA_ENV[name]}", flush=True)
        elif path.exists():
            shutil.rmtree(path)
            print(f"  deleted {path}", flush=True)


# -- the demo ----------------------------------------------------------------------------------

def backfill_window(now: datetime, hours: int) -> tuple[datetime, datetime]:
    """Logical dates (interval starts) of the last ``hours`` complete hours before ``now``."""
    end = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return end - timedelta(hours=hours), end - timedelta(hours=1)


def start_demo(stack: Stack, api: AirflowApi, args: argparse.Namespace,
               now: datetime) -> int | None:
    """Backfill the hourly DAG while it is paused and before the scheduler runs, then start
    the scheduler and unpause the DAGs. Returns the backfill's id (None: no backfill).

    A run of a paused DAG is not started, and the scheduler creates none of its own for it:
    the backfill's runs wait, queued. Unpaused, they run oldest first (at most
    ``--backfill-max-active-runs`` at a time), and the scheduler, finding runs for the hours
    up to the last complete one, schedules only the hours after it. Without a running
    scheduler the backfill is created without fighting it for SQLite's one writer.
    """
    dag_ids = list(dict.fromkeys(args.unpause))
    backfill_id = None
    if args.backfill_hours:
        api.wait_for_dag(HOURLY_DAG, stack, timeout=args.start_timeout)
        if not api.is_paused(HOURLY_DAG):  # left unpaused by an earlier start
            api.set_paused(HOURLY_DAG, True)
            print(f"  paused {HOURLY_DAG} until the backfill exists", flush=True)
        first, last = backfill_window(now, args.backfill_hours)
        backfill_id = api.backfill(HOURLY_DAG, first, last,
                                   max_active_runs=args.backfill_max_active_runs)
        print(f"  backfill {backfill_id}: {HOURLY_DAG} {first:%Y-%m-%d %H:%M} .. "
              f"{last:%Y-%m-%d %H:%M} UTC, oldest first", flush=True)
        if HOURLY_DAG in dag_ids:  # its runs first
            dag_ids.remove(HOURLY_DAG)
            dag_ids.insert(0, HOURLY_DAG)
        else:
            print(f"  {HOURLY_DAG} stays paused (not in --unpause): the backfill runs once you "
                  f"unpause it", flush=True)
    stack.start_airflow("scheduler")
    for dag_id in dag_ids:
        api.wait_for_dag(dag_id, stack, timeout=args.start_timeout)
        api.unpause(dag_id)
        print(f"  unpaused {dag_id}", flush=True)
    return backfill_id


class BackfillWatch:
    """Says how far the backfill got (a line when it changes) and when it is done."""

    def __init__(self, api: AirflowApi, backfill_id: int, window: tuple[datetime, datetime]):
        self.api, self.id, self.window = api, backfill_id, window
        self.said: Counter[str] = Counter()

    def states(self) -> Counter[str]:
        return Counter(r["state"] for r in self.api.backfill_runs(HOURLY_DAG, *self.window))

    def check(self) -> Counter[str] | None:
        """The final run states once the backfill has finished, else None."""
        done = self.api.backfill_done(self.id)
        states = self.states()
        if states != self.said:
            self.said = states
            total = sum(states.values())
            finished = states["success"] + states["failed"]
            print(f"  backfill: {finished} of {total} hours done"
                  + "".join(f", {n} {s}" for s, n in sorted(states.items()) if s != "success"),
                  flush=True)
        return states if done else None


def serve(stack: Stack, args: argparse.Namespace) -> int:
    a = args
    py = sys.executable
    print("promptops: starting the local stack", flush=True)
    stack.start("simulator", [py, "-m", "promptops.simulator", "serve", "--host", LOOPBACK,
                              "--port", str(a.simulator_port), "--scenario", a.scenario,
                              "--api-key", a.api_key, *a.simulator_arg])
    stack.start("slack-sink", [py, "-m", "promptops.simulator", "slack-sink",
                               "--host", LOOPBACK, "--port", str(a.slack_port)])
    stack.run_step("db-migrate", [str(VENV_BIN / "airflow"), "db", "migrate"],
                   "airflow db migrate", a.start_timeout,
                   hint="If an earlier start was aborted while creating the database, start "
                        "from scratch: ./run.sh --clean")
    stack.start_airflow("api-server", "dag-processor", "triggerer")
    slow = "raise --start-timeout on a slow machine"
    wait_for(f"http://{LOOPBACK}:{a.simulator_port}/health", stack, a.start_timeout,
             "the simulator", slow)
    wait_for(f"http://{LOOPBACK}:{a.slack_port}/health", stack, a.start_timeout,
             "the Slack sink", slow)
    wait_for(f"{stack.base}/api/v2/monitor/health", stack, a.start_timeout,
             "Airflow's API server", f"{slow}; see {stack.log_of('api-server')}")
    password = admin_password(stack.home, timeout=a.start_timeout)
    print(f"\n  Airflow's UI answers at {stack.base}: log in as admin / {password}\n", flush=True)
    api = AirflowApi(stack.base, password, timeout=a.api_timeout, retry_s=a.api_retry,
                     hint=f"the machine may be too busy: raise --api-timeout / --api-retry; "
                          f"see {stack.log_of('api-server')}")
    now = datetime.now(UTC)
    backfill_id = start_demo(stack, api, a, now)
    poll("the scheduler, DAG processor and triggerer to heartbeat",
         lambda: True if not api.components_healthy() else None,
         timeout=a.start_timeout, stack=stack, hint="see their logs")
    print(f"\nAirflow UI: {stack.base}  (login: admin / {password})")
    print(f"Platform simulator: http://{LOOPBACK}:{a.simulator_port}   "
          f"Slack sink messages: http://{LOOPBACK}:{a.slack_port}/messages")
    print(f"Logs: each component's output in {stack.logs}/<name>.log; task logs in the UI. "
          f"A task log that stops early (\"Pre Execute\" only) means the task's process died: "
          f"see {stack.log_of('scheduler')}.")
    print("Press Ctrl-C to stop everything.\n", flush=True)
    watch = (BackfillWatch(api, backfill_id, backfill_window(now, a.backfill_hours))
             if backfill_id is not None else None)
    while True:
        stack.check_alive()
        if watch is not None and (states := watch.check()) is not None:
            print(f"backfill finished: {dict(states)}", flush=True)
            if states["failed"]:
                print(f"  the failed hours' task logs are in the UI; one that stops early "
                      f"(\"Pre Execute\" only) lost its process: see "
                      f"{stack.log_of('scheduler')}", flush=True)
            watch = None
            if a.exit_when_backfilled:
                return 0 if not states["failed"] else 1
        time.sleep(5)


def interrupt_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt once, so the caller's ``finally`` stops
    the stack. Explicit for SIGINT too: a launcher that ignores it (a background job) would
    otherwise leave Ctrl-C ignored in this process."""
    stopping = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    try:
        if args.clean:
            clean(args)
        preflight(args)
    except StackError as exc:
        print(f"promptops: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    stack = Stack(args)
    stack.record()
    try:
        return serve(stack, args)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    except ComponentDied as exc:
        print(f"\npromptops: {exc}\nStopping everything. Start again with ./run.sh "
              f"(./run.sh --clean starts from scratch).", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - report, then stop everything
        print(f"\npromptops: {exc}\nStopping everything; the logs are in {stack.logs}.",
              file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        stack.forget()


if __name__ == "__main__":
    sys.exit(main())
