"""Run promptops in its production shape on one machine: Celery, Postgres, Redis and S3.

Every Airflow component is a process of its own, as on separate machines: the API server,
the scheduler, the DAG processor, the triggerer and two Celery workers (``worker-a`` serves
the ``default`` queue, ``worker-b`` also the ``gpu`` queue of the health DAG's GPU task).
The metadata database is a fresh Postgres database (dropped at the end unless ``--keep``),
the broker a Redis DB of its own (flushed at start and end), the lake
``s3://aws_default@promptops-lake/lake`` on moto's S3 server (or ``--s3-endpoint``) through
the Airflow connection ``aws_default``, and task logs go to the same bucket (remote logging,
read back by the API server). Each Airflow process
has its own ``PROMPTOPS_STATE_DIR`` and log folder, so nothing can lean on a shared local
disk; the two workers report the host names ``worker-a`` / ``worker-b`` (they stand in for
two machines). The platform simulator and the Slack sink run as in ``dev_stack.py``.

Without ``--check`` the stack runs until Ctrl-C (the UI address and login are printed).
With ``--check`` it backfills a few hours of ``promptops_hourly``, triggers
``promptops_heal`` and ``promptops_health`` once, waits for every run, prints a summary (run
states, task instances per worker, S3 objects per dataset) and exits non-zero if anything
failed. Either way it stops every process it started and drops the database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_stack import (  # noqa: E402
    ROOT,
    VENV_BIN,
    AirflowApi,
    Stack,
    admin_password,
    interrupt_on_signals,
    wait_for,
)

SCRIPTS = Path(__file__).resolve().parent
CHECK_DAGS = ("promptops_hourly", "promptops_heal", "promptops_health")
WORKERS = {"worker-a": "default", "worker-b": "default,gpu"}
GPU_WORKER = "worker-b"
#: Datasets the check expects in the lake (``alert_log`` is per scope).
EXPECTED_DATASETS = ("calls", "metrics", "alert_log", "health_metrics", "heal_audit")
HEAL_CONF = {"action": "rate_limit", "target": "user-042", "dry_run": False,
             "reason": "distributed check"}
MARKER = "PROMPTOPS_DIST_STACK"


def worker_hostname() -> str:
    """``[core] hostname_callable`` of this stack's workers: the name each worker is given
    (two workers on one machine would otherwise record the same host name)."""
    return os.environ.get("PROMPTOPS_WORKER_HOSTNAME") or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LakeUri:
    """``s3://[conn_id@]bucket/prefix``. The conn id in the user part is how Airflow 3.3's
    ``ObjectStoragePath`` picks a connection; without it boto3's default chain is used."""

    conn_id: str | None
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> LakeUri:
        if not uri.startswith("s3://"):
            raise ValueError(f"--lake-uri {uri!r}: this stack's lake is on S3 (s3://...)")
        rest = uri[len("s3://"):]
        conn_id, _, rest = rest.rpartition("@")
        bucket, _, prefix = rest.partition("/")
        return cls(conn_id or None, bucket, prefix.strip("/"))


class Postgres:
    """A database of its own on the given server (trust auth, or libpq's PGPASSWORD)."""

    def __init__(self, host: str, port: int, user: str, name: str) -> None:
        self.host, self.port, self.user, self.name = host, port, user, name

    @property
    def sqlalchemy_url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{self.name}"

    def _admin(self):
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                dbname="postgres", connect_timeout=10)
        conn.autocommit = True
        return conn

    def create(self) -> None:
        from psycopg2 import sql

        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        finally:
            conn.close()

    def drop(self) -> None:
        from psycopg2 import sql

        conn = self._admin()
        try:
            with conn.cursor() as cur:
                # FORCE: a process that did not die cleanly must not keep the database alive.
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self.name)))
        finally:
            conn.close()


