"""The production shape, for real: scripts/distributed_stack.py --check runs the DAGs under
the CeleryExecutor (two workers, one of them on the gpu queue), with a fresh Postgres
metadata database, a Redis broker and the lake on an S3 endpoint (moto's server, owned by
this test so the bucket can be inspected after the stack is gone)."""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta

import boto3
import psycopg2
import pyarrow.parquet as pq
import pytest
import redis

from tests.helpers import ROOT
from tests.helpers.s3 import moto_server
from tests.helpers.stack import processes_using

SCRIPT = ROOT / "scripts" / "distributed_stack.py"
BUCKET, PREFIX = "promptops-lake", "lake"
WORKERS = {"worker-a", "worker-b"}


@pytest.fixture
def moto_s3():
    with moto_server() as endpoint:
        yield endpoint, boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                     aws_access_key_id="testing",
                                     aws_secret_access_key="testing")


def require_services() -> None:
    """Postgres and Redis are part of what is tested: their absence is a failure (.ci/run
    starts them)."""
    psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres",
                     connect_timeout=5).close()
    redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5).ping()


def database_exists(name: str) -> bool:
    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres",
                            connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()



def keys(client, prefix: str) -> list[str]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def read_parquet(client, key: str):
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body))


def partition(dataset: str, hour: datetime) -> str:
    return f"{PREFIX}/{dataset}/date={hour:%Y-%m-%d}/hour={hour:%H}/part-00000.parquet"


def mapped_windows() -> bool:
    """The hourly DAG splits its pull into mapped windows (``pull_window``)."""
    return "def pull_window" in (ROOT / "dags" / "promptops_hourly.py").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dags_run_distributed_on_celery_postgres_redis_and_s3(tmp_path, moto_s3):
    require_services()
    endpoint, s3 = moto_s3
    home, report_file = tmp_path / "home", tmp_path / "report.json"
    db_name = f"promptops_dist_test_{secrets.token_hex(4)}"
    api_key = f"dist-test-key-{secrets.token_hex(8)}"
    window_minutes = 15 if mapped_windows() else 60
    env = dict(os.environ, PROMPT_API_KEY=api_key,
               PROMPTOPS_INGEST_WINDOW_MINUTES=str(window_minutes))
    out_file = tmp_path / "distributed_stack.out"
    cmd = [sys.executable, str(SCRIPT), "--check", "--home", str(home),
           "--report", str(report_file), "--s3-endpoint", endpoint, "--db-name", db_name,
           # A Redis DB of its own, so a concurrent stack's broker is not flushed.
           "--redis-db", str(8 + secrets.randbelow(8)), "--backfill-hours", "3"]
    with open(out_file, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=1380)
        finally:
            if proc.poll() is None:  # the script stops what it started on SIGTERM
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    output = out_file.read_text(errors="replace")
    assert rc == 0, output[-6000:]
    report = json.loads(report_file.read_text())
    assert report["problems"] == []
    assert report["database"] == db_name

    # Every run succeeded: the 3 backfilled hours, the scheduler's own hour, heal, health.
    runs = report["runs"]
    for dag_id, dag_runs in runs.items():
        assert dag_runs and {r["state"] for r in dag_runs} == {"success"}, (dag_id, dag_runs)
    backfilled = sorted(r["data_interval_start"] for r in runs["promptops_hourly"]
                        if r["run_type"] == "backfill")
    assert len(backfilled) == 3
    hours = [datetime.fromisoformat(h.replace("Z", "+00:00")) for h in backfilled]
    assert [h - hours[0] for h in hours] == [timedelta(hours=i) for i in range(3)]
    assert any(r["run_type"] == "scheduled" for r in runs["promptops_hourly"])
    assert report["heal_run"] in {r["dag_run_id"] for r in runs["promptops_heal"]}
    assert report["health_run"] in {r["dag_run_id"] for r in runs["promptops_health"]}

    # Task instances ran on both workers and nowhere else; the GPU task on the gpu worker.
    tis = report["task_instances"]
    ran = [ti for ti in tis if ti["hostname"]]
    hosts = Counter(ti["hostname"] for ti in ran)
    assert set(hosts) == WORKERS, hosts
    gpu = [ti for ti in tis if ti["task_id"] == "gpu_metrics"]
    assert gpu and all(ti["hostname"] == "worker-b" and ti["queue"] == "gpu" for ti in gpu), gpu
    if window_minutes < 60:
        # Each run pulls its hour and the late-record hour before it, in 15-minute windows.
        by_run: dict[str, dict[int, str]] = {}
        for ti in tis:
            if ti["task_id"] == "pull_window":
                by_run.setdefault(ti["dag_run_id"], {})[ti["map_index"]] = ti["hostname"]
        assert by_run and all(sorted(ix) == list(range(8)) for ix in by_run.values()), by_run
        assert any(set(ix.values()) == WORKERS for ix in by_run.values()), by_run

    # The lake is in the S3 bucket, read back here after the stack is gone.
    all_keys = set(keys(s3, f"{PREFIX}/"))
    for hour in hours:
        for h in (hour - timedelta(hours=1), hour):  # its own hour and the late-record hour
            assert partition("calls", h) in all_keys, h
            assert partition("metrics", h) in all_keys, h
        calls = read_parquet(s3, partition("calls", hour))
        assert calls.num_rows > 0
        assert len(calls.column("call_id").unique()) == calls.num_rows
    assert not [k for k in all_keys if k.startswith(f"{PREFIX}/staging_")], \
        "merge_windows left staged windows behind"
    in_order = [e for e in report["hourly_evaluations"] if e["replay"] != "older"]
    assert in_order, report["hourly_evaluations"]
    for evaluation in in_order:
        at = datetime.fromisoformat(evaluation["evaluated_at"].replace("Z", "+00:00"))
        folder = partition("alert_log/scope=hourly", at).rsplit("/", 1)[0]  # a file per evaluation
        assert f"{folder}/evaluation-{at:%Y%m%dT%H%M%S.%fZ}.parquet" in all_keys, evaluation
    assert any(k.startswith(f"{PREFIX}/alert_log/scope=health/") for k in all_keys)
    assert any(k.startswith(f"{PREFIX}/health_metrics/") for k in all_keys)
    audit_keys = [k for k in all_keys if k.startswith(f"{PREFIX}/heal_audit/")]
    audit = [row for k in audit_keys for row in read_parquet(s3, k).to_pylist()]
    mine = [row for row in audit if row["run_id"] == report["heal_run"]]
    assert mine and all(row["action"] == "rate_limit" and row["target"] == "user-042"
                        and row["dry_run"] is False and row["decision"] == "auto_approved"
                        for row in mine), mine

    # Task logs went to S3 too, and the UI's API read one back from there.
    log_keys = keys(s3, "airflow-logs/")
    assert {k.split("/")[1] for k in log_keys} >= {
        "dag_id=promptops_hourly", "dag_id=promptops_health", "dag_id=promptops_heal"}
    served = report["gpu_task_log_via_api"]["head"]
    assert f"s3://{BUCKET}/airflow-logs/dag_id=promptops_health/" in served, served[:1000]
    assert "gpu_metrics" in served

    # The platform's API key reached no log: the script's output, the processes' logs,
    # the task logs in S3.
    assert api_key not in output
    for log in (home / "stack-logs").glob("*.log"):
        assert api_key not in log.read_text(errors="replace"), log
    for key in log_keys:
        assert api_key.encode() not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    # Everything stopped, and the database is gone.
    assert processes_using(home) == []
    assert not database_exists(db_name)
