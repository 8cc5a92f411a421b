#!/usr/bin/env bash
# Download the launcher's pinned dependencies as wheels for one target architecture, and
# build the project's own wheel beside them: the only inputs the Debian package and the
# image install from (pip --no-index --find-links DIR), so neither build reaches an index.
#   scripts/fetch-wheels.sh [--arch amd64|arm64] [--dest DIR] [--requirements FILE]
# Defaults: this machine's architecture, dist/wheels/<arch>, packaging/requirements.lock.
# The wheels are for CPython 3.11 (Debian 12's python3) on glibc 2.36, whatever the host.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
dest=""
requirements="$repo/packaging/requirements.lock"
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="$2"; shift 2 ;;
        --dest) dest="$2"; shift 2 ;;
        --requirements) requirements="$2"; shift 2 ;;
        *) echo "usage: $0 [--arch amd64|arm64] [--dest DIR] [--requirements FILE]" >&2; exit 2 ;;
    esac
done
case "$arch" in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    *) echo "error: unsupported architecture $arch (amd64 or arm64)" >&2; exit 2 ;;
esac
dest="${dest:-$repo/dist/wheels/$arch}"
mkdir -p "$dest"
PYTHON="${PYTHON:-python3}"
# pip matches --platform exactly: name every manylinux level glibc 2.36 can run.
platforms=(--platform "manylinux2014_$machine")
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$machine"); done
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "${platforms[@]}" --python-version 3.11 --implementation cp --abi cp311 \
    --dest "$dest" -r "$requirements"
if [ "$requirements" = "$repo/packaging/requirements.lock" ]; then
    # The project itself: a pure-Python wheel, the same for every architecture.
    rm -f "$dest"/nginx_manager_agent-*.whl
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$dest" "$repo"
fi
echo "$dest"
