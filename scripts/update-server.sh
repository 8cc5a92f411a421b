#!/usr/bin/env bash
# Serve the release directory for local updates.
# Usage: scripts/update-server.sh [--dir DIR] [--port PORT] [--bind ADDR]   (./release, 8090)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" "$repo/packaging/update_server.py" "$@"
