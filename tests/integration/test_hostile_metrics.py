"""Hostile cardinality in the metric buckets, on both stores: traces with thousands of distinct
span types (and many assessment names) keep at most a fixed number of named entries per trace
and per report, fold the rest into ``other`` with exact counts and totals, stay subtractable
(IN_PROGRESS -> OK, duplicates, stale redeliveries leave the buckets equal to a rebuild), and
the report, the dashboard series and the HTML page of that hour still render."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from consumers.events import Provenance, TraceView
from consumers.formats import decode_assessment, decode_trace
from store.dashboard import gather
from store.engine import make_engine
from store.metrics import MetricsConfig, insert_buckets, rebuild
from store.report import REPORT_NAMES, summary
from store.rollup import (
    FEEDBACK_NAMES_PER_TRACE,
    OTHER,
    StreamRollup,
    TraceFacts,
    contribution,
)
from store.sketch import key_for
from store.upserts import SPAN_TYPES_PER_TRACE, Batch
from store.writer import SqlWriter
from tests import payloads as P
from tests.helpers import bucket_snapshot
from worker.report.page import render
from worker.rules.engine import load_rules

pytestmark = pytest.mark.integration
HOUR = 3_600_000
BASE_MS = 1_795_000_000_000 + 17 * 60_000 + 23_456  # not hour- or minute-aligned
WINDOW = (BASE_MS - BASE_MS % HOUR, BASE_MS - BASE_MS % HOUR + HOUR)
PROV = Provenance("t", 0, 0)
MAX_BYTES = 1 << 26


def _duration_ms(i: int) -> int:
    return i % 97 + 1


def _flat(trace_id: str, types: list[str], *, status: str = "OK", offset_ms: int = 0
          ) -> dict[str, Any]:
    """A flat trace row with one span per entry of ``types`` (span i lasts ``_duration_ms(i)``)."""
    start_ns = (BASE_MS + offset_ms) * 1_000_000
    spans = [{"name": f"s{i}", "span_type": t, "start_time_ns": start_ns,
              "end_time_ns": start_ns + _duration_ms(i) * 1_000_000, "status": "OK"}
             for i, t in enumerate(types)]
    doc: dict[str, Any] = {"trace_id": trace_id, "experiment_id": "1", "name": "agent",
                           "status": status, "timestamp_ms": BASE_MS + offset_ms,
                           "spans": spans}
    if status != "IN_PROGRESS":
        doc["execution_time_ms"] = 1234
    return doc


def _trace(doc: dict[str, Any]) -> Any:
    return decode_trace(P.dumps(doc), PROV, MAX_BYTES)


def _feedback(trace_id: str, name: str, value: float, updated_ms: int = BASE_MS,
              assessment_id: str | None = None) -> Any:
    doc = P.assessment_doc(trace_id=trace_id, value=value, updated_ms=updated_ms,
                           assessment_id=assessment_id)
    doc["assessment_name"] = name
    return decode_assessment(P.dumps(doc), PROV, MAX_BYTES)


def _write(engine: Engine, traces: list[Any] = (), assessments: list[Any] = ()  # type: ignore[assignment]
           ) -> None:
    SqlWriter(engine, load_rules(None), MetricsConfig("environment", None, None)).write(
        Batch(traces=list(traces), assessments=list(assessments)), BASE_MS)


def _span_totals(docs: list[dict[str, Any]]) -> tuple[int, float]:
    spans = [s for d in docs for s in d["spans"]]
    return len(spans), sum((s["end_time_ns"] - s["start_time_ns"]) / 1e9 for s in spans)


def _assert_exact(span_types: dict[str, Any], count: int, total_s: float) -> None:
    assert sum(sp.count for sp in span_types.values()) == count
    assert sum(sp.total_time_s for sp in span_types.values()) == pytest.approx(total_s)


def _rebuilt_equals_live(engine: Engine) -> None:
    live = bucket_snapshot(engine)
    assert live["minute"] and live["hour"]
    with engine.begin() as conn:
        rebuild(conn, MetricsConfig("environment", None, None), BASE_MS)
    assert bucket_snapshot(engine) == live


def test_thousands_of_span_types_fold_into_other(store_url: str) -> None:
    engine = make_engine(store_url)
    docs = [_flat("tr-4k", [f"T{i}" for i in range(4000)]),
            _flat("tr-45k", [f"T{i}" for i in range(45_000)], offset_ms=1000)]
    _write(engine, [_trace(d) for d in docs])

    s = summary(engine, *WINDOW)
    spans = s.overall.span_types
    # The first SPAN_TYPES_PER_TRACE types of each trace, in span order, keep their names.
    assert set(spans) == {f"T{i}" for i in range(SPAN_TYPES_PER_TRACE)} | {OTHER}
    assert all(spans[f"T{i}"].count == 2 for i in range(SPAN_TYPES_PER_TRACE))
    assert spans[OTHER].count == 49_000 - 2 * SPAN_TYPES_PER_TRACE
    assert spans[OTHER].max_time_s == pytest.approx(0.097, rel=0.02)
    _assert_exact(spans, *_span_totals(docs))
    assert s.overall.total_traces == 2
    _rebuilt_equals_live(engine)

    # The dashboard of the hour: the same summary, a series point, and an HTML page.
    d = gather(engine, *WINDOW)
    assert d.summary.overall.span_types == spans
    assert sum(p.traces for p in d.points) == 2
    html = render(d)
    assert 'data-span-type="other"' in html and 'data-span-type="T0"' in html
    assert 'data-span-type="T60"' not in html


def test_versions_of_a_hostile_trace_equal_a_rebuild(store_url: str) -> None:
    engine = make_engine(store_url)
    types = [f"T{i}" for i in range(4000)]
    early = _flat("tr-h", types[::-1][:2500], status="IN_PROGRESS")  # other types kept first
    final = _flat("tr-h", types)
    _write(engine, [_trace(early)])
    assert set(summary(engine, *WINDOW).overall.span_types) == \
        {f"T{i}" for i in range(3999, 3999 - SPAN_TYPES_PER_TRACE, -1)} | {OTHER}
    names = [f"F{i:03d}" for i in range(120)]
    feedback = [_feedback("tr-h", n, i / 100) for i, n in enumerate(names)]
    _write(engine, [_trace(final), _trace(early)], feedback[:70])
    _write(engine, [_trace(final)], feedback[60:])  # a duplicate and a redelivered overlap
    _write(engine, [_trace(early)], [])  # a stale IN_PROGRESS redelivery changes nothing
    # A newer version of one folded assessment moves the `other` figures.
    newer = _feedback("tr-h", names[-1], 0.99, updated_ms=BASE_MS + 60_000,
                      assessment_id=feedback[-1].assessment_id)
    _write(engine, [], [newer])

    s = summary(engine, *WINDOW).overall
    assert set(s.span_types) == {f"T{i}" for i in range(SPAN_TYPES_PER_TRACE)} | {OTHER}
    _assert_exact(s.span_types, *_span_totals([final]))
    assert set(s.assessments) == set(names[:FEEDBACK_NAMES_PER_TRACE]) | {OTHER}
    assert s.assessments[OTHER].count == 120 - FEEDBACK_NAMES_PER_TRACE
    assert sum(a.count for a in s.assessments.values()) == 120
    values = [i / 100 for i in range(119)] + [0.99]
    assert s.assessments[OTHER].mean == pytest.approx(
        sum(values[FEEDBACK_NAMES_PER_TRACE:]) / (120 - FEEDBACK_NAMES_PER_TRACE))
    _rebuilt_equals_live(engine)


def test_many_traces_fill_a_bucket_and_the_report_folds_it(store_url: str) -> None:
    """Each trace stays under the per-trace caps, but together they name more span types and
    assessments than a report lists: the report keeps the largest, the rest is ``other``."""
    engine = make_engine(store_url)
    per_trace, traces = 40, 15
    docs = [_flat(f"tr-{t}", [f"S{t:02d}_{j:02d}" for j in range(per_trace)] + ["LLM"] * t,
                  offset_ms=t * 1000) for t in range(traces)]
    feedback = [_feedback(f"tr-{t}", f"q{t:02d}_{j:02d}", 0.5)
                for t in range(traces) for j in range(20)]
    _write(engine, [_trace(d) for d in docs], feedback)
    s = summary(engine, *WINDOW, by="trace_name")
    for st in (s.overall, s.groups["agent"]):
        assert len(st.span_types) == REPORT_NAMES + 1 and OTHER in st.span_types
        assert st.span_types["LLM"].count == sum(range(traces))  # the largest type is kept
        _assert_exact(st.span_types, *_span_totals(docs))
        assert len(st.assessments) == REPORT_NAMES + 1
        assert sum(a.count for a in st.assessments.values()) == len(feedback)
        assert st.assessments[OTHER].count == len(feedback) - REPORT_NAMES
        assert st.assessments[OTHER].mean == pytest.approx(0.5)
    html = render(gather(engine, *WINDOW))
    assert 'data-span-type="other"' in html
    _rebuilt_equals_live(engine)


def test_buckets_written_before_the_caps_still_report(store_url: str) -> None:
    """Buckets that already hold 45,000 span types (written before the per-trace cap) report
    within the report's cap, with exact totals, and the dashboard of the hour renders."""
    engine = make_engine(store_url)
    summary_45k = {f"T{i}": {"count": 1, "total_ms": float(_duration_ms(i)),
                             "max_ms": float(_duration_ms(i)),
                             "bins": [[key_for(float(_duration_ms(i))), 1]]}
                   for i in range(45_000)}
    view = TraceView("tr-old", "1", "agent", "OK", BASE_MS, 1234, {}, {})
    stream = StreamRollup()
    stream.add(contribution(TraceFacts(view, None, None, None, summary_45k, 1_045_000), [], [],
                            "environment"))
    with engine.begin() as conn:
        insert_buckets(conn, stream.completed(None), BASE_MS)
    spans = summary(engine, *WINDOW).overall.span_types
    assert len(spans) == REPORT_NAMES + 1 and OTHER in spans
    _assert_exact(spans, 45_000, sum(_duration_ms(i) for i in range(45_000)) / 1000)
    d = gather(engine, *WINDOW)
    assert sum(p.traces for p in d.points) == 1
    assert 'data-span-type="other"' in render(d)
