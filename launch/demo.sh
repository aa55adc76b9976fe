#!/usr/bin/env bash
# The main job on one machine: installs what it needs into .venv, generates the demo dataset and
# runs the whole PASS pipeline with the `tiny` variant (minutes on a 2-core CPU).
#   bash launch/demo.sh [WORKDIR] [--config.x=y ...]
source "$(dirname "$0")/_venv.sh" ""
WORKDIR="${1:-runs/demo}"; shift || true
exec python -m pass_jax.main --config=configs/pass.py:tiny --workdir="$WORKDIR" "$@"
