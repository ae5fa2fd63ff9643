#!/usr/bin/env bash
# Set up (or reuse) the virtualenv, install saesteer, run the main job on the organism.
# Usage: scripts/run.sh [hydra overrides]
source "$(dirname "$0")/_env.sh"
saesteer organism "$@"