class DistributedStack(Stack):
    """The processes, their environments, the database and the bucket; ``stop()`` undoes
    all of it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.own_home = args.home is None
        if self.own_home:
            args.home = tempfile.mkdtemp(prefix="promptops-dist-")
        for name in ("airflow_port", "simulator_port", "slack_port", "moto_port"):
            if not getattr(args, name):
                setattr(args, name, free_port())
        if not args.api_key:
            args.api_key = secrets.token_urlsafe(16)
        super().__init__(args)  # dev_stack's env: dags, plugins, platform/Slack connections
        self.home = Path(args.home).resolve()
        with contextlib.suppress(OSError):  # dev_stack's folder; this stack logs to its own
            self.logs.rmdir()
        self.logs = self.home / "stack-logs"
        self.logs.mkdir(exist_ok=True)
        self.id = secrets.token_hex(4)
        self.db = Postgres(args.pg_host, args.pg_port, args.pg_user,
                           args.db_name or f"promptops_dist_{self.id}")
        self.db_created = False
        self.lake = LakeUri.parse(args.lake_uri)
        self.s3_endpoint = args.s3_endpoint or f"http://127.0.0.1:{args.moto_port}"
        self.base = f"http://127.0.0.1:{args.airflow_port}"
        self.env.update(self._airflow_env())

    # -- environment ----------------------------------------------------------------------

    def _airflow_env(self) -> dict[str, str]:
        from cryptography.fernet import Fernet

        a = self.args
        aws = {"conn_type": "aws", "login": a.s3_key_id, "password": a.s3_secret,
               "extra": {"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"}}
        env = {
            MARKER: self.id,  # lets stop() find a straggler that left the process tree
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.db.sqlalchemy_url,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{a.redis_host}:{a.redis_port}/{a.redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.db.sqlalchemy_url}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(a.concurrency),
            # One set of secrets shared by every process: the scheduler signs the workers'
            # task tokens and the API server checks them.
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(a.airflow_port),
            "AIRFLOW__API__BASE_URL": self.base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            # Other stacks on this machine use the default log-server ports.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
            "PROMPTOPS_LAKE_URI": a.lake_uri,
            "PROMPTOPS_GPU_QUEUE": "gpu",
        }
        if a.remote_logs:
            env.update({
                "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
                "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{self.lake.bucket}/airflow-logs",
                "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "aws_default",
            })
        return env

    def process_env(self, name: str) -> dict[str, str]:
        """One process's environment: its own state dir and log folder (no shared disk)."""
        env = dict(self.env)
        env.pop("PROMPT_API_KEY", None)  # only the simulator's; Airflow has the connection
        env["PROMPTOPS_STATE_DIR"] = str(self.home / "state" / name)
        env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(self.home / "logs" / name)
        if name in WORKERS:
            env["PROMPTOPS_WORKER_HOSTNAME"] = name
            env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] = f"{Path(__file__).stem}.worker_hostname"
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(SCRIPTS), env.get("PYTHONPATH", "")) if p)
        return env

    # -- processes ------------------------------------------------------------------------

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(cmd, env=env or self.process_env(name), cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        print(f"  started {name} (pid {proc.pid}, log {self.logs / (name + '.log')})")
        return proc

    def up(self) -> None:
        """Services, database, bucket, migration, then the Airflow components."""
        a, py, airflow = self.args, sys.executable, str(VENV_BIN / "airflow")
        self._check_services()
        self.db.create()
        self.db_created = True
        print(f"  created database {self.db.name}; flushed Redis DB {a.redis_db}")
        if not a.s3_endpoint:
            self.start("moto", [py, "-m", "moto.server", "-H", "127.0.0.1",
                                "-p", str(a.moto_port)])
            wait_for(f"{self.s3_endpoint}/moto-api/", self, 90, "moto's S3 server")
        self._create_bucket()
        sim_env = dict(self.process_env("simulator"), PROMPT_API_KEY=a.api_key)
        self.start("simulator", [py, "-m", "promptops.simulator", "serve", "--host", "127.0.0.1",
                                 "--port", str(a.simulator_port), "--scenario", a.scenario,
                                 "--calls-per-hour", str(a.calls_per_hour)], env=sim_env)
        self.start("slack-sink", [py, "-m", "promptops.simulator", "slack-sink",
                                  "--host", "127.0.0.1", "--port", str(a.slack_port)])
        self._migrate(airflow)
        self.start("api-server", [airflow, "api-server"])
        self.start("scheduler", [airflow, "scheduler"])
        self.start("dag-processor", [airflow, "dag-processor"])
        self.start("triggerer", [airflow, "triggerer"])
        for name, queues in WORKERS.items():
            # Task logs go to S3; the workers' log servers could not be reached under their
            # stand-in host names anyway.
            self.start(name, [airflow, "celery", "worker", "--queues", queues,
                              "--celery-hostname", f"{name}@%h",
                              "--concurrency", str(a.concurrency), "--skip-serve-logs"])
        wait_for(f"http://127.0.0.1:{a.simulator_port}/health", self, 60, "the simulator")
        wait_for(f"http://127.0.0.1:{a.slack_port}/health", self, 60, "the Slack sink")
        wait_for(f"{self.base}/api/v2/monitor/health", self, 300, "Airflow's API server")
        for name in WORKERS:
            self._wait_worker_ready(name, timeout=300)

    def _check_services(self) -> None:
        import psycopg2
        import redis

        a = self.args
        try:
            psycopg2.connect(host=a.pg_host, port=a.pg_port, user=a.pg_user, dbname="postgres",
                             connect_timeout=5).close()
        except psycopg2.OperationalError as exc:
            raise RuntimeError(f"Postgres at {a.pg_host}:{a.pg_port} is not reachable "
                               f"(start it, see .ci/run): {str(exc).strip()}") from None
        try:
            self._redis().flushdb()
        except redis.RedisError as exc:
            raise RuntimeError(f"Redis at {a.redis_host}:{a.redis_port} is not reachable "
                               f"(start it, see .ci/run): {exc}") from None

    def _redis(self):
        import redis

        a = self.args
        return redis.Redis(host=a.redis_host, port=a.redis_port, db=a.redis_db, socket_timeout=5)

    def s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id=self.args.s3_key_id,
                            aws_secret_access_key=self.args.s3_secret)

    def _create_bucket(self) -> None:
        s3 = self.s3_client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if self.lake.bucket not in existing:
            s3.create_bucket(Bucket=self.lake.bucket)
        print(f"  lake {self.args.lake_uri} on {self.s3_endpoint}")

    def _migrate(self, airflow: str) -> None:
        print("  airflow db migrate ...")
        with open(self.logs / "db-migrate.log", "ab") as log:
            proc = subprocess.run([airflow, "db", "migrate"], env=self.process_env("migrate"),
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=600,
                                  check=False)
        if proc.returncode:
            raise RuntimeError(f"airflow db migrate failed ({proc.returncode}); see "
                               f"{self.logs / 'db-migrate.log'}")

    def _wait_worker_ready(self, name: str, timeout: float) -> None:
        log, deadline = self.logs / f"{name}.log", time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if f"{name}@" in (text := log.read_text(errors="replace")) and " ready." in text:
                return
            time.sleep(2)
        raise RuntimeError(f"Celery worker {name} was not ready within {timeout:.0f} s; see {log}")

    def stop(self, keep_logs: bool = False) -> None:
        """Every process and its descendants, any straggler carrying this stack's marker,
        then the database (unless --keep) and a temporary home (kept after a failure, for
        its logs)."""
        try:
            super().stop()
            self._sweep_stragglers()
        finally:
            if self.db_created and not self.args.keep:
                try:
                    self.db.drop()
                    self._redis().flushdb()
                    print(f"dropped database {self.db.name}; flushed Redis DB "
                          f"{self.args.redis_db}")
                except Exception as exc:  # noqa: BLE001 - say so; the processes are gone
                    print(f"could not drop database {self.db.name} or flush Redis: {exc}",
                          file=sys.stderr)
            if self.own_home and not self.args.keep and not keep_logs:
                shutil.rmtree(self.home, ignore_errors=True)
            elif self.own_home:
                print(f"kept {self.home} (logs in {self.logs})")

    def _sweep_stragglers(self) -> None:
        """A process that re-parented itself (daemonised) escapes the tree walk."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid != os.getpid() and proc.environ().get(MARKER) == self.id:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for p in found:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(found, timeout=5)
        if found:
            print(f"killed stragglers {[p.pid for p in found]}")


# -- the REST side ------------------------------------------------------------------------

class CheckApi(AirflowApi):
    """dev_stack's client plus what the check needs."""

    def call(self, method: str, path: str, **kw: Any) -> Any:
        deadline = time.monotonic() + 60
        while True:
            resp = self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kw)
            if resp.status_code < 500 or time.monotonic() > deadline:
                break
            time.sleep(2)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any],
                logical_date: datetime | None = None) -> None:
        self.call("POST", f"/dags/{dag_id}/dagRuns", json={
            "dag_run_id": run_id, "conf": conf,
            "logical_date": logical_date.isoformat() if logical_date else None})

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        doc = self.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                               f"{task_id}/xcomEntries/return_value",
                        params={"deserialize": "true"})
        return doc["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """The log as the UI shows it: the API server has no copy, so it reads S3."""
        resp = self.session.get(
            f"{self.base}/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{task_id}/logs/{try_number}", params={"full_content": "true"},
            headers={"Accept": "application/json"}, timeout=60)
        resp.raise_for_status()
        return json.dumps(resp.json()["content"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._paged(f"/dags/{dag_id}/dagRuns", "dag_runs")

    def task_instances(self, dag_id: str) -> list[dict[str, Any]]:
        return self._paged(f"/dags/{dag_id}/dagRuns/~/taskInstances", "task_instances")

    def _paged(self, path: str, key: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            doc = self.call("GET", path, params={"limit": 100, "offset": len(out)})
            out.extend(doc[key])
            if not doc[key] or len(out) >= doc["total_entries"]:
                return out


ACTIVE = ("queued", "running")


def wait_runs(api: CheckApi, stack: DistributedStack, dag_ids: tuple[str, ...],
              must_have: dict[str, set[str]], timeout: float) -> None:
    """Until every run of ``dag_ids`` has finished and each run id of ``must_have`` exists."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        stack.check_alive()
        runs = {d: api.runs(d) for d in dag_ids}
        active = [f"{d}:{r['dag_run_id']}" for d, rs in runs.items() for r in rs
                  if r["state"] in ACTIVE]
        missing = [f"{d}:{rid}" for d, ids in must_have.items()
                   for rid in ids - {r["dag_run_id"] for r in runs.get(d, [])}]
        if not active and not missing:
            return
        status = ", ".join(f"{d} {dict(Counter(r['state'] for r in rs))}"
                           for d, rs in runs.items())
        if status != last:
            print(f"  waiting: {status}")
            last = status
        time.sleep(5)
    raise RuntimeError(f"runs still unfinished after {timeout:.0f} s: {active or missing}")


def hour_floor_now() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def run_check(stack: DistributedStack, api: CheckApi) -> dict[str, Any]:
    """Backfill, heal, health; then what ran where and what is in the bucket."""
    a = stack.args
    # Logical dates are interval starts; the last complete hour is the scheduler's own run
    # once the DAG is unpaused (a backfill of it would race that run), so stop one short.
    # Taken before the unpause: an hour turning in between then leaves a gap, not a race.
    end = hour_floor_now()
    for dag_id in ("promptops_hourly", "promptops_heal"):
        api.unpause(dag_id)
    heal_run = f"distributed_check_heal_{stack.id}"
    api.trigger("promptops_heal", heal_run, HEAL_CONF)
    first, last = end - timedelta(hours=a.backfill_hours + 1), end - timedelta(hours=2)
    backfill_id = api.backfill("promptops_hourly", first, last)
    print(f"  backfill {backfill_id}: promptops_hourly {first:%Y-%m-%d %H:%M} .. {last:%H:%M} "
          f"UTC (+ the scheduler's run for {end - timedelta(hours=1):%H:%M}); heal {heal_run}")
    wait_runs(api, stack, ("promptops_hourly", "promptops_heal"), {"promptops_heal": {heal_run}},
              a.check_timeout)
    # The health DAG runs every 5 minutes once unpaused: start it after the hourly work so
    # its tight run timeout is not spent queueing behind the backfill.
    api.unpause("promptops_health")
    health_run = f"distributed_check_health_{stack.id}"
    # With a logical date the run gets a data interval (the last complete 5 minutes), which
    # the health tasks measure; a run without one has none.
    api.trigger("promptops_health", health_run, {}, logical_date=datetime.now(UTC))
    wait_runs(api, stack, CHECK_DAGS, {"promptops_health": {health_run}}, a.check_timeout)
    backfilled = [(first + timedelta(hours=i)).isoformat()
                  for i in range(a.backfill_hours)]
    return collect(stack, api, backfilled=backfilled, heal_run=heal_run, health_run=health_run)


def collect(stack: DistributedStack, api: CheckApi, *, backfilled: list[str], heal_run: str,
            health_run: str) -> dict[str, Any]:
    runs = {d: [{k: r.get(k) for k in ("dag_run_id", "state", "run_type", "logical_date",
                                       "data_interval_start", "data_interval_end")}
                for r in api.runs(d)] for d in CHECK_DAGS}
    tis = [{k: ti.get(k) for k in ("dag_id", "dag_run_id", "task_id", "map_index", "state",
                                   "hostname", "queue", "try_number")}
           for d in CHECK_DAGS for ti in api.task_instances(d)]
    s3 = stack.s3_client()
    objects: dict[str, list[str]] = {}
    prefix = f"{stack.lake.prefix}/" if stack.lake.prefix else ""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.lake.bucket,
                                                             Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            parts = rel.split("/")
            dataset = "/".join(parts[:2]) if parts[0] == "alert_log" else parts[0]
            objects.setdefault(dataset, []).append(rel)
    logs = sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=stack.lake.bucket, Prefix="airflow-logs/"))
    # The alert engine ignores an evaluation older than the last one it made (a backfill
    # run that finishes after a newer run): such a run writes no alert log, by design.
    evaluations = [
        {"run_id": r["dag_run_id"], "evaluated_at": r["data_interval_end"],
         "replay": (api.xcom("promptops_hourly", r["dag_run_id"], "evaluate_alerts") or {}
                    ).get("replay")}
        for r in runs["promptops_hourly"] if r["state"] == "success"]
    gpu = next((t for t in tis if t["task_id"] == "gpu_metrics" and t["state"] == "success"),
               None)
    gpu_log = (api.task_log("promptops_health", gpu["dag_run_id"], "gpu_metrics",
                            gpu["try_number"]) if gpu else "")
    report: dict[str, Any] = {
        "database": stack.db.name, "lake_uri": stack.args.lake_uri,
        "s3_endpoint": stack.s3_endpoint, "backfilled_hours": backfilled,
        "heal_run": heal_run, "health_run": health_run,
        "ingest_window_minutes": int(os.environ.get("PROMPTOPS_INGEST_WINDOW_MINUTES", "60")),
        "runs": runs, "task_instances": tis, "s3_objects": objects, "s3_task_logs": logs,
        "hourly_evaluations": evaluations,
        "gpu_task_log_via_api": {"run_id": gpu and gpu["dag_run_id"], "chars": len(gpu_log),
                                 "head": gpu_log[:3000]},
        "remote_logs": stack.args.remote_logs, "log_bucket": stack.lake.bucket,
    }
    report["problems"] = problems(report)
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """What makes the check fail."""
    out = []
    runs, tis = report["runs"], report["task_instances"]
    for dag_id, rs in runs.items():
        for r in rs:
            if r["state"] != "success":
                out.append(f"{dag_id} run {r['dag_run_id']} ended {r['state']}")
    backfilled = {r["data_interval_start"][:19] for r in runs["promptops_hourly"]
                  if r["run_type"] == "backfill" and r["state"] == "success"}
    for hour in report["backfilled_hours"]:
        if hour[:19] not in backfilled:
            out.append(f"no successful backfill run for {hour}")
    for dag_id, run_id in (("promptops_heal", report["heal_run"]),
                           ("promptops_health", report["health_run"])):
        if not any(r["dag_run_id"] == run_id and r["state"] == "success" for r in runs[dag_id]):
            out.append(f"{dag_id} run {run_id} did not succeed")
    ran = [ti for ti in tis if ti["hostname"]]
    hosts = Counter(ti["hostname"] for ti in ran)
    strangers = set(hosts) - set(WORKERS)
    if strangers:
        out.append(f"task instances ran outside the workers: {sorted(strangers)}")
    for name in WORKERS:
        if not hosts.get(name):
            out.append(f"{name} ran no task instance")
    gpu_hosts = {ti["hostname"] for ti in ran if ti["task_id"] == "gpu_metrics"}
    if gpu_hosts != {GPU_WORKER}:
        out.append(f"gpu_metrics ran on {sorted(gpu_hosts)}, not only on {GPU_WORKER}")
    for dataset in EXPECTED_DATASETS:
        if not any(k == dataset or k.startswith(f"{dataset}/")
                   for k in report["s3_objects"]):
            out.append(f"no {dataset}/ objects in the lake")
    for e in report["hourly_evaluations"]:
        at = datetime.fromisoformat(e["evaluated_at"].replace("Z", "+00:00"))
        dataset = "alert_log/scope=hourly"
        if e["replay"] != "older" and not any(
                k.startswith(f"{dataset}/date={at:%Y-%m-%d}/hour={at:%H}/")
                for k in report["s3_objects"].get(dataset, [])):
            out.append(f"no hourly alert log for the evaluation at {e['evaluated_at']}")
    if report["remote_logs"] and f"s3://{report['log_bucket']}/airflow-logs/" not in \
            report["gpu_task_log_via_api"]["head"]:
        out.append("the API server did not read the gpu_metrics task log from S3")
    if report["ingest_window_minutes"] < 60 and not spread_runs(tis):
        out.append("no hourly run had its pull_window map indexes on both workers")
    return out


