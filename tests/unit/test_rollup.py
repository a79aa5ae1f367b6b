"""The pure metric maths: contributions, signed aggregates, diffs, and the report figures."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.events import Provenance, SpanSummary, TraceEvent, TraceView
from store import report
from store.metrics import bucket_row
from store.report import REPORT_NAMES, bucket_ranges, rollup_for, stats_of, window
from store.rollup import (
    FEEDBACK_NAMES_PER_TRACE,
    HOUR_MS,
    MINUTE_MS,
    OTHER,
    Agg,
    BucketKey,
    FeedbackFacts,
    StreamRollup,
    TraceFacts,
    contribution,
    diff,
    expand,
    verdict,
)
from store.sketch import key_for
from store.upserts import SPAN_TYPES_PER_TRACE, span_summary
from worker.report.text import bar, to_csv, to_json, to_table

T0 = 1_795_000_000_000


def facts(tid: str = "t1", *, status: str = "OK", latency: int | None = 120, ts: int = T0,
          env: str = "prod", name: str = "bot", spans: dict[str, Any] | None = None,
          completeness: int = 1_000_002) -> TraceFacts:
    summary = spans if spans is not None else {
        "CHAT_MODEL": {"count": 2, "total_ms": 90.5, "max_ms": 60.0,
                       "bins": [[key_for(30.5), 1], [key_for(60.0), 1]]}}
    view = TraceView(tid, "1", name, status, ts, latency, {"environment": env}, {})
    return TraceFacts(view, 10, 5, 15, summary, completeness)


def fb(name: str, value: Any, numeric: float | None, aid: str = "a1") -> FeedbackFacts:
    return FeedbackFacts(aid, name, value, numeric, None)


def test_contribution_counts_status_latency_tokens_spans_feedback_and_candidates() -> None:
    c = contribution(facts(), [fb("relevance", 0.25, 0.25), fb("helpful", "no", 0.0, "a2")],
                     [("eval_candidate", "low_score")], "environment")
    assert c.key == BucketKey(0, "1", "bot", "prod")
    agg = Agg()
    agg.add(c)
    s = stats_of(agg)
    assert (s.total_traces, s.ok_count, s.error_count, s.avg_latency_ms) == (1, 1, 0, 120.0)
    assert s.tokens == {"input": 10, "output": 5, "total": 15}
    assert s.span_types["CHAT_MODEL"].count == 2
    assert s.span_types["CHAT_MODEL"].total_time_s == pytest.approx(0.0905)
    assert s.span_types["CHAT_MODEL"].max_time_s == pytest.approx(0.060, rel=0.01)
    assert s.assessments["relevance"].mean == pytest.approx(0.25)
    assert s.assessments["relevance"].pass_rate is None
    assert s.assessments["helpful"].pass_rate == 0.0
    assert s.candidates == {"low_score": 1}
    assert s.candidates_by_tag == {"eval_candidate": {"low_score": 1}}


def test_in_progress_traces_count_but_have_no_latency() -> None:
    c = contribution(facts(status="IN_PROGRESS", latency=None), [], [], "environment")
    agg = Agg()
    agg.add(c)
    s = stats_of(agg)
    assert (s.total_traces, s.in_progress_count, s.success_rate) == (1, 1, 0.0)
    assert s.p95_latency_ms == 0.0 and not agg.latency


def test_dimension_falls_back_to_metadata_then_empty() -> None:
    f = facts()
    f = f._replace(view=f.view._replace(tags={}, metadata={"environment": "meta-env"}))
    assert contribution(f, [], [], "environment").key.dimension == "meta-env"
    bare = facts()
    bare = bare._replace(view=bare.view._replace(tags={}))
    assert contribution(bare, [], [], "environment").key.dimension == ""


def test_a_row_without_span_bins_contributes_all_spans_at_the_mean() -> None:
    legacy = {"TOOL": {"count": 4, "total_ms": 40.0, "max_ms": 20.0}}
    c = contribution(facts(spans=legacy), [], [], "environment")
    assert c.spans[0].bins == ((key_for(10.0), 4),)


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), ("yes", True), ("No", False), (" PASS ", True), ("fail", False),
    ("maybe", None), (0.7, None), (None, None), ({"a": 1}, None),
])
def test_verdict(value: Any, expected: bool | None) -> None:
    assert verdict(value) is expected


def test_subtracting_a_contribution_restores_the_aggregate_exactly() -> None:
    a = contribution(facts("t1"), [fb("relevance", 0.3, 0.3)], [("k", "v")], "environment")
    b = contribution(facts("t2", latency=999, status="ERROR"), [], [], "environment")
    agg = Agg()
    agg.add(a)
    snapshot = Agg()
    snapshot.merge(agg)
    agg.add(b)
    agg.add(b, -1)
    assert agg == snapshot
    agg.add(a, -1)
    assert agg.is_zero()


def test_negative_part_names_what_went_below_zero() -> None:
    agg = Agg()
    agg.add(contribution(facts(), [], [], "environment"), -1)
    assert agg.negative_part() == "traces=-1"
    ok = Agg()
    ok.add(contribution(facts(), [fb("score", -3.0, -3.0)], [], "environment"))
    assert ok.negative_part() is None  # a negative numeric feedback sum is fine


def test_diff_is_zero_for_unchanged_and_moves_a_trace_between_buckets() -> None:
    before = {"t1": contribution(facts(name="warming_up", status="IN_PROGRESS", latency=None),
                                 [], [], "environment")}
    assert diff(before, before) == {}
    after = {"t1": contribution(facts(), [], [], "environment")}
    deltas = diff(before, after)
    minute = T0 - T0 % MINUTE_MS
    old_key, new_key = BucketKey(0, "1", "warming_up", "prod"), BucketKey(0, "1", "bot", "prod")
    assert deltas[("minute", minute, old_key)].scalars[0] == -1
    assert deltas[("minute", minute, new_key)].scalars[0] == 1
    # The coarser levels see the status change but not the rename.
    level2 = deltas[("hour", T0 - T0 % HOUR_MS, BucketKey(2, "", "", ""))]
    assert level2.scalars[:4] == [0, 1, 0, -1]


@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3 * HOUR_MS),
                          st.sampled_from(["OK", "ERROR", "IN_PROGRESS"]),
                          st.integers(1, 50_000)), min_size=1, max_size=40), st.randoms())
def test_any_order_of_adds_and_removals_gives_the_same_buckets(
        ops: list[tuple[int, int, str, int]], rnd: random.Random) -> None:
    contributions = [contribution(
        facts(f"t{i}", status=s, latency=None if s == "IN_PROGRESS" else lat, ts=T0 + off,
              env=f"e{i % 2}"), [], [("tag", f"v{i % 3}")], "environment")
        for i, off, s, lat in ops]
    forward = diff({}, {str(i): c for i, c in enumerate(contributions)})
    shuffled = list(enumerate(contributions))
    rnd.shuffle(shuffled)
    total: dict[Any, Agg] = {}
    for i, c in shuffled:  # add everything, then remove and re-add some: same result
        for k, v in diff({}, {str(i): c}).items():
            total.setdefault(k, Agg()).merge(v)
    for i, c in shuffled[: len(shuffled) // 2]:
        for k, v in diff({str(i): c}, {}).items():
            total.setdefault(k, Agg()).merge(v)
        for k, v in diff({}, {str(i): c}).items():
            total.setdefault(k, Agg()).merge(v)
    assert {k: v for k, v in total.items() if not v.is_zero()} == forward


def test_stream_rollup_hands_over_each_bucket_once_and_equals_expand() -> None:
    contributions = [contribution(facts(f"t{i}", ts=T0 + i * 7 * MINUTE_MS // 3), [], [],
                                  "environment") for i in range(100)]
    stream = StreamRollup()
    got: dict[Any, Agg] = {}
    for c in contributions:
        stream.add(c)
        for k, v in stream.completed(c.timestamp_ms).items():
            assert k not in got
            got[k] = v
    got.update(stream.completed(None))
    assert got == diff({}, {str(i): c for i, c in enumerate(contributions)})
    assert expand({}) == {}


def test_window_rounds_to_minutes_and_tiles_hours_and_edges() -> None:
    h = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS
    assert window(h + 61_500, h + 3 * HOUR_MS + 1) == (h + 60_000, h + 3 * HOUR_MS + 60_000)
    assert bucket_ranges(h + 60_000, h + 3 * HOUR_MS + 120_000) == [
        ("minute", h + 60_000, h + HOUR_MS), ("hour", h + HOUR_MS, h + 3 * HOUR_MS),
        ("minute", h + 3 * HOUR_MS, h + 3 * HOUR_MS + 120_000)]
    assert bucket_ranges(h, h + 2 * HOUR_MS) == [("hour", h, h + 2 * HOUR_MS)]
    assert bucket_ranges(h + 60_000, h + 120_000) == [("minute", h + 60_000, h + 120_000)]


def test_rollup_level_is_the_coarsest_that_answers() -> None:
    assert rollup_for(None, None) == 2
    assert rollup_for(None, "3") == 1 and rollup_for("experiment", None) == 1
    assert rollup_for("trace_name", "3") == 0 and rollup_for("environment", None) == 0


def test_bar_chart_scales_to_the_peak() -> None:
    assert bar(0, 10) == "" and bar(5, 0) == ""
    assert bar(10, 10, width=8) == "█" * 8
    assert bar(1, 10, width=8) == "▊"  # 0.8 of a cell, in eighths
    assert len(bar(3, 10, width=40)) == 12


def test_formats_render_an_empty_summary_without_nan() -> None:
    from store.report import NO_TRACES_NOTE, Summary

    s = Summary(T0, T0 + HOUR_MS, T0, None, None, stats_of(Agg()),
                {"2026-11-18T00:00:00Z": 0}, {}, (NO_TRACES_NOTE,))
    for text in (to_table(s), to_json(s), to_csv(s)):
        assert "nan" not in text.lower()
    assert "Note: no traces in this window" in to_table(s)
    assert to_csv(s).splitlines()[0].startswith("total_traces,")


# --- caps on free-form names: per trace (stored summary, feedback) and per report group ----


def _event(types: list[str], durations_ms: list[float]) -> Any:
    spans = tuple(SpanSummary(f"s{i}", t, d, "OK")
                  for i, (t, d) in enumerate(zip(types, durations_ms, strict=True)))
    return TraceEvent("t1", "1", "bot", "OK", T0, 100, None, None, {}, {}, None, None, None,
                      spans, "flat", Provenance("t", 0, 0))


def test_span_summary_keeps_the_first_types_and_folds_the_rest_exactly() -> None:
    rng = random.Random(3)
    n_types = SPAN_TYPES_PER_TRACE + 70
    types = [f"T{rng.randrange(n_types)}" for _ in range(2000)] + [OTHER] * 3
    durations = [rng.choice((0.0, 1.5, 12.0, 400.0, 9000.0)) for _ in types]
    out = span_summary(_event(types, durations))
    first = list(dict.fromkeys(t for t in types if t != OTHER))[:SPAN_TYPES_PER_TRACE]
    assert [t for t in out if t != OTHER] == first  # in span order
    assert sum(a["count"] for a in out.values()) == len(types)
    assert sum(a["total_ms"] for a in out.values()) == pytest.approx(sum(durations))
    folded = [d for t, d in zip(types, durations, strict=True) if t not in first]
    assert out[OTHER]["count"] == len(folded) and out[OTHER]["max_ms"] == max(folded)
    assert sum(n for _, n in out[OTHER]["bins"]) == len(folded)
    for t in first:
        mine = [d for u, d in zip(types, durations, strict=True) if u == t]
        assert out[t]["count"] == len(mine)
        assert dict(out[t]["bins"]) == {k: sum(1 for d in mine if key_for(d) == k)
                                        for k in {key_for(d) for d in mine}}
    small = span_summary(_event(["A", "B", "A"], [1.0, 2.0, 3.0]))
    assert small == {"A": {"count": 2, "total_ms": 4.0, "max_ms": 3.0,
                           "bins": [[key_for(1.0), 1], [key_for(3.0), 1]]},
                     "B": {"count": 1, "total_ms": 2.0, "max_ms": 2.0,
                           "bins": [[key_for(2.0), 1]]}}


def test_feedback_names_beyond_the_cap_count_under_other() -> None:
    names = [f"n{i:03d}" for i in range(FEEDBACK_NAMES_PER_TRACE + 5)]
    feedback = [fb(n, 0.5, 0.5, f"a{i}") for i, n in enumerate(reversed(names))]
    c = contribution(facts(), feedback, [], "environment")
    agg = Agg()
    agg.add(c)
    assert set(agg.feedback) == set(names[:FEEDBACK_NAMES_PER_TRACE]) | {OTHER}
    assert agg.feedback[OTHER].count == 5 and agg.feedback[OTHER].numeric_sum_micro == 2_500_000
    assert contribution(facts(), list(reversed(feedback)), [], "environment") == c
    agg.add(c, -1)
    assert agg.is_zero()


def test_report_lists_the_largest_names_and_folds_the_rest_exactly() -> None:
    agg = Agg()
    for i in range(REPORT_NAMES + 30):
        spans = {f"T{i:03d}": {"count": 1 + i % 7, "total_ms": 10.0 * (1 + i % 7),
                               "max_ms": 10.0, "bins": [[key_for(10.0), 1 + i % 7]]}}
        agg.add(contribution(facts(f"t{i}", spans=spans), [fb(f"f{i:03d}", 1.0, 1.0)], [],
                             "environment"))
    s = stats_of(agg)
    assert len(s.span_types) == REPORT_NAMES + 1 and len(s.assessments) == REPORT_NAMES + 1
    assert sum(sp.count for sp in s.span_types.values()) == sum(
        sp.count for sp in agg.spans.values())
    assert min(sp.count for t, sp in s.span_types.items() if t != OTHER) >= max(
        sp.count for t, sp in agg.spans.items() if t not in s.span_types)
    assert s.span_types[OTHER].max_time_s == pytest.approx(0.010, rel=0.01)
    assert s.assessments[OTHER].count == 30 and s.assessments[OTHER].mean == 1.0


def test_sparse_and_dense_histogram_sums_agree(monkeypatch: Any) -> None:
    rng = random.Random(8)
    rows = []
    for b in range(6):
        agg = Agg()
        for i in range(40):
            t = f"T{rng.randrange(300)}"
            spans = {t: {"count": 2, "total_ms": 3.0, "max_ms": 2.0,
                         "bins": [[key_for(rng.uniform(0, 5000)), 1], [key_for(2.0), 1]]}}
            agg.add(contribution(facts(f"t{b}-{i}", latency=rng.randrange(1, 9000),
                                       spans=spans), [], [], "environment"))
        rows.append(bucket_row(T0, BucketKey(2, "", "", ""), agg, T0))

    def merged() -> Agg:
        acc = report.GroupAccumulator()
        for r in rows:
            acc.add_row(r[5:14], r[18], r[19], r[20], r[21])
        return acc.to_agg()

    sparse = merged()
    monkeypatch.setattr(report, "DENSE_MAX_SLOTS", 1 << 40)
    assert merged() == sparse
    assert sum(sp.count for sp in sparse.spans.values()) == 6 * 40 * 2
