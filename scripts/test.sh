#!/usr/bin/env bash
# The whole check, from a fresh clone: venv, lint, types, then the test suite.
#   scripts/test.sh [PYTEST_ARGS...]      e.g. scripts/test.sh -k pid1, scripts/test.sh --run-slow
#   scripts/test.sh --platforms [PYTEST_ARGS...]   the platform suite only (tests/platforms):
#       the Debian package, a booted systemd in systemd-nspawn, the image under podman. Needs
#       root and debootstrap, systemd-container, podman, runc, lintian (.ci/run installs them).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
cd "$repo"
if [ "${1:-}" = --platforms ]; then
    shift
    echo "== platform suite" >&2
    if [ "$(id -u)" = 0 ] && command -v debootstrap >/dev/null; then
        # Built once, cached between runs (tests/platforms/debian_root.py); tests copy it.
        echo "== debian root: $(python tests/platforms/debian_root.py)" >&2
    fi
    exec python -m pytest tests/platforms --platforms "$@"
fi
echo "== ruff" >&2
ruff check .
echo "== mypy (strict)" >&2
mypy
echo "== pytest" >&2
# Three workers: most tests wait on real processes and timers, not the CPU. Tests that mount
# on the host share one worker (xdist_group "host-mounts"). PYTEST_WORKERS=0 runs serially.
exec python -m pytest -n "${PYTEST_WORKERS:-3}" --dist loadgroup "$@"
