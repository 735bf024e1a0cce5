#!/usr/bin/env bash
# Set up .venv (same as demo.sh) and run the whole test suite, slow end-to-end checks included.
# With no test paths given, the model-zoo surveys (about 150 models built one after another) run in a
# pytest process of their own: in one process with the other 550 tests the memory of both added up past
# the 24 GB of a CI machine. With paths (bash scripts/test.sh tests/test_api.py -q), one pytest run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
for arg in "$@"; do
  if [[ "$arg" != -* ]]; then exec python -m pytest "$@"; fi
done
python -m pytest "$@" --ignore=tests/test_zoo.py
python -m pytest "$@" tests/test_zoo.py
