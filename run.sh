#!/usr/bin/env bash
# Runs promptops locally: platform simulator, Slack sink and Airflow standalone (SQLite),
# unpauses the DAGs and backfills the last 24 hours. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/python scripts/dev_stack.py "$@"
