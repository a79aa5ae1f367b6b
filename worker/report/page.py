"""Render a ``store.dashboard.Dashboard`` as one self-contained HTML page (pure: data in, text out).

The same page is the ``report --format html`` file and the live page at ``/`` (``live`` adds
the window links, the experiment filter and a refresh). Invariants:
- self-contained: inline CSS, charts as inline SVG (``worker.report.charts``), no external
  URL anywhere; a Content-Security-Policy meta tag forbids every fetch, and the live page's one
  small script runs by its hash, so even a string that escaped escaping could not run;
- every string that comes from the data (trace ids, tag values, dataset names, errors,
  previews, experiment ids) goes through ``_e`` (HTML escaping, quotes included);
- figures are marked ``data-metric``/``data-value`` with the exact JSON value, so tests and
  scrapers read the numbers the page shows; a missing value prints as a dash, never NaN.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from store.dashboard import Dashboard, Example
from store.report import NO_TRACES_NOTE, Stats, iso
from store.rollup import HOUR_MS
from worker.report.charts import LATENCY_SERIES, bar_chart, latency_chart, success_chart
from worker.report.charts import escape as _e
from worker.report.charts import ms_text as _ms
from worker.report.charts import num as _num
from worker.report.charts import pct as _pct
from worker.report.charts import s_text as _s

WINDOW_PRESETS: tuple[tuple[str, str], ...] = (("1h", "1 h"), ("24h", "24 h"), ("7d", "7 d"))
_SCRIPT = ('document.querySelectorAll("select[data-autosubmit]").forEach(function(s){'
           's.addEventListener("change",function(){s.form.submit();});});')
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
_CSP_FILE = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_CSP_LIVE = (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; "
             "base-uri 'none'; form-action 'self'")
_CSS = """
:root{--fg:#1d2430;--mut:#5b6472;--bd:#dde1e7;--bg:#f5f6f8;--card:#fff;--c1:#4c78a8;
--c2:#f58518;--c3:#e45756;--ok:#2e8b57}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:12px}
h1{font-size:1.25rem;margin:.2rem 0}
h2{font-size:1rem;margin:0 0 .5rem}
.meta{color:var(--mut);margin:.15rem 0}
.controls{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:.5rem 0}
.windows a{display:inline-block;padding:3px 10px;border:1px solid var(--bd);border-radius:14px;
background:var(--card);color:var(--fg);text-decoration:none;margin-right:4px}
.windows a[aria-current]{background:var(--c1);border-color:var(--c1);color:#fff}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(125px,1fr));gap:8px;margin:10px 0}
.kpi{background:var(--card);border:1px solid var(--bd);border-radius:8px;padding:8px 10px}
.kpi .label{display:block;color:var(--mut);font-size:.8rem}
.kpi .value{font-size:1.25rem;font-weight:600;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));gap:12px}
section{background:var(--card);border:1px solid var(--bd);border-radius:8px;padding:10px 12px;
margin:12px 0;min-width:0}
.grid section{margin:0}
svg.chart{display:block;width:100%;height:auto}
.chart text{font-size:11px;fill:var(--mut)}
.chart .gl{stroke:var(--bd);stroke-width:1}
.chart .bar{fill:var(--c1)}.chart .bar.errors{fill:var(--c3)}
.chart path{fill:none;stroke-width:2}
.s-rate path{stroke:var(--ok)}.s-rate circle{fill:var(--ok)}
.s-p50 path{stroke:var(--c1)}.s-p50 circle{fill:var(--c1)}
.s-p95 path{stroke:var(--c2)}.s-p95 circle{fill:var(--c2)}
.s-p99 path{stroke:var(--c3)}.s-p99 circle{fill:var(--c3)}
.legend span{margin-right:12px;color:var(--mut)}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.k-p50{background:var(--c1)}.k-p95{background:var(--c2)}.k-p99{background:var(--c3)}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 6px;border-bottom:1px solid var(--bd);vertical-align:top}
th{color:var(--mut);font-weight:600;font-size:.85rem}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font-size:.85em;overflow-wrap:break-word}
.preview,td.error,td.wrap code{overflow-wrap:anywhere}
.preview{color:var(--mut)}td.error{min-width:14em}
.examples{margin:0;padding-left:1rem}
svg.mini{width:90px;height:8px;vertical-align:middle}
svg.mini rect{fill:var(--c1)}
.empty{padding:16px;border:1px dashed var(--bd);border-radius:8px;background:var(--card);
font-weight:600;text-align:center}
.notes{color:#8a5a00}
.muted{color:var(--mut)}
@media (max-width:600px){body{font-size:13px}main{padding:8px}.kpi .value{font-size:1.1rem}
.chart text{font-size:17px}}
"""


@dataclass(frozen=True, slots=True)
class LiveControls:
    """What the live page adds: the window as asked (``24h``), the experiment filter, the
    refresh period, and where the JSON of the same report lives."""

    since: str = "24h"
    experiment: str | None = None
    refresh_s: int = 30
    api_path: str = "/api/report"


def _duration(ms: int) -> str:
    """``7 d 1 min``, ``24 h 1 min`` (up to two days in hours), ``45 min``."""
    minutes = ms // 60_000
    days, rest = divmod(minutes, 1440) if minutes >= 2880 else (0, minutes)
    hours, mins = divmod(rest, 60)
    parts = [f"{v} {u}" for v, u in ((days, "d"), (hours, "h"), (mins, "min")) if v]
    return " ".join(parts) or f"{ms / 1000:.0f} s"


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _mini(share: float | None) -> str:
    w = 0.0 if share is None or not math.isfinite(share) else max(0.0, min(1.0, share)) * 100
    return (f'<svg class="mini" viewBox="0 0 100 8" preserveAspectRatio="none" '
            f'aria-hidden="true"><rect width="{w:.1f}" height="8"/></svg>')


# --- sections ------------------------------------------------------------------------------


def _kpi(label: str, metric: str, value: float | int, shown: str) -> str:
    return (f'<div class="kpi"><span class="label">{label}</span><span class="value" '
            f'data-metric="{metric}" data-value="{value!r}">{shown}</span></div>')


def _kpis(st: Stats) -> str:
    empty = st.total_traces == 0

    def lat(v: float) -> str:
        return "–" if empty else _ms(v)

    cards = [
        _kpi("Traces", "total_traces", st.total_traces, _num(st.total_traces)),
        _kpi("Success rate", "success_rate", st.success_rate,
             "–" if empty else _pct(st.success_rate)),
        _kpi("Errors", "error_count", st.error_count, _num(st.error_count)),
        _kpi("Avg latency", "avg_latency_ms", st.avg_latency_ms, lat(st.avg_latency_ms)),
        _kpi("p50", "p50_latency_ms", st.p50_latency_ms, lat(st.p50_latency_ms)),
        _kpi("p95", "p95_latency_ms", st.p95_latency_ms, lat(st.p95_latency_ms)),
        _kpi("p99", "p99_latency_ms", st.p99_latency_ms, lat(st.p99_latency_ms)),
        _kpi("Tokens", "tokens_total", st.tokens["total"], _num(st.tokens["total"])),
    ]
    return f'<div class="kpis" id="kpis">{"".join(cards)}</div>'


def _table(head: Sequence[str], rows: Sequence[str], numeric: Sequence[int] = ()) -> str:
    ths = "".join(f'<th{" class=num" if i in numeric else ""}>{h}</th>'
                  for i, h in enumerate(head))
    return (f'<div class="table-wrap"><table><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{title}</h2>{body}</section>'


def _span_types(st: Stats) -> str:
    if not st.span_types:
        return _section("span-types", "Span types", '<p class="muted">No spans.</p>')
    peak = max(sp.total_time_s for sp in st.span_types.values()) or 1.0
    rows = [f'<tr data-span-type="{_e(t)}"><td><code>{_e(t)}</code></td>'
            f'<td class="num">{_num(sp.count)}</td><td class="num">{_s(sp.total_time_s)}</td>'
            f'<td class="num">{_s(sp.avg_time_s)}</td><td class="num">{_s(sp.p95_time_s)}</td>'
            f'<td class="num">{_s(sp.max_time_s)}</td><td>{_mini(sp.total_time_s / peak)}</td>'
            f'</tr>' for t, sp in st.span_types.items()]
    return _section("span-types", "Span types", _table(
        ("type", "spans", "total", "avg", "p95", "max", "share of time"), rows, (1, 2, 3, 4, 5)))


def _assessments(st: Stats) -> str:
    if not st.assessments:
        return _section("assessments", "Assessments", '<p class="muted">No feedback.</p>')
    rows = [f'<tr data-assessment="{_e(name)}"><td><code>{_e(name)}</code></td>'
            f'<td class="num">{_num(a.count)}</td><td class="num">'
            f'{"–" if a.mean is None else f"{a.mean:.3f}"}</td>'
            f'<td class="num">{_pct(a.pass_rate)}</td><td>{_mini(a.pass_rate)}</td>'
            f'<td class="num">{_num(a.passed)} / {_num(a.failed)}</td>'
            f'<td class="num">{_num(a.judge_errors)}</td></tr>'
            for name, a in st.assessments.items()]
    return _section("assessments", "Assessments", _table(
        ("name", "count", "mean", "pass rate", "", "passed / failed", "judge errors"), rows,
        (1, 2, 3, 5, 6)))


def _example(x: Example) -> str:
    preview = x.request_preview or ""
    return (f'<li><code class="trace-id">{_e(x.trace_id)}</code> <span class="muted">'
            f'{_e(x.status)}</span> <span class="preview">{_e(preview)}</span></li>')


def _candidates(d: Dashboard) -> str:
    st = d.summary.overall
    if not st.candidates_by_tag:
        return _section("candidates", "Candidates", '<p class="muted">No tagged traces.</p>')
    rows = []
    for key, values in st.candidates_by_tag.items():
        for value, n in values.items():
            ex = d.examples.get((key, value), ())
            items = "".join(_example(x) for x in ex)
            rows.append(f'<tr data-tag-value="{_e(value)}"><td class="wrap"><code class="muted">'
                        f'{_e(key)}</code> = <code class="tag-value">{_e(value)}</code>'
                        f'<ul class="examples">{items}</ul></td>'
                        f'<td class="num">{_num(n)}</td></tr>')
    return _section("candidates", "Candidates", _table(
        ("tag = value, newest examples", "traces"), rows, (1,)))


def _groups(d: Dashboard) -> str:
    s = d.summary
    if not s.by:
        return ""
    rows = [f'<tr><td><code>{_e(g or "(none)")}</code></td><td class="num">'
            f'{_num(gs.total_traces)}</td><td class="num">{_pct(gs.success_rate)}</td>'
            f'<td class="num">{_ms(gs.p95_latency_ms)}</td><td class="num">'
            f'{_num(gs.error_count)}</td></tr>' for g, gs in s.groups.items()]
    return _section("groups", f"By {_e(s.by)}", _table(
        (_e(s.by), "traces", "success", "p95", "errors"), rows, (1, 2, 3, 4)))


def _datasets(d: Dashboard) -> str:
    if not d.dataset_versions:
        return _section("datasets", "Dataset versions",
                        '<p class="muted">No dataset versions yet.</p>')
    rows = [f'<tr><td><code>{_e(v.dataset)}</code></td><td class="num">{v.version}</td>'
            f'<td>{_e(v.state)}</td><td class="num">{_num(v.record_count)}</td>'
            f'<td>{iso(v.created_ms)}</td></tr>' for v in d.dataset_versions]
    return _section("datasets", "Dataset versions (newest)", _table(
        ("dataset", "version", "state", "records added", "created (UTC)"), rows, (1, 3)))


def _dead_letters(d: Dashboard) -> str:
    head = (f'<p><span data-metric="dead_letters_in_window" '
            f'data-value="{d.dead_letters_in_window}">{_num(d.dead_letters_in_window)}</span>'
            f' in this window, {_num(d.dead_letters_total)} stored in all.</p>')
    if not d.latest_dead_letters:
        return _section("dead-letters", "Dead letters", head)
    rows = [f'<tr><td>{iso(x.created_ms)}</td><td><code>{_e(x.topic)}</code> '
            f'[{x.partition}] @{x.offset}</td><td><code>{_e(x.error_type)}</code></td>'
            f'<td class="error">{_e(x.error)}</td></tr>' for x in d.latest_dead_letters]
    return _section("dead-letters", "Dead letters", head + _table(
        ("created (UTC)", "origin", "type", "error"), rows))


def _outbox(d: Dashboard) -> str:
    o = d.outbox
    age = _age((d.summary.generated_ms - o.oldest_created_ms) / 1000) \
        if o.oldest_created_ms else "–"
    return _section("outbox", "Tag outbox (write-back to MLflow)", (
        f'<p><span data-metric="outbox_total" data-value="{o.total}">{_num(o.total)}</span> '
        f'row(s) waiting, {_num(o.waiting_for_trace)} for traces MLflow does not know yet; '
        f'oldest: <span data-metric="outbox_oldest_age">{age}</span>.</p>'))


def _charts(d: Dashboard) -> str:
    per = "hour" if d.step_ms == HOUR_MS else "day"
    legend = "".join(f'<span><i class="k-{n}"></i>{n}</span>' for n, _ in LATENCY_SERIES)
    return (f'<div class="grid"><section id="volume"><h2>Traces per {per} (UTC)</h2>'
            f'{bar_chart(d.points, d.step_ms)}</section>'
            f'<section id="success"><h2>Success rate per {per}</h2>'
            f'{success_chart(d.points, d.step_ms)}</section>'
            f'<section id="latency"><h2>Latency per {per}</h2><div class="legend">{legend}'
            f'</div>{latency_chart(d.points, d.step_ms)}</section>'
            f'<section id="errors"><h2>Errors per {per}</h2>'
            f'{bar_chart(d.points, d.step_ms, "errors")}</section></div>')


def _controls(d: Dashboard, live: LiveControls) -> str:
    def query(since: str) -> str:
        q = {"since": since, **({"experiment": live.experiment} if live.experiment else {})}
        return "?" + urlencode(q)

    links = "".join(
        f'<a href="{_e(query(value))}" data-window="{value}"'
        f'{" aria-current=page" if value == live.since else ""}>{label}</a>'
        for value, label in WINDOW_PRESETS)
    choices = list(d.experiments)
    if live.experiment and live.experiment not in choices:
        choices.append(live.experiment)
    options = '<option value="">all experiments</option>' + "".join(
        f'<option value="{_e(x)}"{" selected" if x == live.experiment else ""}>{_e(x)}</option>'
        for x in choices)
    api = live.api_path + query(live.since)
    return (f'<div class="controls"><nav class="windows" aria-label="window">{links}</nav>'
            f'<form method="get" class="filter"><input type="hidden" name="since" '
            f'value="{_e(live.since)}"><label>Experiment <select name="experiment" '
            f'data-autosubmit>{options}</select></label> <button type="submit">Apply</button>'
            f'</form><a href="{_e(api)}" class="muted">JSON</a></div>')


def render(d: Dashboard, live: LiveControls | None = None) -> str:
    """The whole page. ``live``: the worker's page at ``/``; None: the report file."""
    s = d.summary
    st = s.overall
    scope = f"experiment {_e(s.experiment_id)}" if s.experiment_id else "all experiments"
    head = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP_LIVE if live else _CSP_FILE}">',
        f'<meta http-equiv="refresh" content="{int(live.refresh_s)}">' if live else "",
        f"<title>trace-curator report: {_duration(s.until_ms - s.since_ms)}, {scope}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        "<header><h1>trace-curator quality report</h1>",
        f'<p class="meta" id="window" data-since="{iso(s.since_ms)}" '
        f'data-until="{iso(s.until_ms)}">Window: {iso(s.since_ms)} → {iso(s.until_ms)} '
        f"({_duration(s.until_ms - s.since_ms)}) · <span id=\"scope\">{scope}</span></p>",
        f'<p class="meta">Generated {iso(s.generated_ms)}'
        + (f" · refreshes every {int(live.refresh_s)} s" if live else "") + "</p></header>",
        _controls(d, live) if live else "",
    ]
    notes = [n for n in s.notes if n != NO_TRACES_NOTE]
    body = [_kpis(st)]
    if notes:
        body.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    if st.total_traces == 0:
        body.append('<p class="empty" id="empty-state" data-empty="true">'
                    'No traces in this window.</p>')
    else:
        body += [_charts(d), _span_types(st), _assessments(st), _candidates(d), _groups(d)]
    body += ['<div class="grid">', _datasets(d), _dead_letters(d), "</div>", _outbox(d)]
    foot = ('<footer class="meta">Counts and rates are exact; percentiles are within 1% '
            "(merged sketches of the metric buckets). Times are UTC.</footer></main>")
    script = f"<script>{_SCRIPT}</script>" if live else ""
    return "".join(head + body) + foot + script + "</body></html>\n"


def error_page(message: str) -> str:
    """A small page for a bad request (the message is escaped)."""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP_FILE}">'
            f"<title>trace-curator: bad request</title><style>{_CSS}</style></head><body><main>"
            f'<h1>Bad request</h1><p class="error">{_e(message)}</p>'
            '<p><a href="/">Back to the last 24 hours</a></p></main></body></html>\n')
