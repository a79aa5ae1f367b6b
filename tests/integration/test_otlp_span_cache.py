"""A trace whose spans all came through this process is assembled from the span texts it kept,
and from the store otherwise: a span another worker stored, or a trace pruned and made anew
meanwhile, sends assembly back to the store. Both stores; two ``SqlWriter``s on one store stand
for two workers (each has its own cache)."""

from __future__ import annotations

from typing import Any

import pytest

from consumers.assembly import ROOT_MISSING_KEY
from consumers.events import TraceEvent
from store.otlp_buffer import OtlpConfig, emit_due, span_json
from store.writer import SqlWriter
from tests.integration.test_otlp_caps import NOW_MS, batch, children, root, stored
from tests.integration.test_otlp_ingest import tid
from worker.rules.engine import load_rules

pytestmark = pytest.mark.integration

CFG = OtlpConfig(quiet_ms=200)


def due(engine: Any, now_ms: int, writer: SqlWriter | None) -> list[TraceEvent]:
    """The events one emission makes now, from ``writer``'s cache (None: from the store alone);
    rolled back, so the traces stay due."""
    with engine.connect() as conn, conn.begin() as tx:
        events = emit_due(conn, now_ms, CFG,
                          cache=writer.span_cache if writer is not None else None).events
        tx.rollback()
    return events


def names(e: TraceEvent) -> list[str]:
    return sorted(s.name for s in e.spans)


def test_traces_buffered_here_are_assembled_from_the_cache_as_from_the_store(
        engine: Any) -> None:
    writer = SqlWriter(engine, load_rules(None), None, otlp=CFG)
    spans = [root(1), *children(1, 2, 5)]
    writer.write(batch(*spans[:2], root(2)), NOW_MS)
    writer.write(batch(*spans[2:], *children(2, 2, 3)), NOW_MS + 50)  # trace 1 in two batches
    from_store = due(engine, NOW_MS + 1_000, None)
    assert [len(e.spans) for e in from_store] == [5, 3]
    assert due(engine, NOW_MS + 1_000, writer) == from_store
    assert (writer.span_cache.hits, writer.span_cache.misses) == (2, 0)
    assert len(writer.span_cache) == 0  # taken by assembly


def test_a_span_another_worker_stored_sends_assembly_to_the_store(engine: Any,
                                                                 store_url: str) -> None:
    a = SqlWriter(engine, load_rules(None), None, otlp=CFG)
    b = SqlWriter(engine, load_rules(None), None, otlp=CFG)
    a.write(batch(root(3), *children(3, 2, 3)), NOW_MS)
    b.write(batch(*children(3, 4, 4)), NOW_MS + 10)  # the same trace, at another worker
    a.write(batch(*children(3, 5, 5)), NOW_MS + 20)  # and here again: the entry is stale
    assert a.emit_otlp(NOW_MS + 1_000, CFG).traces == 1
    assert (a.span_cache.hits, a.span_cache.misses) == (0, 1)
    assert stored(store_url)["traces"]["tr-" + tid(3).hex()].span_count == 5


def test_a_span_another_worker_stored_after_ours_is_assembled_too(engine: Any) -> None:
    a = SqlWriter(engine, load_rules(None), None, otlp=CFG)
    b = SqlWriter(engine, load_rules(None), None, otlp=CFG)
    a.write(batch(root(4), *children(4, 2, 3)), NOW_MS)
    b.write(batch(*children(4, 4, 4)), NOW_MS + 10)
    (event,) = due(engine, NOW_MS + 1_000, a)
    assert names(event) == ["agent", "tool2", "tool3", "tool4"]
    assert a.span_cache.misses == 1 and a.span_cache.hits == 0


def test_a_trace_pruned_and_made_anew_elsewhere_is_read_from_the_store(engine: Any) -> None:
    a = SqlWriter(engine, load_rules(None), None, otlp=CFG)
    b = SqlWriter(engine, load_rules(None), None, otlp=CFG)
    a.write(batch(root(5)), NOW_MS)  # cached here: the root alone
    b.write(batch(*children(5, 2, 2)), NOW_MS + 10)
    assert b.emit_otlp(NOW_MS + 1_000, CFG).traces == 1  # assembled by the other worker
    assert b.emit_otlp(NOW_MS + 2_000, CFG._replace(keep_ms=0)).pruned == 1
    # Late spans make the trace anew: one at the other worker, then one here. The trace now
    # holds two spans, as many as this cache's stale root and the new span.
    b.write(batch(*children(5, 3, 3)), NOW_MS + 3_000)
    a.write(batch(*children(5, 4, 4)), NOW_MS + 3_010)
    (event,) = due(engine, NOW_MS + 4_000 + CFG.max_wait_ms, a)
    assert names(event) == ["tool3", "tool4"]
    assert event.metadata.get(ROOT_MISSING_KEY) == "true"
    assert a.span_cache.hits == 0


def test_past_the_cache_bound_traces_are_read_from_the_store(engine: Any) -> None:
    spans = batch(*(s for n in (6, 7, 8) for s in [root(n), *children(n, 2, 5)]))
    one = sum(len(span_json(s)) + 64 for s, _ in spans.spans[:5])  # a trace's texts in memory
    small = CFG._replace(cache_bytes=one + 100)  # room for one trace of the three
    writer = SqlWriter(engine, load_rules(None), None, otlp=small)
    writer.write(spans, NOW_MS)
    assert len(writer.span_cache) == 1
    events = due(engine, NOW_MS + 1_000, writer)
    assert [len(e.spans) for e in events] == [5, 5, 5]
    assert (writer.span_cache.hits, writer.span_cache.misses) == (1, 2)
    assert events == due(engine, NOW_MS + 1_000, None)


def test_assembly_reports_the_traces_it_took_from_the_cache(engine: Any) -> None:
    writer = SqlWriter(engine, load_rules(None), None, otlp=CFG)
    writer.write(batch(root(9), *children(9, 2, 3), root(10)), NOW_MS)
    first = writer.emit_otlp(NOW_MS + 1_000, CFG)
    assert (first.traces, first.from_cache) == (2, 2)
    writer.write(batch(*children(9, 4, 4)), NOW_MS + 2_000)  # late: the trace is the store's
    late = writer.emit_otlp(NOW_MS + 3_000, CFG)
    assert (late.traces, late.from_cache) == (1, 0)
