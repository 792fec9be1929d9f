"""The options of ``./run.sh`` (scripts/dev_stack.py).

Standard library only, and no syntax newer than Python 3.8: ``./run.sh --help`` runs this
file with whatever ``python3`` the machine has, before (and without) creating ``.venv``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOURLY_DAG = "promptops_hourly"
PROMPTOPS_DAGS = (HOURLY_DAG, "promptops_daily", "promptops_health", "promptops_heal",
                  "promptops_push")

DESCRIPTION = """\
Run promptops locally: the platform simulator, a Slack-compatible sink and Airflow
(SQLite, LocalExecutor; scheduler, DAG processor, triggerer and API server as processes
of this command, bound to 127.0.0.1). Once Airflow's UI answers, the login is printed;
the last hours of promptops_hourly are backfilled oldest first while the DAG is still
paused, then the promptops DAGs are unpaused. Incidents of the demo scenario reach the
Slack sink as the backfill passes them. Ctrl-C stops every process it started."""

EPILOG = """\
After an aborted start, run again: a stale pid file is removed and what still stands in
the way (a process holding a port, a half-created database) is named with what to do;
--clean starts from scratch. Logs: every component's output is in
<home>/logs-dev-stack/<component>.log; task logs are in the UI (files under <home>/logs)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="./run.sh", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=str(ROOT / "airflow_home"),
                   help="AIRFLOW_HOME for this stack: SQLite database, logs (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address Airflow's API server listens on (default: %(default)s; "
                        "0.0.0.0 opens the UI to the network)")
    p.add_argument("--airflow-port", type=int, default=8080, help="default: %(default)s")
    p.add_argument("--simulator-port", type=int, default=8700, help="default: %(default)s")
    p.add_argument("--slack-port", type=int, default=8701, help="default: %(default)s")
    p.add_argument("--scenario", default=str(ROOT / "include/config/scenarios/demo.yaml"),
                   help="the simulator's scenario (default: the demo's incidents)")
    p.add_argument("--api-key", default=os.environ.get("PROMPT_API_KEY", "dev-key"),
                   help="key the simulator accepts (a local, non-secret default)")
    p.add_argument("--backfill-hours", type=int, default=24,
                   help="hours of promptops_hourly to backfill at start, up to the last complete "
                        "hour (0: none; default: %(default)s)")
    p.add_argument("--backfill-max-active-runs", type=int, default=1, metavar="N",
                   help="backfill runs at a time; 1 (the default) evaluates the hours in "
                        "order, as the alert engine expects")
    p.add_argument("--unpause", nargs="*", default=list(PROMPTOPS_DAGS), metavar="DAG_ID",
                   help="DAGs to unpause (default: every promptops DAG)")
    p.add_argument("--simulator-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the simulator, e.g. --simulator-arg=--now="
                        "2026-11-20T10:00:00Z (repeatable)")
    p.add_argument("--start-timeout", type=float, default=900, metavar="SECONDS",
                   help="how long to wait for the database migration, Airflow's API and the "
                        "DAGs to be parsed (default: %(default).0f; raise it on a slow machine)")
    p.add_argument("--api-timeout", type=float, default=60, metavar="SECONDS",
                   help="read timeout of one call to Airflow's REST API (default: %(default).0f)")
    p.add_argument("--api-retry", type=float, default=900, metavar="SECONDS",
                   help="how long calls to Airflow's REST API are retried after a timeout or "
                        "a 5xx (SQLite busy) answer (default: %(default).0f)")
    p.add_argument("--clean", action="store_true",
                   help="start from scratch: stop what an earlier start of this stack left "
                        "running, delete the Airflow home (database, logs) and the demo's "
                        "lake and state under data/")
    p.add_argument("--exit-when-backfilled", action="store_true",
                   help="stop once the backfill has finished (for tests)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name in ("start_timeout", "api_timeout", "api_retry"):
        if getattr(args, name) <= 0:
            build_parser().error(f"--{name.replace('_', '-')} must be a positive number of "
                                 f"seconds")
    if args.backfill_hours < 0 or args.backfill_max_active_runs < 1:
        build_parser().error("--backfill-hours must be 0 or more and "
                             "--backfill-max-active-runs 1 or more")
    return args


if __name__ == "__main__":
    parse_args()
