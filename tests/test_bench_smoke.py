"""The fleet egress bench's simulation and its SVG charts, at a tiny size (the figures
themselves come from bench/, never from the test suite)."""

from __future__ import annotations

import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import fleet_delta  # noqa: E402
from svg import line_chart  # noqa: E402


def test_deltas_cut_the_fleets_egress_by_what_the_hosts_on_the_base_save() -> None:
    pair = {"full": 10_000_000, "patch": 200_000}
    result = fleet_delta.simulate(pair, n=300)
    assert result["updated"] == 300  # everyone updates within the 30 min observed
    full, delta = float(result["full"]), float(result["delta"])  # type: ignore[arg-type]
    assert full == 300 * (10_000_000 + fleet_delta.MANIFEST_BYTES)
    share = delta / full
    expected = fleet_delta.ON_BASE * 0.02 + (1 - fleet_delta.ON_BASE)
    assert abs(share - expected) < 0.05


def test_a_chart_is_well_formed_svg(tmp_path: Path) -> None:
    out = tmp_path / "c.svg"
    line_chart(out, "t <&>", {"a": [(0, 0), (5, 10)], "b": [(0, 3), (5, 1)]},
               xlabel="x", ylabel="y")
    root = ET.fromstring(out.read_text())  # noqa: S314  (our own output)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 and lines[0].get("points", "").count(",") == 2


def _elf_header(machine: int = 62, shoff: int = 0, shnum: int = 0) -> bytes:
    return struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 3, machine, 1,
                       0, 0, shoff, 0, 64, 56, 0, 64, shnum, 0)


def test_the_floor_scan_refuses_a_build_it_cannot_read() -> None:
    """bench/delta_floor.py blanks an x86-64 ELF's code sections: a build it cannot find
    them in (not ELF, another machine, no section headers) must stop the bench, not yield a
    "floor" with nothing blanked."""
    import delta_floor

    for data in (b"#!/bin/sh\necho hi\n" + bytes(64), _elf_header(machine=183),
                 _elf_header()):
        with pytest.raises(ValueError):
            delta_floor.code_sections(data)
    real = Path(sys.executable).resolve().read_bytes()
    assert delta_floor.code_sections(real)  # the interpreter's own .text at least
