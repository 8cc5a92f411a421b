#!/usr/bin/env bash
# The whole check, from a fresh clone: venv, lint, types, then the test suite.
#   scripts/test.sh [PYTEST_ARGS...]      e.g. scripts/test.sh -k pid1, scripts/test.sh --run-slow
set -euo pipefail
source "$(dirname "$0")/venv.sh"
cd "$repo"
echo "== ruff" >&2
ruff check .
echo "== mypy (strict)" >&2
mypy
echo "== pytest" >&2
exec python -m pytest "$@"
