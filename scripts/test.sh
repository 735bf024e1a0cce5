#!/usr/bin/env bash
# Set up .venv (same as demo.sh), install Debian's PostgreSQL server if it is missing, and run the whole test
# suite, slow end-to-end checks included.
# With no test paths given, the long test files run in a pytest process each and the short ones share a few
# (importing torch, Lightning and transformers costs every process seconds), TL_TEST_JOBS processes at a time
# (default: one per core; most tests train on one thread), longest first; a process's output is printed whole
# when it ends.
# With paths (bash scripts/test.sh tests/test_api.py), one pytest run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# tests/postgres.py starts a PostgreSQL server of its own from Debian's package (initdb in a temporary folder)
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > /dev/null ||
      echo "apt-get could not install postgresql: tests/test_scale_out.py will fail" >&2
  else
    echo "PostgreSQL's server is missing: sudo apt-get install postgresql (tests/test_scale_out.py starts one)" >&2
  fi
fi
for arg in "$@"; do
  if [[ "$arg" != -* ]]; then exec python -m pytest "$@"; fi
done
TL_TEST_LOGS=$(mktemp -d)
TL_TEST_CACHE=$(mktemp -d)  # one source-model cache for every test file: the default source run trains once
trap 'rm -rf "$TL_TEST_LOGS" "$TL_TEST_CACHE"' EXIT
export TL_TEST_LOGS TL_TEST_CACHE

one_job() {  # one_job "tests/test_a.py [tests/test_b.py ...]" [pytest options]: run them, print the output in one piece
  local files=$1 log
  log="$TL_TEST_LOGS/$(basename "${files%% *}").log"
  shift
  # one intra-op thread per process: OpenMP threads of processes sharing the cores wait at every op's barrier
  # for cores another process holds (a test that trains in 7.6 s alone took 34-102 s beside another)
  # shellcheck disable=SC2086 # the file list is split on purpose
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m pytest "$@" $files > "$log" 2>&1 || echo "$files" >> "$TL_TEST_LOGS/failed"
  flock "$TL_TEST_LOGS" cat <(echo "== $files") "$log"
}
export -f one_job
# Long files alone, short ones sharing a process, longest job first (scripts/test_jobs.py, tests/durations.txt).
python scripts/test_jobs.py | xargs -P "${TL_TEST_JOBS:-$(nproc)}" -I{} bash -c 'one_job "$@"' _ {} "$@"
if [ -s "$TL_TEST_LOGS/failed" ]; then
  echo "failed: $(sort "$TL_TEST_LOGS/failed" | tr '\n' ' ')" >&2
  exit 1
fi
echo "all test files passed"
