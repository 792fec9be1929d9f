#!/usr/bin/env bash
# Runs the whole test suite (lint included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh --tests
.venv/bin/ruff check .
.venv/bin/mypy
# Two workers: many tests wait on processes they started. Tests of the shared Airflow stack
# go to one worker together (see tests/conftest.py).
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
