"""Charts drawn on the server as SVG (no JavaScript library, nothing fetched): pure functions of
their data. Every text that enters the SVG is escaped; colours come from the stylesheet's classes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from html import escape

__all__ = ["minute_labels", "per_minute_chart"]

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 720, 200, 40, 22, 10


def minute_labels(now: datetime, minutes: int) -> list[str]:
    """The last `minutes` minutes up to `now`, oldest first, as 'YYYY-MM-DDTHH:MM' (the repository's keys)."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    return [(start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M") for i in range(minutes)]


def _nice_max(value: int) -> int:
    for step in (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000):
        if value <= step:
            return step
    return value


def per_minute_chart(labels: Sequence[str], series: Mapping[str, Mapping[str, int]], title: str) -> str:
    """A line per series (name -> minute label -> count) over `labels`, as an <svg> element."""
    top = _nice_max(max([0, *(n for s in series.values() for n in s.values())]))
    plot_w, plot_h = WIDTH - PAD_LEFT - 10, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(1, len(labels) - 1)

    def y(value: int) -> float:
        return PAD_TOP + plot_h - plot_h * value / top

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for frac in (0, 0.5, 1):
        value = round(top * frac)
        parts.append(f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - 10}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>'
                     f'<text class="axis" x="{PAD_LEFT - 4}" y="{y(value) + 4:.1f}" text-anchor="end">{value}</text>')
    for i in range(0, len(labels), max(1, len(labels) // 6)):
        parts.append(f'<text class="axis" x="{PAD_LEFT + i * step:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                     f'{escape(labels[i][-5:])}</text>')
    for k, (name, counts) in enumerate(series.items()):
        points = " ".join(f"{PAD_LEFT + i * step:.1f},{y(counts.get(m, 0)):.1f}" for i, m in enumerate(labels))
        total = sum(counts.get(m, 0) for m in labels)
        parts.append(f'<polyline class="series s{k}" fill="none" points="{points}"/>'
                     f'<text class="legend s{k}" x="{PAD_LEFT + 8 + 130 * k}" y="{PAD_TOP + 12}">'
                     f'{escape(name)}: {total}</text>')
    parts.append("</svg>")
    return "".join(parts)
