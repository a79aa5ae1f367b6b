"""The fast metric maths of the write path equals the plain definition it replaced.

``contribution``, ``Agg.add``, ``Agg.of`` (a sum built a column at a time) and ``deltas`` (the
contributions of a batch summed per cell before ``expand``) are checked against a reference:
the straightforward code of before the write-path work, kept here verbatim, on random traces
(odd statuses, latencies and tokens past the caps, legacy span rows without bins, feedback,
duplicate candidate tags) and random mixes of added and removed contributions.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.events import TraceView
from store.rollup import (
    HOUR_MS,
    METRIC_MAX_MS,
    METRIC_MAX_TOKENS,
    MINUTE_MS,
    Agg,
    Contribution,
    DeltaKey,
    FeedbackFacts,
    SpanAgg,
    SpanPart,
    TraceFacts,
    _feedback_parts,
    add_deltas,
    bucket_key,
    cells_of_new,
    contribution,
    deltas,
    diff,
    expand,
)
from store.sketch import DEFAULT_MAPPING

T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS


# --- the reference: the code of before, verbatim ------------------------------------------------


def ref_span_parts(summary: Any) -> tuple[SpanPart, ...]:
    parts = []
    for span_type, s in summary.items():
        count = s.get("count", 0)
        if count <= 0:
            continue
        total_ms = s.get("total_ms", 0.0)
        bins = s.get("bins") or ((DEFAULT_MAPPING.key_for(max(total_ms / count, 0.0)), count),)
        total_us = min(round(total_ms * 1000), count * METRIC_MAX_MS * 1000)
        parts.append(SpanPart(span_type, count, total_us, bins))
    return tuple(parts)


def ref_contribution(trace: TraceFacts, feedback: Sequence[FeedbackFacts],
                     candidates: Iterable[tuple[str, str]], dimension_tag: str) -> Contribution:
    view = trace.view
    status = view.status
    latency = view.execution_time_ms
    has_latency = status != "IN_PROGRESS" and latency is not None and latency >= 0
    if latency is not None:
        latency = min(latency, METRIC_MAX_MS)
    scalars = (1, int(status == "OK"), int(status == "ERROR"), int(status == "IN_PROGRESS"),
               int(has_latency), latency if has_latency and latency is not None else 0,
               min(trace.input_tokens or 0, METRIC_MAX_TOKENS),
               min(trace.output_tokens or 0, METRIC_MAX_TOKENS),
               min(trace.total_tokens or 0, METRIC_MAX_TOKENS))
    return Contribution(
        view.timestamp_ms, bucket_key(view, dimension_tag), scalars,
        DEFAULT_MAPPING.key_for(float(latency)) if has_latency and latency is not None else None,
        ref_span_parts(trace.span_summary or {}),
        _feedback_parts(feedback),
        tuple(sorted(set(candidates))))


def ref_add_bins(into: dict[int, int], bins: Iterable[Sequence[int]], sign: int) -> None:
    for k, n in bins:
        left = into.get(k, 0) + sign * n
        if left:
            into[k] = left
        else:
            del into[k]


def ref_add(agg: Agg, c: Contribution, sign: int = 1) -> None:
    sc = agg.scalars
    for i, v in enumerate(c.scalars):
        sc[i] += sign * v
    if c.latency_bin is not None:
        ref_add_bins(agg.latency, ((c.latency_bin, 1),), sign)
    for sp in c.spans:
        span = agg.spans.get(sp.span_type)
        if span is None:
            span = agg.spans[sp.span_type] = SpanAgg()
        span.count += sign * sp.n
        span.total_us += sign * sp.total_us
        ref_add_bins(span.bins, sp.bins, sign)
        if not span.count and not span.total_us and not span.bins:
            del agg.spans[sp.span_type]
    for fp in c.feedback:
        agg._add_feedback(fp, sign)
    for tag_key, value in c.candidates:
        per_key = agg.candidates.setdefault(tag_key, {})
        left = per_key.get(value, 0) + sign
        if left:
            per_key[value] = left
        else:
            del per_key[value]
            if not per_key:
                del agg.candidates[tag_key]


def ref_diff(removed: Sequence[Contribution], added: Sequence[Contribution]
             ) -> dict[DeltaKey, Agg]:
    cells: dict[DeltaKey, Agg] = {}
    for c, sign in [*((c, -1) for c in removed), *((c, 1) for c in added)]:
        dk = ("minute", c.timestamp_ms - c.timestamp_ms % MINUTE_MS, c.key)
        ref_add(cells.setdefault(dk, Agg()), c, sign)
    return expand(cells)


# --- random traces -------------------------------------------------------------------------------

durations = st.one_of(st.floats(0.0, 1e4), st.sampled_from([0.0, 1e-4, 0.5, 1e9]))
span_entry = st.builds(
    lambda ds, legacy: ({"count": len(ds), "total_ms": sum(ds), "max_ms": max(ds, default=0.0)}
                        if legacy else
                        {"count": len(ds), "total_ms": sum(ds), "max_ms": max(ds, default=0.0),
                         "bins": _bins(ds)}),
    st.lists(durations, min_size=0, max_size=4), st.booleans())


def _bins(ds: list[float]) -> list[list[int]]:
    out: dict[int, int] = {}
    for d in ds:
        k = DEFAULT_MAPPING.key_for(d)
        out[k] = out.get(k, 0) + 1
    return [[k, n] for k, n in out.items()]


feedback_facts = st.builds(
    FeedbackFacts, st.text("ab", min_size=1, max_size=3), st.sampled_from(["q", "r", "s"]),
    st.one_of(st.none(), st.booleans(), st.sampled_from(["yes", "No", "pass", "x"]),
              st.floats(-5, 5)),
    st.one_of(st.none(), st.floats(allow_infinity=False), st.just(float("nan"))),
    st.one_of(st.none(), st.just("judge failed")))
tokens = st.one_of(st.none(), st.integers(-3, 2 * METRIC_MAX_TOKENS))


@st.composite
def traces(draw: Any) -> tuple[TraceFacts, list[FeedbackFacts], list[tuple[str, str]]]:
    status = draw(st.sampled_from(["OK", "ERROR", "IN_PROGRESS"]))
    latency = draw(st.one_of(st.none(), st.integers(-5, 2 * METRIC_MAX_MS)))
    env = draw(st.sampled_from(["prod", "dev", ""]))
    view = TraceView(draw(st.text("xyz", min_size=1, max_size=3)),
                     draw(st.sampled_from([None, "1", "2"])),
                     draw(st.sampled_from([None, "bot", "agent"])), status,
                     T0 + draw(st.integers(0, 2 * HOUR_MS)), latency,
                     {"environment": env} if env else {},
                     draw(st.sampled_from([{}, {"environment": "meta"}])))
    summary = draw(st.one_of(st.none(), st.dictionaries(
        st.sampled_from(["LLM", "TOOL", "CHAIN", "other"]), span_entry, max_size=4)))
    facts = TraceFacts(view, draw(tokens), draw(tokens), draw(tokens), summary or {},
                       1_000_000)
    candidates = draw(st.lists(st.tuples(st.sampled_from(["k1", "k2"]),
                                         st.sampled_from(["a", "b"])), max_size=3))
    return facts, draw(st.lists(feedback_facts, max_size=3)), candidates


# --- the properties -------------------------------------------------------------------------------


@given(traces())
def test_contribution_equals_the_reference(t: Any) -> None:
    facts, feedback, candidates = t
    assert contribution(facts, feedback, candidates, "environment") == \
        ref_contribution(facts, feedback, candidates, "environment")
    assert contribution(facts, feedback, iter(candidates), "environment") == \
        ref_contribution(facts, feedback, candidates, "environment")


@settings(max_examples=200)
@given(st.lists(st.tuples(traces(), st.sampled_from([1, -1, 2])), max_size=25))
def test_add_and_of_equal_the_reference(ops: list[Any]) -> None:
    cs = [(ref_contribution(*t, "environment"), sign) for t, sign in ops]
    fast, ref = Agg(), Agg()
    for c, sign in cs:
        fast.add(c, sign)
        ref_add(ref, c, sign)
    assert fast == ref
    positive = [c for c, _ in cs]
    ref = Agg()
    for c in positive:
        ref_add(ref, c)
    assert Agg.of(positive) == ref


@settings(max_examples=200)
@given(st.lists(traces(), max_size=30), st.lists(traces(), max_size=10), st.randoms())
def test_deltas_of_a_batch_equal_the_per_trace_deltas(
        new: list[Any], gone: list[Any], rnd: random.Random) -> None:
    added = [contribution(*t, "environment") for t in new]
    removed = [contribution(*t, "environment") for t in gone]
    # Some traces are removed and added back unchanged: their deltas cancel to nothing.
    again = rnd.sample(added, len(added) // 3)
    assert deltas([*removed, *again], [*added, *again]) == ref_diff([*removed, *again],
                                                                   [*added, *again])
    assert deltas([], added) == ref_diff([], added) == diff(
        {}, {str(i): c for i, c in enumerate(added)})
    per_trace: dict[DeltaKey, Agg] = {}
    for c in added:
        add_deltas(per_trace, c, 1)
    assert deltas([], added) == expand(per_trace)


@settings(max_examples=200)
@given(st.lists(traces(), max_size=30), st.lists(traces(), max_size=5))
def test_cells_of_new_traces_equal_their_contributions(new: list[Any], old: list[Any]) -> None:
    cells = cells_of_new([(f.view, f.input_tokens, f.output_tokens, f.total_tokens,
                           f.span_summary, fb, cands) for f, fb, cands in new], "environment")
    reference: dict[DeltaKey, Agg] = {}
    for t in new:
        c = ref_contribution(*t, "environment")
        ref_add(reference.setdefault(
            ("minute", c.timestamp_ms - c.timestamp_ms % MINUTE_MS, c.key), Agg()), c, 1)
    assert cells == reference
    removed = [contribution(*t, "environment") for t in old]
    assert deltas(removed, [], cells) == ref_diff(removed, [ref_contribution(*t, "environment")
                                                            for t in new])
