# shellcheck shell=bash
# Sourced by the launch scripts: create or reuse .venv in the checkout and install the project.
# A stamp file keyed on pyproject.toml skips the install when nothing changed.
set -euo pipefail
# Leaves PY naming the interpreter to run: PASS_PYTHON as it is (no .venv, no install; it must
# have the dependencies), else the .venv's python.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [ -n "${PASS_PYTHON:-}" ]; then
  # shellcheck disable=SC2034
  PY="$PASS_PYTHON"
  cd "$ROOT"
  return 0
fi
BASE_PY="${PYTHON:-python3}"
EXTRAS="${1:-}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "[pass_jax] creating $ROOT/.venv" >&2
  "$BASE_PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.pass_jax_installed${EXTRAS:+_$EXTRAS}"
HASH="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[pass_jax] installing the project into .venv (first run takes a few minutes)" >&2
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip >&2
  "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}" >&2
  echo "$HASH" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
# CPU JAX runs up to 2x faster with tcmalloc; use it when the system has it.
for lib in /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc.so.4; do
  if [ -f "$lib" ]; then export LD_PRELOAD="${LD_PRELOAD:+$LD_PRELOAD:}$lib"; break; fi
done
# shellcheck disable=SC2034  # read by the scripts that source this file
PY=python
cd "$ROOT"
