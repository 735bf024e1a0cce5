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
# The longest files first (measured on 2 cores, each over 45 s), then the rest: none runs alone at the end.
LONGEST="zoo sweeps reliability distributed bad_input_matrix data_integrity train fusion text_compare preemption"
{ for name in $LONGEST; do if [ -f "tests/test_$name.py" ]; then echo "tests/test_$name.py"; fi; done
  ls -r tests/test_*.py; } | awk '!seen[$0]++' | xargs -P "${TL_TEST_JOBS:-$(nproc)}" -I{} bash -c 'one_file "$@"' _ {} "$@"
if [ -s "$TL_TEST_LOGS/failed" ]; then
  echo "failed: $(sort "$TL_TEST_LOGS/failed" | tr '\n' ' ')" >&2
  exit 1
fi
echo "all test files passed"
