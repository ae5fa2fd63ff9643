#!/usr/bin/env bash
# Set up (or reuse) the virtualenv, install saesteer, run the test suite.
# Usage: scripts/test.sh [pytest args]
source "$(dirname "$0")/_env.sh"
export WANDB_MODE=disabled
python -m pytest -q "$@"
