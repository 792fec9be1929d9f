#!/usr/bin/env bash
# Runs promptops locally: platform simulator, Slack sink and Airflow (SQLite), backfills the
# last 24 hours in order and unpauses the DAGs. Ctrl-C stops everything. Options: --help.
set -euo pipefail
cd "$(dirname "$0")"
for arg in "$@"; do
  case "$arg" in
    -h|--help)
      # The options need no dependencies: no .venv is created just to print them.
      py=.venv/bin/python
      [ -x "$py" ] || py=python3
      exec "$py" scripts/dev_stack_args.py --help ;;
  esac
done
scripts/bootstrap.sh
exec .venv/bin/python scripts/dev_stack.py "$@"
