"""``python -m launcher.versions A B`` prints -1, 0 or 1: version order for the resident.

The resident does not import ``packaging``; it asks this tiny process on the rare
occasions it must order two versions (a seed binary against the installed build).
Exit status 2 when either is not a valid version.
"""

from __future__ import annotations

import sys

from packaging.version import InvalidVersion, Version


def compare(a: str, b: str) -> int:
    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)


def main(argv: list[str]) -> int:
    try:
        print(compare(argv[0], argv[1]))
    except (InvalidVersion, IndexError):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
