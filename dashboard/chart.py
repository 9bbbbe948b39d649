"""A daily spend bar chart as inline SVG, drawn on the server (no JavaScript)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from markupsafe import Markup, escape

from shared.money import usd_str

WIDTH, HEIGHT = 600, 200
LEFT, RIGHT, TOP, BOTTOM = 92, 30, 16, 34


def _label(value: Decimal) -> str:
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.2f}"
    places = max(2, 1 - value.adjusted())  # two significant digits
    return f"${value:.{places}f}"


def spend_chart(points: list[tuple[date, Decimal]]) -> Markup:
    """Bars per day with a max gridline; each bar has a tooltip with the exact amount."""
    top = max((v for _, v in points), default=Decimal(0))
    scale = top if top > 0 else Decimal(1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(points), 1)
    bar_w = max(step * 0.7, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="Spend per day, last {len(points)} days" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{WIDTH - RIGHT}" y2="{TOP}" class="gridline"/>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}"'
        ' class="axis"/>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">$0</text>',
    ]
    if top > 0:  # an empty chart says so once, not "$0" at both ends
        parts.append(f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">'
                     f"{escape(_label(top))}</text>")  # fmt: skip
    else:
        parts.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h / 2:.0f}"'
                     ' text-anchor="middle">no spend in these days</text>')  # fmt: skip
    for i, (day, value) in enumerate(points):
        h = float(value / scale) * plot_h
        if value > 0:
            h = max(h, 1.5)
        x = LEFT + i * step + (step - bar_w) / 2
        y = TOP + plot_h - h
        tip = escape(f"{day.isoformat()}: ${usd_str(value)}")
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" class="bar">'
            f"<title>{tip}</title></rect>"
        )
        if (len(points) - 1 - i) % 7 == 0:  # today, a week before, ...
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                f"{day.strftime('%m-%d')}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))
