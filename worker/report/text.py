"""Render a ``store.report.Summary`` as a table, JSON or CSV (pure: text in, text out).

The table is meant to be read at a glance in a terminal: headline figures first, then volume as
a bar chart (per hour for windows up to two days, per day beyond), span types, assessments,
candidates and, with ``--by``, one line per group. JSON carries the classic analysis
keys; CSV has one row per group (the overall figures when there are no groups).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

import orjson

from store.report import Stats, Summary, iso, scalar_row

BAR_WIDTH = 40
_BLOCKS = " ▏▎▍▌▋▊▉█"


def to_json(s: Summary) -> str:
    return orjson.dumps(s.to_dict(), option=orjson.OPT_INDENT_2).decode()


def to_csv(s: Summary) -> str:
    rows: list[Mapping[str, object]] = []
    if s.by:
        for group, stats in s.groups.items():
            rows.append({s.by: group, **scalar_row(stats)})
    else:
        rows.append(scalar_row(s.overall))
    fields: dict[str, None] = {}
    for r in rows:
        fields.update(dict.fromkeys(r))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    return out.getvalue()


def bar(value: int, peak: int, width: int = BAR_WIDTH) -> str:
    """A horizontal bar with eighth-block resolution."""
    if peak <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / peak * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (_BLOCKS[part] if part else "")


def _n(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or float(v).is_integer() else f"{v:,.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _volume(s: Summary) -> tuple[str, list[tuple[str, int]]]:
    items = list(s.hourly_volume.items())
    if len(items) <= 48:
        return "Hourly volume (UTC)", [(k[5:16].replace("T", " "), v) for k, v in items]
    days: dict[str, int] = {}
    for k, v in items:
        days[k[:10]] = days.get(k[:10], 0) + v
    return "Daily volume (UTC)", list(days.items())


def _headline(st: Stats) -> list[str]:
    return [
        f"Traces       {st.total_traces:>10,}   OK {st.ok_count:,} ({_pct(st.success_rate)})   "
        f"ERROR {st.error_count:,}   IN_PROGRESS {st.in_progress_count:,}",
        f"Latency ms   avg {_n(st.avg_latency_ms)}   p50 {_n(st.p50_latency_ms)}   "
        f"p95 {_n(st.p95_latency_ms)}   p99 {_n(st.p99_latency_ms)}   "
        f"max {_n(st.max_latency_ms)}",
        f"Tokens       in {st.tokens['input']:,}   out {st.tokens['output']:,}   "
        f"total {st.tokens['total']:,}",
    ]


_SPAN_COLUMNS = (("count", 10), ("total s", 12), ("avg s", 10), ("p95 s", 10), ("max s", 10))
_ASSESSMENT_COLUMNS = (("count", 8), ("mean", 10), ("pass rate", 12))
_GROUP_COLUMNS = (("traces", 10), ("success", 10), ("p95 ms", 10), ("errors", 8))


def _table(title: str, first: int, columns: Sequence[tuple[str, int]],
           rows: Iterable[tuple[str, Sequence[str]]]) -> list[str]:
    """A section: a blank line, the header (``title`` in ``first`` characters, then the column
    names) and a line per row (its label indented by two, then its cells), cells right-aligned
    to their column's width."""
    def line(label: str, cells: Iterable[str]) -> str:
        return f"{label:<{first}}" + "".join(
            f"{cell:>{width}}" for cell, (_, width) in zip(cells, columns, strict=True))

    return ["", line(title, (name for name, _ in columns)),
            *(line("  " + label, cells) for label, cells in rows)]


def to_table(s: Summary) -> str:
    st = s.overall
    scope = f"experiment {s.experiment_id}" if s.experiment_id else "all experiments"
    lines = [f"trace-curator report  {iso(s.since_ms)} -> {iso(s.until_ms)}  ({scope})", ""]
    lines += _headline(st)
    title, volume = _volume(s)
    peak = max((v for _, v in volume), default=0)
    lines += ["", title]
    lines += [f"  {label:<11} |{bar(v, peak):<{BAR_WIDTH}} {v:,}" for label, v in volume]
    if st.span_types:
        lines += _table("Span type", 16, _SPAN_COLUMNS, (
            (t, (f"{sp.count:,}", f"{sp.total_time_s:,.2f}", f"{sp.avg_time_s:.3f}",
                 f"{sp.p95_time_s:.3f}", f"{sp.max_time_s:.3f}"))
            for t, sp in st.span_types.items()))
    if st.assessments:
        lines += _table("Assessment", 24, _ASSESSMENT_COLUMNS, (
            (name, (f"{a.count:,}", "-" if a.mean is None else f"{a.mean:.3f}", _pct(a.pass_rate)))
            for name, a in st.assessments.items()))
    if st.candidates:
        lines += ["", "Candidates"]
        lines += [f"  {v:<22}{n:>8,}" for v, n in st.candidates.items()]
    if s.by:
        lines += _table(f"By {s.by}", 28, _GROUP_COLUMNS, (
            ((g or "(none)")[:26], (f"{gs.total_traces:,}", _pct(gs.success_rate),
                                   _n(gs.p95_latency_ms), f"{gs.error_count:,}"))
            for g, gs in s.groups.items()))
    if s.notes:
        lines += [""] + [f"Note: {n}" for n in s.notes]
    return "\n".join(lines) + "\n"


FORMATS = {"table": to_table, "json": to_json, "csv": to_csv}
