#!/usr/bin/env bash
# Build the agent (or take --binary FILE) and publish it into the release directory.
# Usage: scripts/release-local.sh VERSION [--binary FILE] [--release-dir DIR] [--base-url URL]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "${PYTHON:-python3}" "$repo/packaging/release_tool.py" "$@"
