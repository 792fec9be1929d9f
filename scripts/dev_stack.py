"""Start the local promptops stack: platform simulator, Slack sink, Airflow standalone.

Used by ``./run.sh``. Airflow runs on SQLite with the LocalExecutor under a project-local
``AIRFLOW_HOME`` (``airflow_home/``), with this project's dags/ and plugins/, examples off
and the connections set through ``AIRFLOW_CONN_*`` environment variables. Once the API
server answers, the promptops DAGs are unpaused and the last hours are backfilled so the UI
has runs to show. Ctrl-C (or SIGTERM) stops every process this script started, the whole
process tree of each, and checks that none is left.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import requests
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PROMPTOPS_DAGS = ("promptops_hourly", "promptops_daily", "promptops_health", "promptops_heal",
                  "promptops_push")


def stack_env(args: argparse.Namespace) -> dict[str, str]:
    home = Path(args.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    platform = {"conn_type": "http", "host": f"http://127.0.0.1:{args.simulator_port}",
                "password": args.api_key}
    slack = {"conn_type": "slackwebhook",
             "password": f"http://127.0.0.1:{args.slack_port}/services/T0000/B0000/local"}
    judge = {"conn_type": "http", "host": f"http://127.0.0.1:{args.simulator_port}",
             "password": args.api_key}
    env = dict(os.environ)
    env.update({
        # airflow standalone launches `airflow ...` sub-commands from PATH.
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__PORT": str(args.airflow_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{args.airflow_port}",
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
        "PROMPTOPS_LAKE_URI": env.get("PROMPTOPS_LAKE_URI", f"file://{ROOT / 'data' / 'lake'}"),
        "PROMPTOPS_STATE_DIR": env.get("PROMPTOPS_STATE_DIR", str(ROOT / "data" / "state")),
    })
    return env


class Stack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = stack_env(args)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.logs = Path(args.home).resolve() / "logs-dev-stack"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))
        print(f"  started {name} (pid {proc.pid}, log {self.logs / (name + '.log')})")
        return proc

    def stop(self) -> None:
        """Terminate every started process and all of its descendants, then verify."""
        victims: list[psutil.Process] = []
        for _, proc in self.procs:
            try:
                parent = psutil.Process(proc.pid)
                victims.extend(parent.children(recursive=True))
                victims.append(parent)
            except psutil.NoSuchProcess:
                pass
        alive = victims
        for action, grace in (("terminate", 15), ("kill", 5)):
            for p in alive:
                try:
                    getattr(p, action)()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(alive, timeout=grace)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        left = [p.pid for p in alive if p.is_running()]
        print("stopped everything." if not left else f"could not stop pids {left}")

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; "
                                   f"see {self.logs / (name + '.log')}")


def wait_for(url: str, stack: Stack, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")


def admin_password(home: str) -> str:
    path = Path(home).resolve() / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(1)
    return json.loads(path.read_text())["admin"]


class AirflowApi:
    def __init__(self, base: str, password: str) -> None:
        self.base = base
        token = requests.post(f"{base}/auth/token", json={"username": "admin", "password": password},
                              timeout=10)
        token.raise_for_status()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    def wait_for_dag(self, dag_id: str, stack: Stack, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stack.check_alive()
            if self.session.get(f"{self.base}/api/v2/dags/{dag_id}", timeout=10).ok:
                return
            time.sleep(2)
        raise RuntimeError(f"DAG {dag_id} was not parsed within {timeout:.0f} s; "
                           f"check `airflow dags list-import-errors`")

    @staticmethod
    def _busy(exc: BaseException) -> bool:
        # SQLite allows one writer: while the scheduler creates runs the API can answer 503.
        resp = getattr(exc, "response", None)
        return resp is not None and resp.status_code >= 500

    @retry(retry=retry_if_exception(_busy.__func__), stop=stop_after_delay(90),
           wait=wait_exponential(multiplier=0.5, max=10), reraise=True)
    def unpause(self, dag_id: str) -> None:
        self.session.patch(f"{self.base}/api/v2/dags/{dag_id}", json={"is_paused": False},
                           timeout=10).raise_for_status()

    @retry(retry=retry_if_exception(_busy.__func__), stop=stop_after_delay(90),
           wait=wait_exponential(multiplier=0.5, max=10), reraise=True)
    def backfill(self, dag_id: str, start: datetime, end: datetime) -> int:
        resp = self.session.post(f"{self.base}/api/v2/backfills", timeout=30, json={
            "dag_id": dag_id, "from_date": start.isoformat(), "to_date": end.isoformat(),
            "max_active_runs": 2, "reprocess_behavior": "failed", "run_backwards": False})
        resp.raise_for_status()
        return resp.json()["id"]

    def run_states(self, dag_id: str) -> dict[str, int]:
        resp = self.session.get(f"{self.base}/api/v2/dags/{dag_id}/dagRuns",
                                params={"limit": 100}, timeout=10)
        resp.raise_for_status()
        counts: dict[str, int] = {}
        for run in resp.json()["dag_runs"]:
            counts[run["state"]] = counts.get(run["state"], 0) + 1
        return counts


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(ROOT / "airflow_home"),
                        help="AIRFLOW_HOME for this stack (SQLite database, logs)")
    parser.add_argument("--airflow-port", type=int, default=8080)
    parser.add_argument("--simulator-port", type=int, default=8700)
    parser.add_argument("--slack-port", type=int, default=8701)
    parser.add_argument("--scenario", default=str(ROOT / "include/config/scenarios/demo.yaml"))
    parser.add_argument("--api-key", default=os.environ.get("PROMPT_API_KEY", "dev-key"),
                        help="key the simulator accepts (a local, non-secret default)")
    parser.add_argument("--backfill-hours", type=int, default=24,
                        help="hours to backfill at start (0: none)")
    parser.add_argument("--exit-when-backfilled", action="store_true",
                        help="stop once the backfill's runs have finished (for tests)")
    parser.add_argument("--unpause", nargs="*", default=list(PROMPTOPS_DAGS), metavar="DAG_ID",
                        help="DAGs to unpause (default: every promptops DAG)")
    parser.add_argument("--simulator-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for the simulator, e.g. --simulator-arg=--now="
                             "2026-11-20T10:00:00Z (repeatable)")
    args = parser.parse_args()

    stack = Stack(args)
    interrupt_on_signals()
    py = sys.executable
    try:
        print("promptops: starting the local stack")
        stack.start("simulator", [py, "-m", "promptops.simulator", "serve", "--host", "127.0.0.1",
                                  "--port", str(args.simulator_port), "--scenario", args.scenario,
                                  "--api-key", args.api_key, *args.simulator_arg])
        stack.start("slack-sink", [py, "-m", "promptops.simulator", "slack-sink",
                                   "--host", "127.0.0.1", "--port", str(args.slack_port)])
        stack.start("airflow", [str(VENV_BIN / "airflow"), "standalone"])
        wait_for(f"http://127.0.0.1:{args.simulator_port}/health", stack, 60, "the simulator")
        wait_for(f"http://127.0.0.1:{args.slack_port}/health", stack, 60, "the Slack sink")
        base = f"http://127.0.0.1:{args.airflow_port}"
        wait_for(f"{base}/api/v2/monitor/health", stack, 300, "Airflow's API server")
        password = admin_password(args.home)
        api = AirflowApi(base, password)
        for dag_id in args.unpause:
            api.wait_for_dag(dag_id, stack)
            api.unpause(dag_id)
            print(f"  unpaused {dag_id}")
        if args.backfill_hours:
            end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            # Logical dates are interval starts. The last complete hour (end - 1h) is the
            # scheduler's own run once the DAG is unpaused: a backfill run for the same date
            # races it for the same row (and can take the scheduler down), so stop one short.
            start = end - timedelta(hours=args.backfill_hours)
            last = end - timedelta(hours=2)
            if last >= start:
                backfill_id = api.backfill("promptops_hourly", start, last)
                print(f"  backfill {backfill_id}: promptops_hourly {start:%Y-%m-%d %H:%M} .. "
                      f"{last:%H:%M} UTC (+ the scheduler's run for {last + timedelta(hours=1):%H:%M})")
        print(f"\nAirflow UI: {base}  (login: admin / {password})")
        print(f"Platform simulator: http://127.0.0.1:{args.simulator_port}   "
              f"Slack sink messages: http://127.0.0.1:{args.slack_port}/messages")
        print("Press Ctrl-C to stop everything.\n")
        while True:
            stack.check_alive()
            if args.exit_when_backfilled and args.backfill_hours:
                states = api.run_states("promptops_hourly")
                done = states.get("success", 0) + states.get("failed", 0)
                if done >= args.backfill_hours and not states.get("running") \
                        and not states.get("queued"):
                    print(f"backfill finished: {states}")
                    return 0 if not states.get("failed") else 1
            time.sleep(5)
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    except Exception as exc:  # noqa: BLE001 - report, then stop everything
        print(f"promptops: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
