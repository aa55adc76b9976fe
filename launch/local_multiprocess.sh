#!/usr/bin/env bash
# N CPU processes on this machine, joined by jax.distributed into one multi-host job: the same code
# path as a Slurm or TPU-pod run (per-process input shards, a global mesh over every process's
# devices, collective checkpoints), without the cluster. The tests use it for the end-to-end proof.
# Needs: python3 >= 3.10; the first run installs the project into .venv unless PASS_PYTHON is set.
#   bash launch/local_multiprocess.sh [NUM_PROCESSES] [WORKDIR] [--config.x=y ...]
# Example (2 processes x 2 CPU devices = a 4-device mesh):
#   bash launch/local_multiprocess.sh 2 runs/multiprocess --config.pretrain.steps=20
# Each process i gets PASS_COORDINATOR=localhost:<free port>, PASS_NUM_PROCESSES=N,
# PASS_PROCESS_ID=i, which pass_jax.main hands to jax.distributed.initialize(). Logs go to
# WORKDIR/logs/process_<i>.log. Exits 0 only when every process exits 0; when one fails the others
# are stopped (they would wait for it at the next collective) and the failing logs are printed.
# Environment (defaults in brackets):
#   PASS_VARIANT              config variant [tiny]
#   PASS_DEVICES_PER_PROCESS  XLA CPU devices per process [2]
#   PASS_PORT                 coordinator port [a free one]
#   PASS_TIMEOUT              seconds until all are stopped and the script exits 124 [0: none]
#   PASS_MODULE               Python module to run [pass_jax.main]; gets --config, --workdir, flags
#   PASS_PYTHON               use this interpreter as it is (no .venv, no install)
set -euo pipefail
NUM="${1:-2}"
if [ $# -gt 0 ]; then shift; fi
WORKDIR="${1:-runs/multiprocess}"
if [ $# -gt 0 ]; then shift; fi
VARIANT="${PASS_VARIANT:-tiny}"
DEVICES="${PASS_DEVICES_PER_PROCESS:-2}"
TIMEOUT="${PASS_TIMEOUT:-0}"
MODULE="${PASS_MODULE:-pass_jax.main}"
if ! [[ "$NUM" =~ ^[1-9][0-9]*$ && "$DEVICES" =~ ^[1-9][0-9]*$ && "$TIMEOUT" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [NUM_PROCESSES>=1] [WORKDIR] [flags...]" \
    "(PASS_DEVICES_PER_PROCESS >= 1, PASS_TIMEOUT >= 0)" >&2
  exit 2
fi

# PASS_PYTHON, when set, is used as it is; otherwise .venv is made or reused.
# shellcheck source=launch/_venv.sh
source "$(dirname "$0")/_venv.sh" ""
PORT="${PASS_PORT:-$("$PY" -c 'import socket
s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}"
LOGS="$WORKDIR/logs"
mkdir -p "$LOGS"

# Every process is a CPU-only host with DEVICES devices, whatever the caller's shell asked for.
XLA_FLAGS="$(printf '%s' "${XLA_FLAGS:-}" \
  | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')"
export XLA_FLAGS="$XLA_FLAGS --xla_force_host_platform_device_count=$DEVICES"
export JAX_PLATFORMS=cpu
export PASS_COORDINATOR="localhost:$PORT" PASS_NUM_PROCESSES="$NUM"
unset PASS_DISTRIBUTED  # the explicit coordinator above is the one to use

PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  done
}
trap 'stop_all; exit 130' INT TERM

echo "[pass_jax] $NUM processes x $DEVICES CPU devices, coordinator $PASS_COORDINATOR," \
  "logs in $LOGS" >&2
for ((i = 0; i < NUM; i++)); do
  PASS_PROCESS_ID="$i" "$PY" -m "$MODULE" --config="configs/pass.py:$VARIANT" \
    --workdir="$WORKDIR" "$@" >"$LOGS/process_$i.log" 2>&1 &
  PIDS+=("$!")
done

# Poll rather than wait in order: the first failure, whichever process it is, stops the rest.
FAILED=()
STOPPING=""
RUNNING="$NUM"
START="$SECONDS"
while [ "$RUNNING" -gt 0 ]; do
  for i in "${!PIDS[@]}"; do
    pid="${PIDS[$i]}"
    if [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null; then continue; fi
    rc=0
    wait "$pid" || rc=$?
    PIDS[i]=""
    RUNNING=$((RUNNING - 1))
    # Once stopping, the others' exit codes are our own SIGTERM, not failures to report.
    if [ "$rc" -ne 0 ] && [ -z "$STOPPING" ]; then FAILED+=("$i:$rc"); fi
  done
  if [ "${#FAILED[@]}" -gt 0 ] && [ "$RUNNING" -gt 0 ] && [ -z "$STOPPING" ]; then
    echo "[pass_jax] process(es) ${FAILED[*]} (id:rc) failed; stopping the others" >&2
    STOPPING=1
    stop_all
  fi
  if [ "$TIMEOUT" -gt 0 ] && [ $((SECONDS - START)) -ge "$TIMEOUT" ] && [ "$RUNNING" -gt 0 ]; then
    echo "[pass_jax] timed out after ${TIMEOUT}s; stopping all processes" >&2
    stop_all
    wait || true
    exit 124
  fi
  if [ "$RUNNING" -gt 0 ]; then sleep 0.5; fi
done

if [ "${#FAILED[@]}" -gt 0 ]; then
  for entry in "${FAILED[@]}"; do
    echo "[pass_jax] ---- process ${entry%%:*} exited ${entry#*:}; last lines of its log:" >&2
    tail -n 40 "$LOGS/process_${entry%%:*}.log" >&2 || true
  done
  exit 1
fi
echo "[pass_jax] all $NUM processes finished" >&2
