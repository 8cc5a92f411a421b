#!/usr/bin/env bash
# The main job end to end on this machine: build and publish 0.1.0, serve it, run a
# launcher, publish 0.1.1 and watch the update, publish a 0.1.2 that crashes and watch
# the rollback, print status, stop everything. Sets up its own venv; under a minute.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
exec python "$repo/scripts/demo.py" "$@"
