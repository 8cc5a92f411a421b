"""Why the Rust patch releases miss 5%: an estimate of what a diff of the code could save.

For each Rust pair of ``bench/delta.py``, two more patches are made with the release tool's
own ``make_patch``, from copies of both builds changed the same way:

- **references blanked**: in the executable sections, the 4-byte operand of every rel32
  call and jump (``e8``, ``e9``, ``0f 8x``), RIP-relative load/store/lea and indirect call
  through memory is zeroed. Those operands are what shifts when a relinked build moves its
  functions and data; an executable-aware diff (Courgette, Zucchini) predicts them from the
  old build. Blanking them estimates what predicting the code's references would leave with
  this format. It is not a lower bound: the scan is the simple opcode scan those tools start
  from, so it blanks some bytes that are not operands and misses some operands (two-byte
  opcodes, matches swallowed by a false one), and references outside the code (relocations,
  pointers in ``.data.rel.ro``) stay; a diff that predicts those too can get below it.
- **code blanked**: every executable section zeroed in both builds, so the patch carries only
  the rest (read-only data, unwind tables, relocations, symbols): the part no code diff
  touches.

Both are lossy and never published; they estimate what is possible. Cached beside the other
patches in ``$BENCH_CACHE``. About 6 minutes per pair the first time (level 19).

    .venv/bin/python bench/delta_floor.py
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

from common import Figure
from delta import CACHE, PAIRS, binary, cached_patch
from release_deltas import make_patch

RUST = ("ruff", "biome")
TARGET = 5.0  # percent, a patch release (bench/delta.py)
SHF_EXECINSTR = 0x4
SHT_PROGBITS = 1
EM_X86_64 = 62
# The opcode scan of Courgette/Zucchini-style finders, left to right, never overlapping:
# call/jmp rel32; jcc rel32; mov/lea/cmp/add/sub/xor/or/and/test/xchg/movsxd with a
# RIP-relative ModRM (mod 00, rm 101); call/jmp through [rip + disp32].
_REFERENCE = re.compile(
    rb"[\xe8\xe9][\x00-\xff]{4}"
    rb"|\x0f[\x80-\x8f][\x00-\xff]{4}"
    rb"|[\x8b\x8d\x89\x3b\x39\x03\x2b\x33\x0b\x23\x85\x87\x63][\x05\x0d\x15\x1d\x25\x2d\x35\x3d]"
    rb"[\x00-\xff]{4}"
    rb"|\xff[\x15\x25][\x00-\xff]{4}")


def code_sections(data: bytes) -> list[tuple[int, int]]:
    """(file offset, size) of an x86-64 ELF's executable PROGBITS sections."""
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        raise ValueError("not a little-endian ELF64 file")
    if struct.unpack_from("<H", data, 0x12)[0] != EM_X86_64:
        raise ValueError("not an x86-64 build: the opcode scan would be meaningless")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    entsize, count = struct.unpack_from("<HH", data, 0x3A)
    if not shoff or not count:  # stripped of section headers (or > 0xff00 of them)
        raise ValueError("no section headers: the code cannot be found")
    found = []
    for i in range(count):
        _, kind, flags, _, offset, size = struct.unpack_from("<IIQQQQ", data,
                                                             shoff + i * entsize)
        if kind == SHT_PROGBITS and flags & SHF_EXECINSTR:
            found.append((offset, size))
    return found


def blank_references(data: bytes) -> tuple[bytes, int]:
    """``data`` with every reference operand in its code zeroed; how many."""
    out = bytearray(data)
    count = 0
    for offset, size in code_sections(data):
        for match in _REFERENCE.finditer(data, offset, offset + size):
            end = match.end()
            out[end - 4 : end] = bytes(4)
            count += 1
    return bytes(out), count


def blank_code(data: bytes) -> bytes:
    out = bytearray(data)
    for offset, size in code_sections(data):
        out[offset : offset + size] = bytes(size)
    return bytes(out)


def floor_patch(old: Path, new: Path, how: str) -> int:
    """The size of the patch between the two builds changed by ``how``; cached."""
    path = CACHE / "patches" / f"{old.name}--{new.name}.{how}.zst"
    if not path.exists():
        work = CACHE / "floor"
        work.mkdir(exist_ok=True)
        changed = []
        for build in (old, new):
            data = build.read_bytes()
            out = work / f"{build.name}.{how}"
            out.write_bytes(blank_references(data)[0] if how == "refs" else blank_code(data))
            changed.append(out)
        path.write_bytes(make_patch(*changed))
        for out in changed:
            out.unlink()
    return path.stat().st_size


def run() -> list[Figure]:
    figs: list[Figure] = []
    for program, a, b, kind in PAIRS:
        if program not in RUST or kind != "patch":
            continue
        old, new = binary(program, a), binary(program, b)
        data = new.read_bytes()
        full = len(data)
        code = sum(size for _, size in code_sections(data))
        _, operands = blank_references(data)
        patch = cached_patch(old, new, "zst")[0].stat().st_size
        refs = floor_patch(old, new, "refs")
        rest = floor_patch(old, new, "code")
        pct = {name: 100 * size / full for name, size in
               (("patch", patch), ("refs", refs), ("rest", rest))}
        figs.append(Figure(
            f"delta floor {program} {a} -> {b}: code references blanked",
            f"{refs / 1e6:.2f} MB = {pct['refs']:.1f}% of {full / 1e6:.1f} MB",
            f"the patch {patch / 1e6:.2f} MB ({pct['patch']:.1f}%)", f"<= {TARGET:g}%",
            pct["refs"] <= TARGET,
            note=f"{operands} 4-byte fields blanked in {code / 1e6:.1f} MB of code: an "
                 "estimate of what is left when the code's references are predicted"))
        figs.append(Figure(
            f"delta floor {program} {a} -> {b}: all but the code",
            f"{rest / 1e6:.2f} MB = {pct['rest']:.1f}%", "", "report", None,
            note="read-only data, unwind tables, relocations, symbols: what a code diff "
                 "does not touch"))
    return figs


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    for fig in run():
        print(fig.name, "|", fig.value, "|", fig.reference, "|", fig.target, "|",
              {True: "met", False: "NOT met", None: "-"}[fig.met], fig.note)
