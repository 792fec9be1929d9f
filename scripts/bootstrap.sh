#!/usr/bin/env bash
# Creates or refreshes the project's virtual environment (.venv) with uv.
# Re-installs only when requirements*.txt or pyproject.toml changed since the last install.
# --tests also makes .venv-litellm, the LiteLLM reference the price and source tests ask.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
else
  python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
  UV=(python3 -m uv)
fi

if [ ! -x .venv/bin/python ]; then
  "${UV[@]}" venv --quiet --python python3.11 .venv
fi

stamp=.venv/.promptops-installed
want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "promptops: installing dependencies into .venv (uv)..." >&2
  "${UV[@]}" pip install --quiet --python .venv/bin/python -r requirements-dev.txt -e .
  echo "$want" > "$stamp"
fi

# LiteLLM as a reference for the tests only (its own environment: see
# requirements-litellm.txt); ./test.sh asks for it with --tests, ./run.sh does not.
[ "${1:-}" = "--tests" ] || exit 0
tool_stamp=.venv-litellm/.promptops-installed
tool_want=$(sha256sum requirements-litellm.txt | cut -d' ' -f1)
if [ "$(cat "$tool_stamp" 2>/dev/null)" != "$tool_want" ]; then
  echo "promptops: installing LiteLLM (test reference) into .venv-litellm (uv)..." >&2
  [ -x .venv-litellm/bin/python ] || "${UV[@]}" venv --quiet --python python3.11 .venv-litellm
  "${UV[@]}" pip install --quiet --python .venv-litellm/bin/python -r requirements-litellm.txt
  echo "$tool_want" > "$tool_stamp"
fi
