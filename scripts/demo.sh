#!/usr/bin/env bash
# The main job: set up .venv, then compare transfer strategies on the offline digits task (15 short
# runs) and print the report. Extra arguments go to tl-train (e.g. trainer.max_epochs=10).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export WANDB_MODE=${WANDB_MODE:-offline}
tl-train experiment=compare trainer.enable_progress_bar=false "$@"
