"""Small computations the resident runs in a short-lived process, so that it never loads
their libraries (``packaging``, OpenSSL through ``hashlib``) into its own memory:

    python -m launcher.oneshot compare A B     prints -1, 0 or 1 (version order)
    python -m launcher.oneshot sha256 FILE...  prints one digest a line, "-" for a missing file

Exit status 2 on bad arguments or an invalid version.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def compare(a: str, b: str) -> int:
    """-1, 0 or 1; raises ``packaging.version.InvalidVersion``."""
    from packaging.version import Version  # only for this command: hashing starts faster

    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)


def sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.hexdigest()


def main(argv: list[str]) -> int:
    match argv:
        case ["compare", a, b]:
            from packaging.version import InvalidVersion

            try:
                print(compare(a, b))
            except InvalidVersion:
                return 2
        case ["sha256", *files] if files:
            for name in files:
                print(sha256(Path(name)) or "-")
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
