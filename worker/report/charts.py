"""The report's charts as inline SVG, and the value formats they share with the page (pure).

A chart scales to its box (``viewBox``, width 100%) and draws one bar or one point per step
(hour or day); a step without a value is a gap, never a zero. Every bar and point carries its
exact value (``data-value``) and step (``data-start``), so tests read what the chart shows. Every
string that reaches the markup goes through ``escape``; a missing figure prints as a dash.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from store.dashboard import Point
from store.report import iso
from store.rollup import HOUR_MS

_W, _H = 640, 200  # the charts' viewBox: they scale to the width of their box
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 10, 10, 26
LATENCY_SERIES = (("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms"))


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(v: float | int | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int) or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def ms_text(v: float | None) -> str:
    return "–" if v is None else f"{num(v)} ms"


def s_text(v: float | None) -> str:
    return "–" if v is None else f"{v:,.3f} s"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.1f}%"


def _nice_max(v: float) -> float:
    if v <= 0 or not math.isfinite(v):
        return 1.0
    exp = 10.0 ** math.floor(math.log10(v))
    return next((m * exp for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * exp >= v), 10 * exp)


def _nice_count(v: float) -> float:
    """A y maximum whose quarters are whole counts: 4, 8, 12, then 12, 20, 40, 60, 80 x 10^k."""
    if v <= 12:
        return float(max(4, math.ceil(v / 4) * 4))
    exp = 10.0 ** math.floor(math.log10(v))
    return next((m * exp for m in (1.2, 2.0, 4.0, 6.0, 8.0, 10.0) if m * exp >= v), 10 * exp)


def _x(i: int, n: int) -> float:
    return _LEFT + (_W - _LEFT - _RIGHT) / n * (i + 0.5)


def _y(v: float, ymax: float) -> float:
    return _TOP + (_H - _TOP - _BOTTOM) * (1 - v / ymax)


def _label(start_ms: int, step_ms: int, n: int) -> str:
    stamp = iso(start_ms)  # 2026-11-27T08:00:00Z
    if step_ms > HOUR_MS:
        return stamp[5:10]
    return stamp[11:16] if n <= 48 else stamp[5:10] + " " + stamp[11:13] + "h"


def _frame(points: Sequence[Point], step_ms: int, ymax: float, fmt: str) -> list[str]:
    """Horizontal grid lines with y labels, and at most six x labels."""
    out = []
    for k in range(5):
        v = ymax * k / 4
        y = _y(v, ymax)
        text = f"{v * 100:.0f}%" if fmt == "pct" else num(v)
        out.append(f'<line class="gl" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/><text x="{_LEFT - 4}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{text}</text>')
    n = len(points)
    for i in range(0, n, max(1, math.ceil(n / 6))):
        out.append(f'<text x="{_x(i, n):.1f}" y="{_H - 6}" text-anchor="middle">'
                   f'{_label(points[i].start_ms, step_ms, n)}</text>')
    return out


def _svg(name: str, title: str, n: int, body: list[str]) -> str:
    return (f'<svg class="chart" data-chart="{name}" data-points="{n}" '
            f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title>{"".join(body)}</svg>')


def bar_chart(points: Sequence[Point], step_ms: int, attr: str = "traces") -> str:
    """One bar per step (``traces`` or ``errors``), zero-height bars included."""
    n = len(points)
    ymax = _nice_count(max((getattr(p, attr) for p in points), default=0))
    band = (_W - _LEFT - _RIGHT) / max(n, 1)
    body = _frame(points, step_ms, ymax, "count")
    base = _y(0, ymax)
    for i, p in enumerate(points):
        v = getattr(p, attr)
        top = _y(v, ymax)
        body.append(f'<rect class="bar {attr}" data-start="{iso(p.start_ms)}" data-value="{v}" '
                    f'x="{_x(i, n) - band * 0.4:.2f}" y="{top:.2f}" width="{band * 0.8:.2f}" '
                    f'height="{base - top:.2f}"><title>{iso(p.start_ms)}: {v:,} {attr}'
                    f'</title></rect>')
    per = "hour" if step_ms == HOUR_MS else "day"
    return _svg("volume" if attr == "traces" else attr, f"{attr.capitalize()} per {per}", n,
                body)


def _line(points: Sequence[Point], attr: str, name: str, ymax: float, fmt: str) -> str:
    """A path with one dot per step that has a value; a step without one is a gap."""
    n = len(points)
    r = 2.5 if n <= 48 else 1.5
    path, dots, pen_down = [], [], False
    for i, p in enumerate(points):
        v = getattr(p, attr)
        if v is None:
            pen_down = False
            continue
        x, y = _x(i, n), _y(v, ymax)
        path.append(f'{"L" if pen_down else "M"}{x:.1f} {y:.1f}')
        pen_down = True
        shown = pct(v) if fmt == "pct" else ms_text(v)
        dots.append(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="{r}" '
                    f'data-start="{iso(p.start_ms)}" data-value="{v!r}"><title>'
                    f'{iso(p.start_ms)} {name}: {shown}</title></circle>')
    d = f' d="{" ".join(path)}"' if path else ""
    return f'<g class="series s-{name}" data-series="{name}"><path{d}/>{"".join(dots)}</g>'


def success_chart(points: Sequence[Point], step_ms: int) -> str:
    body = _frame(points, step_ms, 1.0, "pct")
    body.append(_line(points, "success_rate", "rate", 1.0, "pct"))
    return _svg("success", "Success rate", len(points), body)


def latency_chart(points: Sequence[Point], step_ms: int) -> str:
    top = max((v for p in points for _, a in LATENCY_SERIES if (v := getattr(p, a)) is not None),
              default=0.0)
    ymax = _nice_max(top)
    body = _frame(points, step_ms, ymax, "ms")
    body += [_line(points, attr, name, ymax, "ms") for name, attr in LATENCY_SERIES]
    return _svg("latency", "Latency p50 / p95 / p99 (ms)", len(points), body)
