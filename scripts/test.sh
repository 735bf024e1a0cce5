#!/usr/bin/env bash
# Set up .venv (same as demo.sh) and run the whole test suite, slow end-to-end checks included.
# With no test paths given, the long test files run in a pytest process each and the short ones share a few
# (importing torch, Lightning and transformers costs every process seconds), TL_TEST_JOBS processes at a time
# (default: one per core; most tests train on one thread); a process's output is printed whole when it ends.
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

one_job() {  # one_job "tests/test_a.py [tests/test_b.py ...]" [pytest options]: run them, print the output in one piece
  local files=$1 log
  log="$TL_TEST_LOGS/$(basename "${files%% *}").log"
  shift
  # shellcheck disable=SC2086 # the file list is split on purpose
  python -m pytest "$@" $files > "$log" 2>&1 || echo "$files" >> "$TL_TEST_LOGS/failed"
  flock "$TL_TEST_LOGS" cat <(echo "== $files") "$log"
}
export -f one_job
# Long files (each over 45 s on 2 cores; the pre-emption tests signal their own runs) alone, longest first;
# the other files in SHARED processes, started after the four longest so that none runs alone at the end.
LONG="zoo sweeps reliability distributed bad_input_matrix data_integrity train fusion text_compare preemption"
SHARED=4
{
  long=() short=()
  for file in $(ls -r tests/test_*.py); do
    name=${file#tests/test_}; name=${name%.py}
    if [[ " $LONG " == *" $name "* ]]; then long+=("$file"); else short+=("$file"); fi
  done
  ordered=()
  for name in $LONG; do
    for file in "${long[@]}"; do if [ "$file" = "tests/test_$name.py" ]; then ordered+=("$file"); fi; done
  done
  printf '%s\n' "${ordered[@]:0:4}"
  for ((i = 0; i < SHARED; i++)); do
    group=()
    for ((j = i; j < ${#short[@]}; j += SHARED)); do group+=("${short[j]}"); done
    if [ ${#group[@]} -gt 0 ]; then echo "${group[*]}"; fi
  done
  printf '%s\n' "${ordered[@]:4}"
} | xargs -P "${TL_TEST_JOBS:-$(nproc)}" -I{} bash -c 'one_job "$@"' _ {} "$@"
if [ -s "$TL_TEST_LOGS/failed" ]; then
  echo "failed: $(sort "$TL_TEST_LOGS/failed" | tr '\n' ' ')" >&2
  exit 1
fi
echo "all test files passed"
