#!/usr/bin/env bash
# The main job: set up .venv, then run the default experiment offline and say where the results are.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export WANDB_MODE=${WANDB_MODE:-offline}
tl-train "$@"
