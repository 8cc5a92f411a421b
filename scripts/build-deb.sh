#!/usr/bin/env bash
# Build the Debian package with Debian's own tools (dpkg-deb):
#   scripts/build-deb.sh [--arch amd64|arm64] [--wheels DIR] [--output DIR]
# writes dist/nginx-manager-agent_<version>_<arch>.deb (version from pyproject.toml).
#
# Contents: /opt/nginx-manager-agent/venv, a venv on Debian's /usr/bin/python3 holding the
# launcher and its pinned dependencies (packaging/requirements.lock), unpacked from wheels
# for the *target* architecture (scripts/fetch-wheels.sh; --wheels to bring your own, e.g.
# offline), so an arm64 package builds on amd64; /opt/nginx-manager-agent/agent, the seed
# agent; /usr/bin/nginx-manager-launcher; the unit; /etc/nginx-manager/launcher.toml (a
# conffile). The system user and the state directory are made by postinst.
# Reproducible: the same checkout gives the same bytes (SOURCE_DATE_EPOCH defaults to the last
# commit's time; fixed owners, modes and mtimes; dpkg-deb sorts the archive members).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch="$(dpkg --print-architecture)"
wheels=""
output="$repo/dist"
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --output) output="$2"; shift 2 ;;
        *) echo "usage: $0 [--arch amd64|arm64] [--wheels DIR] [--output DIR]" >&2; exit 2 ;;
    esac
done
case "$arch" in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    *) echo "error: unsupported architecture $arch (amd64 or arm64)" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3}"
version="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH
[ -n "$wheels" ] || wheels="$("$repo/scripts/fetch-wheels.sh" --arch "$arch")"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
opt="$root/opt/nginx-manager-agent"
venv="$opt/venv"
site="$venv/lib/python3.11/site-packages"
mkdir -p "$venv/bin" "$site" "$root/DEBIAN"

# A venv by hand, exactly what `python3 -m venv --without-pip` writes on Debian 12, so no
# interpreter of the target architecture is needed to build it.
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n' > "$venv/pyvenv.cfg"
ln -s /usr/bin/python3 "$venv/bin/python3"
ln -s python3 "$venv/bin/python"
ln -s lib "$venv/lib64"

# Unpack the wheels for the target: hash-checked dependencies, then the launcher itself.
platforms=(--platform "manylinux2014_$machine")
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$machine"); done
pip_target=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index
    --find-links "$wheels" --no-deps --no-compile --only-binary=:all: "${platforms[@]}"
    --python-version 3.11 --implementation cp --abi cp311 --target "$site")
"${pip_target[@]}" --require-hashes -r "$repo/packaging/requirements.lock"
rm -rf "$site/bin"
"${pip_target[@]}" "nginx-manager-agent==$version"
# pip's console scripts name the build host's python; ours are written below.
rm -rf "$site/bin"
find "$site" -name INSTALLER -path '*.dist-info/*' -exec sh -c 'echo dpkg > "$1"' _ {} \;
cat > "$venv/bin/nginx-manager-launcher" <<'SCRIPT'
#!/opt/nginx-manager-agent/venv/bin/python3 -I
"""nginx-manager-launcher, from the Debian package's own venv."""
import sys

from launcher.cli import main

sys.exit(main())
SCRIPT
chmod 0755 "$venv/bin/nginx-manager-launcher"
mkdir -p "$root/usr/bin"
ln -s /opt/nginx-manager-agent/venv/bin/nginx-manager-launcher "$root/usr/bin/nginx-manager-launcher"

# The seed agent: installed into the state directory at first start, offline.
"$PYTHON" "$repo/packaging/build_agent.py" "$version" --output "$opt/agent" >/dev/null

install -D -m 0644 "$repo/systemd/nginx-manager-agent.service" \
    "$root/lib/systemd/system/nginx-manager-agent.service"
# Shipped disabled: an operator who wants systemd to hold the agent's port enables it.
install -D -m 0644 "$repo/systemd/nginx-manager-agent.socket" \
    "$root/lib/systemd/system/nginx-manager-agent.socket"
# The conffile is the example with the package's own seed switched on.
install -d "$root/etc/nginx-manager"
sed 's|^# seed_binary = "/opt/nginx-manager-agent/agent"$|seed_binary = "/opt/nginx-manager-agent/agent"|' \
    "$repo/systemd/launcher.toml.example" > "$root/etc/nginx-manager/launcher.toml"
grep -qx 'seed_binary = "/opt/nginx-manager-agent/agent"' "$root/etc/nginx-manager/launcher.toml"
install -d "$root/usr/share/man/man1"
gzip -9n < "$repo/packaging/deb/nginx-manager-launcher.1" \
    > "$root/usr/share/man/man1/nginx-manager-launcher.1.gz"
doc="$root/usr/share/doc/nginx-manager-agent"
install -d "$doc"
install -D -m 0644 "$repo/packaging/deb/lintian-overrides" \
    "$root/usr/share/lintian/overrides/nginx-manager-agent"
"$PYTHON" "$repo/packaging/deb/copyright.py" "$site" > "$doc/copyright"
date="$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
printf '%s\n' "nginx-manager-agent ($version) unstable; urgency=medium" "" \
    "  * Release $version, built from the nginx-manager-agent repository." "" \
    " -- ${DEB_MAINTAINER:-NGINX Manager Agent maintainers <nginx-manager-agent@example.com>}  $date" \
    | gzip -9n > "$doc/changelog.gz"

for script in postinst prerm postrm; do
    install -m 0755 "$repo/packaging/deb/$script" "$root/DEBIAN/$script"
done
echo /etc/nginx-manager/launcher.toml > "$root/DEBIAN/conffiles"

# Fixed modes and mtimes: what the archive records must not depend on the build host's umask
# or clock.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -exec chmod 0644 {} +
chmod 0755 "$venv/bin/nginx-manager-launcher" "$opt/agent" "$root"/DEBIAN/post* "$root"/DEBIAN/prerm
chmod 0644 "$root/DEBIAN/conffiles"
find "$root" -path "$root/DEBIAN" -prune -o -type f -printf '%P\n' | LC_ALL=C sort \
    | (cd "$root" && xargs -d '\n' md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"
size_kib="$(find "$root" -path "$root/DEBIAN" -prune -o \( -type f -o -type l \) -printf '%s\n' \
    | awk '{ total += int(($1 + 1023) / 1024) } END { print total }')"
cat > "$root/DEBIAN/control" <<CONTROL
Package: nginx-manager-agent
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-NGINX Manager Agent maintainers <nginx-manager-agent@example.com>}
Installed-Size: $size_kib
Depends: python3 (>= 3.11~), python3 (<< 3.12), libc6 (>= 2.34), passwd, init-system-helpers (>= 1.52)
Section: admin
Priority: optional
Description: self-updating launcher for the NGINX Manager Agent
 A small resident launcher, run as a systemd service, keeps the NGINX Manager
 Agent running as its child and up to date: it polls a signed manifest,
 downloads and verifies the agent binary, swaps it in atomically, restarts it
 in place and rolls back on its own when the new build fails its health window.
 .
 The launcher runs from its own Python environment under
 /opt/nginx-manager-agent, built on Debian's python3; it does not touch the
 system Python's packages.
CONTROL
chmod 0644 "$root/DEBIAN/control"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$output"
deb="$output/nginx-manager-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