def spread_runs(tis: list[dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """Hourly runs whose ``pull_window`` map indexes ran on more than one worker."""
    by_run: dict[str, dict[str, list[int]]] = {}
    for ti in tis:
        if ti["task_id"] == "pull_window" and ti["hostname"]:
            by_run.setdefault(ti["dag_run_id"], {}).setdefault(ti["hostname"], []).append(
                ti["map_index"])
    return {run: {h: sorted(ix) for h, ix in hosts.items()}
            for run, hosts in by_run.items() if len(hosts) > 1}


def print_summary(report: dict[str, Any]) -> None:
    print("\n== distributed check ==")
    for dag_id, rs in report["runs"].items():
        print(f"runs {dag_id}: {dict(Counter(r['state'] for r in rs))}")
    ran = [ti for ti in report["task_instances"] if ti["hostname"]]
    print("task instances per worker: "
          + ", ".join(f"{h} {n}" for h, n in sorted(Counter(t["hostname"] for t in ran).items())))
    for dag_id in CHECK_DAGS:
        per = Counter(t["hostname"] for t in ran if t["dag_id"] == dag_id)
        print(f"  {dag_id}: {dict(sorted(per.items()))}")
    print("gpu_metrics ran on: "
          + ", ".join(sorted({t["hostname"] for t in ran if t["task_id"] == "gpu_metrics"})))
    spread = spread_runs(report["task_instances"])
    if spread:
        run, hosts = next(iter(sorted(spread.items())))
        print(f"pull_window spread over workers in {len(spread)} run(s), e.g. {run}: {hosts}")
    print(f"S3 objects under {report['lake_uri']}:")
    for dataset, keys in sorted(report["s3_objects"].items()):
        print(f"  {dataset}: {len(keys)}")
    print(f"task log objects in S3: {report['s3_task_logs']}")
    if report["problems"]:
        print("PROBLEMS:\n" + "\n".join(f"  - {p}" for p in report["problems"]))
    else:
        print("OK: every run succeeded on both workers, the lake is on S3")


# -- command line -------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", help="AIRFLOW_HOME (default: a temporary folder, removed at the "
                                  "end unless --keep)")
    p.add_argument("--check", action="store_true",
                   help="run the distributed check, print a summary, stop; exit 1 on failure")
    p.add_argument("--report", help="write the check's findings as JSON to this file")
    p.add_argument("--keep", action="store_true",
                   help="keep the database (and a temporary home) at the end")
    p.add_argument("--backfill-hours", type=int, default=3,
                   help="hours of promptops_hourly to backfill (plus the scheduler's own run)")
    p.add_argument("--check-timeout", type=float, default=900,
                   help="seconds to wait for each group of runs in --check")
    p.add_argument("--unpause", nargs="*", default=list(CHECK_DAGS), metavar="DAG_ID",
                   help="DAGs to unpause without --check (default: hourly, heal, health)")
    p.add_argument("--concurrency", type=int, default=2, help="task slots per Celery worker")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--db-name", help="database to create (default promptops_dist_<random>)")
    p.add_argument("--redis-host", default="127.0.0.1")
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--redis-db", type=int, default=7, help="Redis DB of the broker (flushed)")
    p.add_argument("--lake-uri", default="s3://aws_default@promptops-lake/lake",
                   help="s3://[conn_id@]bucket/prefix; the bucket is created if missing")
    p.add_argument("--s3-endpoint", help="use this S3 endpoint instead of starting moto")
    p.add_argument("--s3-key-id", default="testing", help="S3 access key id (moto: any)")
    p.add_argument("--s3-secret", default="testing", help="S3 secret key (moto: any)")
    p.add_argument("--no-remote-logs", dest="remote_logs", action="store_false",
                   help="keep task logs on the workers' disks instead of S3")
    p.add_argument("--airflow-port", type=int, help="API server / UI port (default: free)")
    p.add_argument("--simulator-port", type=int)
    p.add_argument("--slack-port", type=int)
    p.add_argument("--moto-port", type=int)
    p.add_argument("--scenario", default=str(ROOT / "include/config/scenarios/quiet.yaml"))
    p.add_argument("--calls-per-hour", type=int, default=3000)
    p.add_argument("--api-key", default=os.environ.get("PROMPT_API_KEY"),
                   help="the simulator's key (default $PROMPT_API_KEY, else random)")
    return p.parse_args(argv)


def serve(stack: DistributedStack, args: argparse.Namespace) -> int:
    """Start everything; then the check, or wait for Ctrl-C."""
    print(f"promptops: starting the distributed stack (home {stack.home})")
    stack.up()
    api = CheckApi(stack.base, admin_password(str(stack.home)))
    for dag_id in CHECK_DAGS:
        api.wait_for_dag(dag_id, stack, timeout=300)
    if args.check:
        report = run_check(stack, api)
        print_summary(report)
        if args.report:
            Path(args.report).write_text(json.dumps(report, indent=2, default=str))
        return 1 if report["problems"] else 0
    for dag_id in args.unpause:
        api.unpause(dag_id)
        print(f"  unpaused {dag_id}")
    if args.backfill_hours and "promptops_hourly" in args.unpause:
        end = hour_floor_now()
        first, last = end - timedelta(hours=args.backfill_hours + 1), end - timedelta(hours=2)
        api.backfill("promptops_hourly", first, last)
        print(f"  backfill promptops_hourly {first:%H:%M} .. {last:%H:%M} UTC")
    print(f"\nAirflow UI: {stack.base}  (login: admin / {admin_password(str(stack.home))})")
    print(f"Lake: {args.lake_uri} on {stack.s3_endpoint}   Slack sink messages: "
          f"http://127.0.0.1:{args.slack_port}/messages")
    print("Press Ctrl-C to stop everything.\n")
    while True:
        stack.check_alive()
        time.sleep(5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = DistributedStack(args)
    interrupt_on_signals()
    rc = 1
    try:
        rc = serve(stack, args)
    except KeyboardInterrupt:
        print("\nstopping...")
        rc = 1 if args.check else 0  # an interrupted check proved nothing
    except Exception as exc:  # noqa: BLE001 - report, then stop everything
        print(f"promptops: {exc}", file=sys.stderr)
    finally:
        stack.stop(keep_logs=rc != 0)
    return rc


if __name__ == "__main__":
    sys.exit(main())
