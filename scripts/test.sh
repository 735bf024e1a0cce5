#!/usr/bin/env bash
# Set up .venv (same as demo.sh) and run the whole test suite, slow end-to-end checks included.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
python -m pytest "$@"
