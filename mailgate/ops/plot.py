"""A small inline SVG plot of events per minute: no script, no external resource."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 600, 180
LEFT, RIGHT, TOP, BOTTOM = 36, 8, 10, 22


def rates_svg(series: Sequence[tuple[str, str, Sequence[int]]], minutes: int) -> str:
    """One line per (label, colour, counts per minute, oldest first); a legend below the axes."""
    peak = max([1, *(count for _, _, counts in series for count in counts)])
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = inner_w / max(1, minutes - 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT + 24}" role="img" '
        f'aria-label="events per minute, last {minutes} minutes">',
        f'<rect x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}" fill="#fbfcfd" stroke="#d0d7de"/>',
    ]
    for fraction in (0.5, 1.0):
        y = TOP + inner_h * (1 - fraction)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#57606a">'
                     f'{peak * fraction:g}</text>')
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="11" fill="#57606a">{minutes} min ago</text>')
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end" font-size="11" '
                 f'fill="#57606a">now</text>')
    for index, (label, colour, counts) in enumerate(series):
        points = " ".join(f"{LEFT + i * step:.1f},{TOP + inner_h * (1 - count / peak):.1f}"
                          for i, count in enumerate(counts))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        x = LEFT + index * 110
        parts.append(f'<rect x="{x}" y="{HEIGHT + 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="{HEIGHT + 17}" font-size="12" fill="#1f2328">{escape(label)} '
                     f'{sum(counts)}</text>')
    parts.append("</svg>")
    return "".join(parts)
