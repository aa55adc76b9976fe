#!/usr/bin/env bash
# The test suite: installs the project with its test extra into .venv and runs pytest on 2 workers.
#   bash launch/test.sh [pytest args]
source "$(dirname "$0")/_venv.sh" test
exec python -m pytest -n "${PYTEST_WORKERS:-2}" -q "$@" tests
