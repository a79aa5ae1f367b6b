"""OpenTelemetry spans from Kafka, end to end on the real broker and store (SQLite, PostgreSQL):
one trace's spans split across records and partitions, duplicated and out of order, a trace
whose root never comes, a late span after the trace was written, hostile records; the worker
assembles each trace once its spans are in and writes it through the rules and the metrics.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from sqlalchemy import func, select

from consumers.assembly import ROOT_MISSING_KEY
from consumers.events import Provenance
from consumers.otlp import decode_otlp
from store import schema
from store.engine import make_engine
from store.models import DeadLetter, MetricMinute, OtlpSpan, OtlpTrace, Trace, TraceTag
from store.otlp_buffer import EMITTED_EARLY_KEY, OtlpConfig
from store.upserts import Batch
from store.writer import SqlWriter
from tests.otlp_spans import GENAI_CHAT, span
from worker.rules.engine import load_rules
from worker.serve.telemetry import WorkerCollector

pytestmark = pytest.mark.integration

MS = 1_000_000


def record(*spans: Span) -> bytes:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=list(spans))])]).SerializeToString()


def send(producer: Any, topic: str, records: Iterable[tuple[int, bytes | None]]) -> None:
    """Records to explicit partitions, as the Collector's nil keys spread them."""
    futures = [producer.send(topic, value=v, partition=p, key=None if v else b"tombstone")
               for p, v in records]
    producer.flush()
    for f in futures:
        f.get(timeout=30)


def tid(n: int) -> bytes:
    return (0xABC0_0000 + n).to_bytes(16, "big")


def agent_trace(n: int, t0: int) -> list[Span]:
    """An MLflow-exported agent trace: root, retriever, two chat calls (one slow, with usage)."""
    usage = json.dumps({"input_tokens": 100, "output_tokens": 20, "total_tokens": 120})
    return [
        span(tid(n), 1, name="agent", start=t0, dur_ns=9_000 * MS,
             attrs={"mlflow.spanType": '"AGENT"', "mlflow.spanInputs": '{"q": "hi"}',
                    "mlflow.spanOutputs": '"bye"', "mlflow.traceTag.environment": '"prod"'}),
        span(tid(n), 2, 1, name="retrieve", start=t0 + 10 * MS, dur_ns=200 * MS,
             attrs={"mlflow.spanType": '"RETRIEVER"'}),
        span(tid(n), 3, 1, name="chat", start=t0 + 300 * MS, dur_ns=8_000 * MS,
             attrs={"mlflow.spanType": '"CHAT_MODEL"', "mlflow.chat.tokenUsage": usage}),
        span(tid(n), 4, 1, name="chat2", start=t0 + 8_400 * MS, dur_ns=500 * MS,
             attrs={"mlflow.spanType": '"CHAT_MODEL"', "mlflow.chat.tokenUsage": usage}),
    ]


