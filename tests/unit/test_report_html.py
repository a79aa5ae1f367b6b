"""The HTML renderer, pure: an empty window, escaping of every string from the data, one bar and
one point per hour (or day), no external resource, and figures marked with their exact value."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from store.dashboard import DAY_MS, Dashboard, DeadLetterInfo, Example, Point
from store.datasets import VersionRow
from store.outbox import OutboxStats
from store.report import NO_TRACES_NOTE, AssessmentStats, SpanTypeStats, Summary, stats_of
from store.rollup import HOUR_MS, Agg
from worker.report.page import LiveControls, error_page, render

T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS  # an hour start
EVIL = '<script>window.__pwned=1</script>"\'&'


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of <script> and <style> elements."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def _points(n: int, step_ms: int = HOUR_MS, gaps: tuple[int, ...] = ()) -> tuple[Point, ...]:
    out = []
    for i in range(n):
        if i in gaps:
            out.append(Point(T0 + i * step_ms, 0, 0, 0, None, None, None, None))
        else:
            out.append(Point(T0 + i * step_ms, 10 + i, 9 + i, 1, (9 + i) / (10 + i),
                             100.0 + i, 200.5 + i, 300.25 + i))
    return tuple(out)


def _summary(points: tuple[Point, ...], step_ms: int = HOUR_MS, **stats: Any) -> Summary:
    base = stats_of(Agg())
    total = sum(p.traces for p in points)
    overall = dataclasses.replace(base, **{
        "total_traces": total, "ok_count": sum(p.ok for p in points),
        "error_count": sum(p.errors for p in points),
        "success_rate": sum(p.ok for p in points) / total if total else 0.0,
        "avg_latency_ms": 123.456 if total else 0.0, "p50_latency_ms": 101.5 if total else 0.0,
        "p95_latency_ms": 220.75 if total else 0.0, "p99_latency_ms": 333.125 if total else 0.0,
        **stats})
    since, until = T0, T0 + len(points) * step_ms
    hourly = {f"h{i}": p.traces for i, p in enumerate(points)}
    return Summary(since, until, until + 5000, None, None, overall, hourly,
                   notes=() if total else (NO_TRACES_NOTE,))


def _dashboard(points: tuple[Point, ...], step_ms: int = HOUR_MS, **kwargs: Any) -> Dashboard:
    summary = kwargs.pop("summary", None) or _summary(points, step_ms)
    return Dashboard(summary=summary, step_ms=step_ms, points=points, **kwargs)


def _evil_dashboard() -> Dashboard:
    points = _points(6)
    summary = _summary(
        points,
        span_types={EVIL: SpanTypeStats(3, 1.5, 0.5, 0.9, 0.8)},
        assessments={EVIL: AssessmentStats(4, 0.5, 0.75, 3, 1, 0)},
        candidates={EVIL: 2}, candidates_by_tag={EVIL: {EVIL: 2}})
    summary = dataclasses.replace(summary, experiment_id=EVIL, by="trace_name",
                                  groups={EVIL: summary.overall},
                                  notes=(EVIL,))
    return _dashboard(
        points, summary=summary,
        examples={(EVIL, EVIL): (Example(EVIL, T0, "ERROR", EVIL),)},
        dataset_versions=(VersionRow(EVIL, 1, "done", T0, T0, 2, "d" * 64, {EVIL: 2}, 1,
                                     None),),
        dead_letters_in_window=1, dead_letters_total=1,
        latest_dead_letters=(DeadLetterInfo(EVIL, 0, 7, EVIL, EVIL, T0),),
        outbox=OutboxStats(2, 1, T0), experiments=("1", EVIL))


# --- empty window ----------------------------------------------------------------------------


@pytest.mark.parametrize("live", [None, LiveControls()])
def test_an_empty_window_says_so_without_nan(live: LiveControls | None) -> None:
    page = render(_dashboard(_points(24, gaps=tuple(range(24)))), live)
    tags = Tags(page)
    assert tags.find("p", id="empty-state")
    assert "No traces in this window." in page
    assert not re.search(r"\bnan\b|\binf\b|NaN|Infinity|None", page)
    assert not tags.find("svg", **{"class": "chart"})  # no empty charts
    assert tags.find("span", data_metric="total_traces", data_value="0")
    # The other sections stay: they do not depend on traces.
    for sid in ("datasets", "dead-letters", "outbox"):
        assert tags.find("section", id=sid)


def test_a_window_without_any_step_renders() -> None:
    page = render(_dashboard(()))
    assert "No traces in this window." in page


# --- escaping --------------------------------------------------------------------------------


@pytest.mark.parametrize("live", [None, LiveControls(since=EVIL, experiment=EVIL)])
def test_every_string_from_the_data_is_escaped(live: LiveControls | None) -> None:
    page = render(_evil_dashboard(), live)
    assert "<script>window" not in page
    assert "window.__pwned" in page  # shown, as text
    escaped = "&lt;script&gt;window.__pwned=1&lt;/script&gt;&quot;&#x27;&amp;"
    # trace id and preview, tag key and value (table and example), span type, assessment,
    # dataset, dead letter topic / type / error, experiment, group, note.
    assert page.count(escaped) >= 12
    tags = Tags(page)
    assert len(tags.scripts) == (1 if live else 0)  # only the page's own script
    assert all("__pwned" not in s for s in tags.scripts)
    # Attribute values decode back to the original string (quotes could not break out).
    assert tags.find("tr", data_tag_value=EVIL)
    if live is not None:
        assert tags.find("option", value=EVIL)


def test_the_error_page_escapes_its_message() -> None:
    page = error_page(EVIL)
    assert "<script>window" not in page and "&lt;script&gt;" in page


# --- charts ----------------------------------------------------------------------------------


def test_one_bar_and_one_point_per_hour() -> None:
    page = render(_dashboard(_points(24)))
    tags = Tags(page)
    assert len(tags.find("rect", **{"class": "bar traces"})) == 24
    assert len(tags.find("rect", **{"class": "bar errors"})) == 24
    for series in ("rate", "p50", "p95", "p99"):
        assert len(_dots(page, series)) == 24, series
    for chart in ("volume", "success", "latency", "errors"):
        svg = tags.find("svg", data_chart=chart)
        assert svg and svg[0]["data-points"] == "24"
        assert svg[0]["viewbox"] and svg[0]["viewbox"].startswith("0 0 ")
    # Each dot carries its exact value.
    assert [float(a["data-value"] or "") for a in _dots(page, "p95")] == [
        200.5 + i for i in range(24)]


def test_an_hour_without_traces_is_a_zero_bar_and_a_gap() -> None:
    page = render(_dashboard(_points(24, gaps=(5, 6))))
    tags = Tags(page)
    bars = tags.find("rect", **{"class": "bar traces"})
    assert len(bars) == 24 and [b["data-value"] for b in bars[5:7]] == ["0", "0"]
    assert len(_dots(page, "p95")) == 22
    path = re.search(r'data-series="p95"><path d="([^"]+)"', page)
    assert path and path.group(1).count("M") == 2  # the line restarts after the gap


def test_long_windows_are_charted_per_day() -> None:
    points = _points(30, DAY_MS)
    page = render(_dashboard(points, DAY_MS))
    assert "Traces per day" in page
    assert len(Tags(page).find("rect", **{"class": "bar traces"})) == 30


def _dots(page: str, series: str) -> list[dict[str, str | None]]:
    block = re.search(rf'<g class="series s-{series}" data-series="{series}">(.*?)</g>', page)
    assert block, series
    return Tags(block.group(1)).find("circle")


# --- self-contained, phone-ready -------------------------------------------------------------


@pytest.mark.parametrize("live", [None, LiveControls(experiment="2")])
def test_no_external_resource(live: LiveControls | None) -> None:
    page = render(_evil_dashboard(), live)
    tags = Tags(page)
    for tag, attrs in tags.tags:
        for name in ("src", "href", "action", "xlink:href", "data", "poster"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "javascript:")), (tag, attrs)
        assert tag not in ("link", "img", "iframe", "object", "embed")
        assert not (tag == "script" and "src" in attrs)
    css = "".join(tags.styles)
    assert "@import" not in css and "url(" not in css
    assert "http://" not in page and "https://" not in page
    csp = tags.find("meta", http_equiv="Content-Security-Policy")
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")


def test_the_live_script_runs_by_its_hash() -> None:
    page = render(_dashboard(_points(3)), LiveControls())
    tags = Tags(page)
    (script,) = tags.scripts
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = tags.find("meta", http_equiv="Content-Security-Policy")[0]["content"] or ""
    assert f"'sha256-{digest}'" in csp and "unsafe-inline'" not in csp.split("script-src")[1]


def test_phone_ready_and_refreshing_only_when_live() -> None:
    d = _dashboard(_points(3))
    file_page, live_page = render(d), render(d, LiveControls(since="7d", experiment="2"))
    for page in (file_page, live_page):
        assert Tags(page).find("meta", name="viewport")
        assert "svg.chart{display:block;width:100%;height:auto}" in page
    assert not Tags(file_page).find("meta", http_equiv="refresh")
    assert Tags(live_page).find("meta", http_equiv="refresh", content="30")
    links = {a["data-window"]: a for a in Tags(live_page).find("a") if a.get("data-window")}
    assert set(links) == {"1h", "24h", "7d"}
    assert links["1h"]["href"] == "?since=1h&experiment=2"  # the filter is kept
    assert "aria-current" in links["7d"] and "aria-current" not in links["1h"]


def test_figures_carry_their_exact_values() -> None:
    d = _dashboard(_points(5))
    tags = Tags(render(d))
    want = d.summary.to_dict()
    for metric in ("total_traces", "error_count", "success_rate", "avg_latency_ms",
                   "p50_latency_ms", "p95_latency_ms", "p99_latency_ms"):
        (el,) = tags.find("span", data_metric=metric)
        assert float(el["data-value"] or "") == want[metric], metric
    assert tags.find("span", data_metric="outbox_total")
