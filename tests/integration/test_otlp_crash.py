"""OpenTelemetry traces assembled by several workers, and through kill -9, on the real broker:
every trace's spans are spread over all partitions (one span a record, nil keys as the
Collector writes them), so the workers of a group each hold some of every trace's spans. The
store must end with every trace assembled whole, once: one row of all its spans, its metric
buckets counting it once, nothing left pending.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from sqlalchemy import func, select

from store.engine import make_engine
from store.models import MetricMinute, OtlpSpan, OtlpTrace, Trace
from tests.conftest import settings_env
from tests.helpers import wait_until
from tests.integration.test_two_workers import Proc
from tests.otlp_spans import span

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MS = 1_000_000
SPANS = 4  # a trace: its root and three children
PARTITIONS = 3


def traces(n: int, seed: int) -> list[list[Span]]:
    t0 = time.time_ns() - 3_600 * 1_000 * MS
    out = []
    for i in range(n):
        tid = (seed << 64 | i + 1).to_bytes(16, "big")
        start = t0 + i * MS
        out.append([span(tid, 1, name="root", start=start, dur_ns=50 * MS,
                         code=2 if i % 5 == 0 else 1,
                         attrs={"mlflow.spanType": '"AGENT"', "mlflow.spanInputs": f'"{i}"'})]
                   + [span(tid, k, 1, name=f"step{k}", start=start + k * MS, dur_ns=MS,
                           attrs={"mlflow.spanType": '"TOOL"'}) for k in range(2, SPANS + 1)])
    return out


def records(all_traces: list[list[Span]], rng: random.Random) -> list[tuple[int, bytes]]:
    """One span a record; a trace's spans round-robin over the partitions, all shuffled (a
    child often before its root); a tenth of the spans sent twice."""
    out = []
    for spans in all_traces:
        for k, s in enumerate(spans):
            value = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
                scope_spans=[ScopeSpans(spans=[s])])]).SerializeToString()
            out.append((k % PARTITIONS, value))
    out += rng.sample(out, len(out) // 10)
    rng.shuffle(out)
    return out


def send(producer: Any, topic: str, recs: list[tuple[int, bytes]], pause_s: float = 0.0,
         chunk: int = 10**9) -> None:
    for i in range(0, len(recs), chunk):
        futures = [producer.send(topic, value=v, partition=p) for p, v in recs[i:i + chunk]]
        producer.flush()
        for f in futures:
            f.get(timeout=30)
        time.sleep(pause_s)


def store_state(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            return {
                "span_counts": sorted(c.execute(select(Trace.span_count)).scalars()),
                "errors": c.execute(select(func.count()).select_from(Trace)
                                    .where(Trace.status == "ERROR")).scalar_one(),
                "volume": c.execute(select(func.coalesce(func.sum(MetricMinute.traces), 0))
                                    .where(MetricMinute.rollup == 2)).scalar_one(),
                "bucket_errors": c.execute(select(func.coalesce(func.sum(MetricMinute.errors), 0))
                                           .where(MetricMinute.rollup == 2)).scalar_one(),
                "buffered": c.execute(select(func.count()).select_from(OtlpSpan)).scalar_one(),
                "pending": c.execute(select(func.count()).select_from(OtlpTrace)
                                     .where(OtlpTrace.pending)).scalar_one(),
            }
    finally:
        engine.dispose()


def assert_whole(url: str, n: int) -> None:
    got = store_state(url)
    assert got["span_counts"] == [SPANS] * n  # every trace, once, with all its spans
    assert got["errors"] == got["bucket_errors"] == n // 5 + (n % 5 > 0)
    assert got["volume"] == n  # each trace counted once in the buckets, amendments included
    assert (got["buffered"], got["pending"]) == (n * SPANS, 0)


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_two_workers_assemble_traces_whose_spans_they_split_and_one_is_killed(
        settings_factory: Any, producer: Any, store_url: str, tmp_path: Path) -> None:
    rng = random.Random(13)
    n = 300
    settings = settings_factory(batch_max_records=40, otlp_quiet_s=0.3, otlp_max_wait_s=8.0)
    recs = records(traces(n, 1), rng)
    env = settings_env(settings)
    a = Proc(env, tmp_path / "a.log")
    b = Proc(env, tmp_path / "b.log", idle_s=15)
    try:
        wait_until(lambda: a.metrics().get(("trace_curator_ready", ())) == 1.0
                   and b.metrics().get(("trace_curator_ready", ())) == 1.0, 90,
                   "both workers to hold partitions")
        sender = threading.Thread(target=send, args=(producer, settings.otlp_topic, recs,
                                                     0.05, 60))
        sender.start()
        wait_until(lambda: a.metrics().get(("trace_curator_otlp_spans_total", ()), 0) > 200,
                   60, "the first worker to read spans")
        a.kill9()  # mid-stream: its uncommitted batch and its partitions go to b
        sender.join(120)
        assert b.proc.wait(timeout=240) == 0, b.output()[-3000:]
    finally:
        a.stop()
        b.stop()
    assert_whole(store_url, n)


def test_kill_9_during_assembly_loses_and_doubles_nothing(
        settings_factory: Any, producer: Any, store_url: str, tmp_path: Path) -> None:
    rng = random.Random(17)
    n = 400
    settings = settings_factory(batch_max_records=50, otlp_quiet_s=0.2, otlp_max_wait_s=6.0)
    send(producer, settings.otlp_topic, records(traces(n, 2), rng))
    env = settings_env(settings)
    for run in range(3):  # killed twice at random points, then left to drain
        p = Proc(env, tmp_path / f"run{run}.log", idle_s=4)
        try:
            if run < 2:
                target = rng.randint(50, n * SPANS)
                wait_until(lambda p=p, target=target: p.proc.poll() is not None or p.metrics()
                           .get(("trace_curator_otlp_spans_total", ()), 0) >= target, 90,
                           "the worker to read some spans")
                time.sleep(rng.random() * 0.5)  # somewhere in a batch or an assembly
                if p.proc.poll() is None:
                    p.kill9()
            else:
                assert p.proc.wait(timeout=240) == 0, p.output()[-3000:]
        finally:
            p.stop()
    assert_whole(store_url, n)
