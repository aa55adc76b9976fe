#!/usr/bin/env bash
# Cloud TPU pod slice: ships this checkout to every TPU VM worker, installs it with the `tpu` extra
# (jax[tpu]) and starts pass_jax.main on all workers at once with PASS_DISTRIBUTED=auto: on a TPU
# VM, jax.distributed.initialize() finds the other workers by itself; the mesh spans every chip.
# Runs on your workstation. Needs: the gcloud CLI, logged in, with a TPU VM slice already made, e.g.
#   gcloud compute tpus tpu-vm create my-pod --zone=us-central2-b \
#       --accelerator-type=v4-32 --version=tpu-ubuntu2204-base
# and a gs:// bucket in the same region for the WORKDIR: every worker writes Orbax checkpoints and
# reads the tfds dataset (tf.data streams gs:// directly) from there.
#   TPU=my-pod ZONE=us-central2-b bash launch/tpu_pod.sh [VARIANT] WORKDIR [--config.x=y ...]
# Example:
#   TPU=my-pod ZONE=us-central2-b bash launch/tpu_pod.sh paper gs://my-bucket/runs/paper \
#       --config.data.root=gs://my-bucket/pcaps
# Environment:
#   TPU, ZONE (required), PROJECT (default: gcloud's configured project)
#   PASS_REMOTE_DIR   directory on each worker, relative to the home directory [pass_jax]
#   PASS_STEPS        which steps to run, any of sync,install,run [sync,install,run]
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
VARIANT="${1:-paper}"
if [ $# -gt 0 ]; then shift; fi
WORKDIR="${1:?give the WORKDIR, a gs:// path every worker can write}"
shift
REMOTE_DIR="${PASS_REMOTE_DIR:-pass_jax}"
STEPS=",${PASS_STEPS:-sync,install,run},"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GCLOUD_ARGS=(--zone="$ZONE")
if [ -n "${PROJECT:-}" ]; then GCLOUD_ARGS+=(--project="$PROJECT"); fi

on_all_workers() {  # the same command on every worker, at the same time
  gcloud compute tpus tpu-vm ssh "$TPU" "${GCLOUD_ARGS[@]}" --worker=all --command="$1"
}

if [[ "$STEPS" == *,sync,* ]]; then
  # The working tree, uncommitted edits included; never the local venv, runs or git history.
  TARBALL="$(mktemp -t pass_jax.XXXXXX.tar.gz)"
  trap 'rm -f "$TARBALL"' EXIT
  tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude=runs --exclude='__pycache__' \
    -czf "$TARBALL" .
  gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU:pass_jax_src.tar.gz" "${GCLOUD_ARGS[@]}" \
    --worker=all
  # Replace everything but the worker's .venv, so a re-sync does not reinstall jax[tpu].
  on_all_workers "mkdir -p ~/$REMOTE_DIR \
    && find ~/$REMOTE_DIR -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} + \
    && tar -xzf ~/pass_jax_src.tar.gz -C ~/$REMOTE_DIR && rm ~/pass_jax_src.tar.gz"
fi
if [[ "$STEPS" == *,install,* ]]; then
  # TPU VM images ship python3 without ensurepip, which `python3 -m venv` needs.
  on_all_workers "(python3 -c 'import ensurepip' 2>/dev/null \
      || (sudo apt-get update -q && sudo apt-get install -y -q python3-venv)) \
    && cd ~/$REMOTE_DIR && bash -c 'source launch/_venv.sh tpu'"
fi
if [[ "$STEPS" == *,run,* ]]; then
  # Quote every argument once more: it passes through the worker's login shell (bash).
  ARGS="$(printf '%q ' --config="configs/pass.py:$VARIANT" --workdir="$WORKDIR" "$@")"
  # _venv.sh turns on pipefail, so a failed run is not hidden behind tee's success.
  # PASS_DISTRIBUTED=auto: pass_jax.main calls jax.distributed.initialize() with no arguments.
  on_all_workers "cd ~/$REMOTE_DIR && unset PASS_COORDINATOR PASS_NUM_PROCESSES PASS_PROCESS_ID \
    && export PASS_DISTRIBUTED=auto && source launch/_venv.sh tpu \
    && python -m pass_jax.main $ARGS 2>&1 | tee ~/pass_jax_run.log"
fi
