"""Charts drawn on the server as inline SVG: grouped bars over a shared axis, negative values
below a zero line. No script and no external library; the page's CSS colours the series."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 900, 240
LEFT, RIGHT, TOP, BOTTOM = 96, 8, 28, 28
MAX_LABELS = 12


def _number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[int]]],
    *,
    shown: Callable[[int], str] = str,
) -> Markup:
    """Bars of each series per label, grouped; `shown` formats a value for the axis and the
    tooltips. An empty chart (no labels) is drawn with its axis and a note."""
    values = [value for _name, points in series for value in points]
    top, bottom = max([0, *values]), min([0, *values])
    top = max(top, bottom + 1)
    plot_height = HEIGHT - TOP - BOTTOM

    def y(value: float) -> float:
        return TOP + (top - value) / (top - bottom) * plot_height

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{_number(y(0))}" x2="{WIDTH - RIGHT}" '
        f'y2="{_number(y(0))}"/>',
        f'<text class="tick" x="{LEFT - 4}" y="{_number(y(top) + 4)}" text-anchor="end">'
        f"{escape(shown(top))}</text>",
    ]
    if bottom < 0:
        parts.append(
            f'<text class="tick" x="{LEFT - 4}" y="{_number(y(bottom))}" text-anchor="end">'
            f"{escape(shown(bottom))}</text>"
        )
    for index, (name, _points) in enumerate(series):
        key_x = LEFT + index * 150
        parts.append(
            f'<rect class="series-{index % 4}" x="{key_x}" y="4" width="10" height="10"/>'
            f'<text class="legend" x="{key_x + 14}" y="13">{escape(name)}</text>'
        )
    if not labels:
        parts.append(
            f'<text class="tick" x="{WIDTH // 2}" y="{HEIGHT // 2}" text-anchor="middle">'
            "no data yet</text>"
        )
    group = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    bar = group * 0.8 / max(1, len(series))
    step = max(1, -(-len(labels) // MAX_LABELS))
    for position, label in enumerate(labels):
        for index, (name, points) in enumerate(series):
            value = points[position]
            x = LEFT + position * group + group * 0.1 + index * bar
            upper = y(max(value, 0))
            height = max(abs(y(value) - y(0)), 0.5 if value else 0)
            parts.append(
                f'<rect class="series-{index % 4}" x="{_number(x)}" y="{_number(upper)}" '
                f'width="{_number(bar)}" height="{_number(height)}">'
                f"<title>{escape(label)}: {escape(name)} {escape(shown(value))}</title></rect>"
            )
        if position % step == 0:
            parts.append(
                f'<text class="tick" x="{_number(LEFT + (position + 0.5) * group)}" '
                f'y="{HEIGHT - 8}" text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above is escaped
