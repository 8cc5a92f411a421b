# Sourced by demo.sh and test.sh: make (or reuse) the project venv and install the project.
# VENV overrides the location (default: .venv at the repo root). Needs only python3 >= 3.11.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$repo/.venv}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $PYTHON is older than 3.11; set PYTHON to a newer interpreter" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setting up $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cksum < "$repo/pyproject.toml" | cut -d' ' -f1)"
if [ ! -e "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet -e "$repo[${EXTRAS:-test}]" >&2
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
