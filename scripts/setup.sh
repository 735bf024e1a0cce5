#!/usr/bin/env bash
# Creates .venv (if missing) and installs the locked environment (requirements-lock.txt: the versions the
# README's figures were measured with), then transferlab itself. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.transferlab-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements-lock.txt -nt "$stamp" ]; then
  # pip byte-compiles file by file on one core (25 of its 57 s here); compileall does it on every core
  .venv/bin/python -m pip install -q --no-compile -r requirements-lock.txt
  .venv/bin/python -m pip install -q --no-compile --no-deps -e .
  .venv/bin/python -m compileall -q -j 0 .venv/lib > /dev/null || true  # .pyc is only a speed-up
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
