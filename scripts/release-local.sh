#!/usr/bin/env bash
# Build the agent (or take --binary FILE) and publish it into the release directory.
# Usage: scripts/release-local.sh VERSION [--binary FILE] [--release-dir DIR] [--base-url URL]
#                                 [--sign-key FILE]   (also writes version.json.minisig)
#                                 [--channel NAME]    (channels/NAME/version.json; default stable)
#        scripts/release-local.sh promote VERSION --to CHANNEL [--from CHANNEL] [--sign-key FILE]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Signing needs the cryptography package: the project venv has it, a bare python3 may not.
if [ -z "${PYTHON:-}" ] && [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; fi
exec "${PYTHON:-python3}" "$repo/packaging/release_tool.py" "$@"
