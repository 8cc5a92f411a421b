"""Line charts as SVG, standard library only: what the benchmarks draw into docs/."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
W, H = 720, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50


def _ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 up to at least ``top``."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _label(value: float) -> str:
    if value >= 1e9:
        return f"{value / 1e9:g}G"
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def line_chart(path: Path, title: str, series: dict[str, Sequence[tuple[float, float]]], *,
               xlabel: str, ylabel: str) -> None:
    """Write one chart: each series a polyline, shared axes from zero, a legend."""
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x_max = max(xs) if xs else 1.0
    yticks = _ticks(max(ys) if ys else 1.0)
    y_max = yticks[-1] or 1.0
    x_min = min(xs) if xs else 0.0
    span = (x_max - x_min) or 1.0

    def px(x: float) -> float:
        return LEFT + (x - x_min) / span * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return H - BOTTOM - y / y_max * (H - TOP - BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for tick in yticks:
        y = py(tick)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f"{_label(tick)}</text>")
    step = _ticks(span)[1]
    for k in range(math.ceil(x_min / step), math.floor(x_max / step) + 1):
        x = px(k * step)
        out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">'
                   f"{_label(k * step) if k >= 0 else '-' + _label(-k * step)}</text>")
    out.append(f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" '
               'stroke="black"/>')
    out.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="black"/>')
    out.append(f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="16" y="{H / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {H / 2})">{escape(ylabel)}</text>')
    for n, (name, points) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                   f'points="{coords}"/>')
        ly = TOP + 4 + 16 * n
        out.append(f'<line x1="{W - RIGHT - 230}" y1="{ly}" x2="{W - RIGHT - 210}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="3"/>')
        out.append(f'<text x="{W - RIGHT - 204}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