def rows(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            return {
                "traces": {r.trace_id: r for r in c.execute(select(Trace))},
                "dead": list(c.execute(select(DeadLetter.offset, DeadLetter.error))),
                "tags": {(r.trace_id, r.tag_key): r.tag_value for r in c.execute(select(TraceTag))},
                "volume": c.execute(select(func.coalesce(func.sum(MetricMinute.traces), 0))
                                    .where(MetricMinute.rollup == 2)).scalar_one(),
                "buffered": c.execute(select(func.count()).select_from(OtlpSpan)).scalar_one(),
                "pending": c.execute(select(func.count()).select_from(OtlpTrace)
                                     .where(OtlpTrace.pending)).scalar_one(),
            }
    finally:
        engine.dispose()


def test_spans_split_across_records_and_partitions_assemble_into_their_traces(
        settings_factory: Any, producer: Any, run_worker: Any, store_url: str) -> None:
    settings = settings_factory(otlp_quiet_s=0.5, otlp_max_wait_s=4.0)
    topic = settings.otlp_topic
    t0 = time.time_ns() - 3_600 * 1_000 * MS
    a = agent_trace(1, t0)
    b = [span(tid(2), 1, name="invoke_agent", start=t0, dur_ns=50 * MS, code=2,
              attrs={"gen_ai.operation.name": "invoke_agent"}),
         span(tid(2), 2, 1, name="chat", start=t0 + MS, dur_ns=40 * MS, attrs=GENAI_CHAT)]
    orphan = agent_trace(3, t0)[1:]  # its root never comes
    bad = Span(trace_id=tid(4), span_id=b"\x01" * 8, start_time_unix_nano=t0,
               end_time_unix_nano=t0 - 1)  # ends before it starts
    send(producer, topic, [
        (0, record(a[3], b[1])),         # children before their roots, two traces a record
        (1, record(a[1], orphan[0])),
        (2, b"\x00garbage"),             # not an export request: a dead letter
        (2, record(a[0], a[1])),         # the root, and a[1] again (a duplicate)
        (0, record(b[0], bad)),          # one bad span: dead-lettered, b[0] kept
        (1, record(a[2], *orphan[1:])),
        (2, None),                       # a tombstone: a dead letter
    ])
    stats = run_worker(settings, idle_s=2.0)
    got = rows(store_url)
    assert set(got["traces"]) == {"tr-" + tid(n).hex() for n in (1, 2, 3)}
    ta, tb, tc = (got["traces"]["tr-" + tid(n).hex()] for n in (1, 2, 3))
    assert (ta.span_count, ta.status, ta.name, ta.execution_time_ms) == (4, "OK", "agent", 9_000)
    assert (ta.request, ta.response, ta.tags) == ('{"q": "hi"}', '"bye"',
                                                  {"environment": "prod"})
    assert (ta.input_tokens, ta.output_tokens, ta.total_tokens) == (200, 40, 240)
    assert ta.source_format == "otlp" and ROOT_MISSING_KEY not in ta.trace_metadata
    assert (tb.span_count, tb.status, tb.total_tokens) == (2, "ERROR", 42)
    assert (tc.span_count, tc.trace_metadata[ROOT_MISSING_KEY]) == (3, "true")
    # The default rules tag the error and the slow traces, as for any other source.
    assert got["tags"][("tr-" + tid(2).hex(), "eval_candidate")] == "error_case"
    assert got["tags"][("tr-" + tid(1).hex(), "eval_candidate")] == "slow_response"
    assert len(got["dead"]) == 3  # the garbage, the tombstone, the record with a bad span
    assert any("1 of the record's 2 spans rejected" in e for _, e in got["dead"])
    assert got["volume"] == 3 and got["pending"] == 0 and got["buffered"] == 9
    assert (stats.otlp_traces, stats.otlp_spans) == (3, 10)  # 9 spans, one read twice
    stopped = threading.Event()
    stopped.set()  # the worker has returned
    scraped = {(x.name, tuple(sorted(x.labels.items()))): x.value
               for m in WorkerCollector(SimpleNamespace(stats=stats, tag_writer=None,
                                                        curator=None, stop=stopped),
                                        None).collect()
               for x in m.samples}
    assert scraped[("trace_curator_otlp_spans_total", ())] == 10
    assert scraped[("trace_curator_otlp_traces_assembled_total", (("how", "due"),))] == 3
    assert scraped[("trace_curator_otlp_traces_assembled_total", (("how", "early"),))] == 0

    # A late span of the first trace, after it was written: a more complete version of it.
    late = span(tid(1), 5, 1, name="late tool", start=t0 + 8_950 * MS, dur_ns=20 * MS,
                code=2, attrs={"mlflow.spanType": '"TOOL"'})
    send(producer, topic, [(1, record(late)), (0, record(a[0]))])  # and the root again
    run_worker(settings, idle_s=2.0)
    again = rows(store_url)
    assert again["traces"]["tr-" + tid(1).hex()].span_count == 5
    assert again["volume"] == 3  # amended, not counted twice
    assert again["pending"] == 0 and again["buffered"] == 10


def test_a_backlog_past_the_bound_drains_with_no_trace_assembled_early(
        settings_factory: Any, producer: Any, run_worker: Any, store_url: str) -> None:
    """1,200 traces in 60 records against a bound of 400 open traces, read 10 records (200
    traces) a batch, each trace due 1 s after its spans: after each batch the loop waits for
    assembly while over 200 are pending, so a backlog three times the bound drains with none
    pushed out early (without the wait, the loop reads it all in well under a second)."""
    settings = settings_factory(otlp_quiet_s=1.0, otlp_max_open_traces=400,
                                batch_max_records=10)
    t0 = time.time_ns() - 3_600 * 1_000 * MS
    send(producer, settings.otlp_topic, [
        (r % 3, record(*[s for k in range(r * 20, r * 20 + 20) for s in (
            span(tid(k), 1, name="agent", start=t0 + k * MS, dur_ns=5 * MS),
            span(tid(k), 2, 1, name="tool", start=t0 + k * MS, dur_ns=MS))]))
        for r in range(60)])
    stats = run_worker(settings, idle_s=2.0)
    got = rows(store_url)
    assert len(got["traces"]) == 1_200 and got["pending"] == 0
    assert stats.otlp_forced == 0
    assert not [t for t in got["traces"].values() if EMITTED_EARLY_KEY in t.trace_metadata]


def test_past_the_open_traces_bound_the_oldest_are_assembled_early(store_url: str) -> None:
    engine = make_engine(store_url)
    schema.upgrade(engine)
    writer = SqlWriter(engine, load_rules(None), None)
    cfg = OtlpConfig(quiet_ms=200, max_wait_ms=600_000, max_open_traces=2)
    t0 = time.time_ns() - 3_600 * 1_000 * MS
    now_ms = t0 // MS + 10_000
    rootless = [span(tid(n), 2, 1, start=t0 + n * MS, dur_ns=MS) for n in range(10, 15)]
    decoded = decode_otlp(record(*rootless), "otlp_proto", 1 << 20).spans
    writer.write(Batch(spans=[(s, Provenance("otlp", 0, i)) for i, s in enumerate(decoded)]),
                 now_ms)
    try:
        result = writer.emit_otlp(now_ms, cfg)
        assert (result.traces, result.forced) == (3, 3)
        assert writer.emit_otlp(now_ms + 1_000, cfg).traces == 0  # at the bound: no more
        assert writer.pending_otlp() == 2
        got = rows(store_url)
        assert sorted(got["traces"]) == sorted("tr-" + tid(n).hex() for n in (10, 11, 12))
        assert all(t.trace_metadata[EMITTED_EARLY_KEY] == "buffer_full"
                   and t.trace_metadata[ROOT_MISSING_KEY] == "true"
                   for t in got["traces"].values())
        # max_wait passes for the other two: assembled, not early
        late = writer.emit_otlp(now_ms + 600_000, cfg)
        assert (late.traces, late.forced) == (2, 0) and writer.pending_otlp() == 0
        # kept for keep_ms after their last assembly, then pruned with their spans
        assert writer.emit_otlp(now_ms + 600_000 + cfg.keep_ms + 1, cfg).pruned == 5
        assert rows(store_url)["buffered"] == 0
    finally:
        engine.dispose()
