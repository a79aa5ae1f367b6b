"""One OpenTelemetry trace that never ends: a producer stuck in a loop, or a hostile one, sends
spans of a single trace id without end. The buffer keeps a trace's first spans up to its caps
(``otlp_max_trace_spans``, ``otlp_max_trace_bytes``), counts the rest and marks the trace, and
an assembly transaction reads a bounded number of span bytes, so neither the worker's memory
nor the work per batch grows with the flood. On both stores, and end to end on the real broker.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sqlalchemy import func, select

from consumers.assembly import ROOT_MISSING_KEY
from consumers.events import Provenance
from consumers.otlp import decode_otlp
from store.engine import make_engine
from store.models import OtlpSpan, OtlpTrace, Trace
from store.otlp_buffer import SPANS_DROPPED_KEY, OtlpConfig, span_json
from store.upserts import Batch
from store.writer import SqlWriter
from tests.integration.test_otlp_ingest import record, send, tid
from tests.otlp_spans import span
from worker.rules.engine import load_rules
from worker.serve.telemetry import WorkerCollector

pytestmark = pytest.mark.integration

MS = 1_000_000
T0 = time.time_ns() - 3_600 * 1_000 * MS
NOW_MS = T0 // MS + 10_000


def batch(*spans: Span) -> Batch:
    decoded = decode_otlp(record(*spans), "otlp_proto", 1 << 22).spans
    return Batch(spans=[(s, Provenance("otlp", 0, i)) for i, s in enumerate(decoded)])


def children(n: int, first: int, last: int, *, attrs: dict[str, Any] | None = None
             ) -> list[Span]:
    return [span(tid(n), k, 1, name=f"tool{k}", start=T0 + k * MS, dur_ns=MS, attrs=attrs)
            for k in range(first, last + 1)]


def root(n: int) -> Span:
    return span(tid(n), 1, name="agent", start=T0, dur_ns=100 * MS)


def stored(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            return {
                "traces": {r.trace_id: r for r in c.execute(select(Trace))},
                "buffered": dict(c.execute(select(OtlpSpan.trace_id, func.count())
                                           .group_by(OtlpSpan.trace_id)).all()),
                "states": {r.trace_id: r for r in c.execute(select(OtlpTrace))},
            }
    finally:
        engine.dispose()


def test_a_trace_past_its_span_cap_keeps_its_first_spans_and_is_marked(
        engine: Any, store_url: str) -> None:
    cfg = OtlpConfig(quiet_ms=200, max_trace_spans=4)
    writer = SqlWriter(engine, load_rules(None), None, otlp=cfg)
    a = [root(1), *children(1, 2, 7)]  # 7 spans
    other = [root(2), *children(2, 2, 3)]  # 3 spans: under the cap
    # 5 new spans of trace 1 (and its root twice): the first 4 are kept, the 5th dropped.
    first = writer.write(batch(*a[:5], a[0], *other), NOW_MS)
    assert first.spans_dropped == 1
    # The root again is held already (not dropped); the last two are past the cap.
    second = writer.write(batch(a[0], a[5], a[6]), NOW_MS + 50)
    assert second.spans_dropped == 2
    emitted = writer.emit_otlp(NOW_MS + 1_000, cfg)
    assert emitted.traces == 2
    got = stored(store_url)
    ta, tb = got["traces"]["tr-" + tid(1).hex()], got["traces"]["tr-" + tid(2).hex()]
    assert ta.span_count == 4 and ta.trace_metadata[SPANS_DROPPED_KEY] == "3"
    assert tb.span_count == 3 and SPANS_DROPPED_KEY not in tb.trace_metadata
    assert got["buffered"] == {ta.trace_id: 4, tb.trace_id: 3}
    # More of the flood after assembly: counted, nothing pending, nothing assembled again.
    assert writer.write(batch(*children(1, 8, 20)), NOW_MS + 2_000).spans_dropped == 13
    assert writer.pending_otlp() == 0
    assert writer.emit_otlp(NOW_MS + 5_000, cfg).traces == 0
    assert stored(store_url)["states"][ta.trace_id].spans_dropped == 16


def test_a_trace_past_its_byte_cap_keeps_what_fits_and_a_span_over_it_alone_is_dropped(
        engine: Any, store_url: str) -> None:
    big = {"mlflow.spanInputs": '"' + "x" * 3_000 + '"'}
    spans = [root(3), *children(3, 2, 6, attrs=big)]
    sizes = [len(span_json(s)) for s, _ in batch(*spans).spans]
    cfg = OtlpConfig(quiet_ms=200, max_trace_bytes=sum(sizes[:3]))  # the root and two more
    writer = SqlWriter(engine, load_rules(None), None, otlp=cfg)
    assert writer.write(batch(*spans), NOW_MS).spans_dropped == 3
    # A trace whose only span (not a root) is over the cap: dropped, and no trace is left
    # waiting for it.
    lone = span(tid(4), 2, 1, name="huge", start=T0, dur_ns=MS,
                attrs={"mlflow.spanInputs": '"' + "y" * 20_000 + '"'})
    assert writer.write(batch(lone), NOW_MS).spans_dropped == 1
    assert writer.pending_otlp() == 1
    assert writer.emit_otlp(NOW_MS + 1_000, cfg).traces == 1
    got = stored(store_url)
    t = got["traces"]["tr-" + tid(3).hex()]
    assert t.span_count == 3 and t.trace_metadata[SPANS_DROPPED_KEY] == "3"
    assert set(got["traces"]) == {t.trace_id} and set(got["states"]) == {t.trace_id}
    assert got["states"][t.trace_id].span_bytes == sum(sizes[:3])


def test_a_root_that_comes_after_the_cap_is_kept_and_the_trace_is_due_when_quiet(
        engine: Any, store_url: str) -> None:
    """With nil keys a trace's records land on several partitions, so its root may be read
    after the cap is full: the first root is kept past the caps (it alone gives the trace its
    status, request and response), and the trace is assembled once quiet, not after
    max_wait as a trace without root. A second root past the cap is dropped like any span."""
    cfg = OtlpConfig(quiet_ms=200, max_wait_ms=60_000, max_trace_spans=3,
                     max_trace_bytes=len(span_json(batch(*children(7, 2, 2)).spans[0][0])) * 3)
    writer = SqlWriter(engine, load_rules(None), None, otlp=cfg)
    assert writer.write(batch(*children(7, 2, 6)), NOW_MS).spans_dropped == 2
    assert writer.write(batch(root(7)), NOW_MS + 50).spans_dropped == 0
    other_root = span(tid(7), 99, name="agent", start=T0, dur_ns=100 * MS)
    assert writer.write(batch(other_root), NOW_MS + 60).spans_dropped == 1
    assert writer.emit_otlp(NOW_MS + 1_000, cfg).traces == 1
    t = stored(store_url)["traces"]["tr-" + tid(7).hex()]
    assert t.span_count == 4 and t.name == "agent" and t.execution_time_ms == 100
    assert ROOT_MISSING_KEY not in t.trace_metadata
    assert t.trace_metadata[SPANS_DROPPED_KEY] == "3"


def test_one_assembly_transaction_reads_a_bounded_number_of_span_bytes(
        engine: Any, store_url: str) -> None:
    """Traces that are due together are assembled in several transactions once their spans
    pass ``emit_bytes``; the first trace of a transaction always goes, whatever its size."""
    fat = {"mlflow.spanOutputs": '"' + "z" * 5_000 + '"'}
    traces = [[span(tid(n), 1, name="agent", start=T0 + n * MS, dur_ns=MS, attrs=fat)]
              for n in range(10, 14)]
    size = len(span_json(batch(*traces[0]).spans[0][0]))
    cfg = OtlpConfig(quiet_ms=200, emit_bytes=2 * size + 10)
    writer = SqlWriter(engine, load_rules(None), None, otlp=cfg)
    writer.write(batch(*[s for t in traces for s in t]), NOW_MS)
    first = writer.emit_otlp(NOW_MS + 1_000, cfg)
    assert (first.traces, first.more) == (2, True)
    second = writer.emit_otlp(NOW_MS + 1_000, cfg)
    assert (second.traces, second.more) == (2, False)
    assert writer.emit_otlp(NOW_MS + 1_000, cfg).traces == 0
    alone = OtlpConfig(quiet_ms=200, emit_bytes=1)  # below any trace: one a transaction
    writer.write(batch(*children(10, 2, 3)), NOW_MS + 2_000)
    one = writer.emit_otlp(NOW_MS + 3_000, alone)
    assert (one.traces, one.more) == (1, False)
    assert stored(store_url)["traces"]["tr-" + tid(10).hex()].span_count == 3


def test_the_worker_applies_the_caps_it_is_given_and_counts_the_dropped_spans(
        settings_factory: Any, producer: Any, run_worker: Any, store_url: str) -> None:
    settings = settings_factory(otlp_quiet_s=0.3, otlp_max_trace_spans=5)
    send(producer, settings.otlp_topic, [
        (0, record(root(5), *children(5, 2, 4))),
        (0, record(*children(5, 5, 30))),  # after its root: partitions have no order
        (2, record(root(6), *children(6, 2, 3))),
    ])
    stats = run_worker(settings, idle_s=2.0)
    got = stored(store_url)
    t5, t6 = (got["traces"]["tr-" + tid(n).hex()] for n in (5, 6))
    assert t5.span_count == 5 and t5.trace_metadata[SPANS_DROPPED_KEY] == "25"
    assert t6.span_count == 3 and SPANS_DROPPED_KEY not in t6.trace_metadata
    assert stats.otlp_dropped == 25
    stopped = SimpleNamespace(is_set=lambda: True)
    scraped = {(x.name, tuple(x.labels.values())): x.value
               for m in WorkerCollector(SimpleNamespace(stats=stats, tag_writer=None,
                                                        curator=None, stop=stopped),
                                        None).collect()
               for x in m.samples}
    assert scraped["trace_curator_otlp_spans_dropped_total", ()] == 25
    # One worker read every span: each trace's first assembly took them from its span cache
    # (a version assembled again, after a later batch, reads them back).
    from_cache = scraped["trace_curator_otlp_traces_assembled_from_total", ("cache",)]
    assert from_cache >= 2 and from_cache == stats.otlp_from_cache
    assert from_cache + scraped["trace_curator_otlp_traces_assembled_from_total", ("store",)] \
        == stats.otlp_traces
