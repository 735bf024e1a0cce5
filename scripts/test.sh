#!/usr/bin/env bash
# Set up .venv (same as demo.sh) and run the whole test suite, slow end-to-end checks included.
# With no test paths given, each test file runs in a pytest process of its own: in one process the
# suite's memory grew past the 24 GB of a CI machine (OOM-killed near the end) and a file's result
# depended on what earlier files left behind. With paths (bash scripts/test.sh tests/test_api.py), one run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
for arg in "$@"; do
  if [[ "$arg" != -* ]]; then exec python -m pytest "$@"; fi
done
failed=()
for file in tests/test_*.py; do
  python -m pytest "$@" "$file" || failed+=("$file")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
echo "all test files passed"
