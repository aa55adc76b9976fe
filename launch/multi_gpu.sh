#!/usr/bin/env bash
# One host with several NVIDIA GPUs: a single process drives every visible GPU as one data mesh
# (batches split over GPUs, gradients all-reduced by XLA over NCCL).
# Needs: NVIDIA driver for CUDA 12 (>= 525); the first run installs the project with its `gpu`
# extra (jax[cuda12], which brings its own CUDA/cuDNN/NCCL wheels) into .venv.
#   bash launch/multi_gpu.sh [VARIANT] [WORKDIR] [--config.x=y ...]
# Example (4 of the machine's GPUs, the paper's encoder):
#   CUDA_VISIBLE_DEVICES=0,1,2,3 bash launch/multi_gpu.sh paper runs/paper \
#       --config.data.root=/data/pcaps --config.model.dtype=bfloat16
# Environment (defaults in brackets):
#   CUDA_VISIBLE_DEVICES            which GPUs to use [all]
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of each GPU's memory JAX reserves up front [0.90]
#   NCCL_DEBUG                      NCCL log level [WARN]; INFO shows the chosen transport
#   NCCL_P2P_DISABLE=1              try this if the all-reduce hangs on PCIe boxes without P2P
#   PASS_PYTHON                     use this interpreter as it is (no .venv, no install)
set -euo pipefail
VARIANT="${1:-paper}"
if [ $# -gt 0 ]; then shift; fi
WORKDIR="${1:-runs/$VARIANT}"
if [ $# -gt 0 ]; then shift; fi

# PASS_PYTHON, when set, is used as it is; otherwise .venv is made or reused.
# shellcheck source=launch/_venv.sh
source "$(dirname "$0")/_venv.sh" gpu
# JAX preallocates 75% by default; the input pipeline lives on the host, so more is safe here.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
# Overlap the gradient all-reduce with the backward pass instead of running it afterwards.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
export JAX_PLATFORMS=cuda
unset PASS_COORDINATOR PASS_NUM_PROCESSES PASS_PROCESS_ID PASS_DISTRIBUTED

# Fail in seconds, not after data preparation, when JAX cannot see the GPUs.
if ! NUM_GPUS="$("$PY" -c 'import jax; print(jax.device_count("gpu"))' 2>/dev/null)" \
    || [ "$NUM_GPUS" -lt 1 ]; then
  echo "[pass_jax] JAX sees no GPU: check nvidia-smi and that jax[cuda12] is installed" >&2
  exit 1
fi
echo "[pass_jax] one process, $NUM_GPUS GPU(s) in the mesh" >&2
exec "$PY" -m pass_jax.main --config="configs/pass.py:$VARIANT" --workdir="$WORKDIR" "$@"
