#!/usr/bin/env bash
# Set up .venv (same as demo.sh) and run the whole test suite, slow end-to-end checks included.
# With no test paths given, each test file runs in a pytest process of its own, TL_TEST_JOBS files at a time
# (default: one per core; most tests train on one thread); a file's output is printed whole when it ends.
# With paths (bash scripts/test.sh tests/test_api.py), one pytest run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
for arg in "$@"; do
  if [[ "$arg" != -* ]]; then exec python -m pytest "$@"; fi
done
TL_TEST_LOGS=$(mktemp -d)
TL_TEST_CACHE=$(mktemp -d)  # one source-model cache for every test file: the default source run trains once
trap 'rm -rf "$TL_TEST_LOGS" "$TL_TEST_CACHE"' EXIT
export TL_TEST_LOGS TL_TEST_CACHE

one_file() {  # one_file tests/test_x.py [pytest options]: run it, then print its output in one piece
  local file=$1 log="$TL_TEST_LOGS/$(basename "$1").log"
  shift
  python -m pytest "$@" "$file" > "$log" 2>&1 || echo "$file" >> "$TL_TEST_LOGS/failed"
  flock "$TL_TEST_LOGS" cat <(echo "== $file") "$log"
}
export -f one_file
# reverse name order: the longest file (test_zoo.py) starts first instead of running alone at the end
ls -r tests/test_*.py | xargs -P "${TL_TEST_JOBS:-$(nproc)}" -I{} bash -c 'one_file "$@"' _ {} "$@"
if [ -s "$TL_TEST_LOGS/failed" ]; then
  echo "failed: $(sort "$TL_TEST_LOGS/failed" | tr '\n' ' ')" >&2
  exit 1
fi
echo "all test files passed"
