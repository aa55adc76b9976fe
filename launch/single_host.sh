#!/usr/bin/env bash
# One host, one process, every local device in the mesh: the CPU, all GPUs, or a single-host TPU VM.
# Needs: python3 >= 3.10 with venv. The first run installs the project into .venv (minutes).
#   bash launch/single_host.sh [VARIANT] [WORKDIR] [--config.x=y ...]
# Example:
#   bash launch/single_host.sh small runs/small \
#       --config.data.root=/data/pcaps --config.data.split=capture
# Environment:
#   PASS_EXTRAS       pip extras for .venv: "" (CPU, default), gpu (jax[cuda12]) or tpu (jax[tpu]).
#   PASS_PYTHON       use this interpreter as it is (no .venv, no install); it must have the deps.
#   PASS_CPU_DEVICES  split the CPU into N XLA devices, to exercise data sharding without GPUs.
set -euo pipefail
VARIANT="${1:-tiny}"
if [ $# -gt 0 ]; then shift; fi
WORKDIR="${1:-runs/$VARIANT}"
if [ $# -gt 0 ]; then shift; fi

# PASS_PYTHON, when set, is used as it is; otherwise .venv is made or reused.
# shellcheck source=launch/_venv.sh
source "$(dirname "$0")/_venv.sh" "${PASS_EXTRAS:-}"
if [ -n "${PASS_CPU_DEVICES:-}" ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$PASS_CPU_DEVICES"
fi
# One process: make sure no half-set multi-process variables reach pass_jax.main.
unset PASS_COORDINATOR PASS_NUM_PROCESSES PASS_PROCESS_ID PASS_DISTRIBUTED
exec "$PY" -m pass_jax.main --config="configs/pass.py:$VARIANT" --workdir="$WORKDIR" "$@"
