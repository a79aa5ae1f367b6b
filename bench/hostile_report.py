"""Hostile-cardinality report benchmark: time and peak memory of ``report`` (``store.report
.summary``) over one hour, for three hours loaded in the same store and measured in one run:
  * baseline: normal traffic (``--traces`` traces of 4 span types, feedback on a tenth);
  * hostile: the same traffic plus a trace with 4,000 distinct span types (``T0..T3999``) and one
    with 45,000, written through the worker's own path (``apply_batch`` with metrics), so their
    per-trace cap applies;
  * legacy: the same traffic plus the same two traces as buckets written before the caps (their
    contributions uncapped, inserted with ``insert_buckets``): the report's own fold and sparse
    histogram sums are what keep this hour cheap.
Peak memory is ``tracemalloc``'s peak during one report (numpy's buffers are traced), measured
apart from the timed runs; time is the median of ``--repeat`` runs after a warm-up. Figures are
printed with their ratio to the baseline, never asserted.

    .venv/bin/python -m bench.hostile_report
    .venv/bin/python -m bench.hostile_report --store-url postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from consumers.events import AssessmentEvent, Provenance, SpanSummary, TraceEvent
from store import schema
from store.decisions import event_view
from store.engine import make_engine
from store.metrics import MetricsConfig, insert_buckets
from store.report import summary
from store.rollup import HOUR_MS, StreamRollup, TraceFacts, contribution
from store.sketch import key_for
from store.upserts import Batch, apply_batch

START_MS = 1_795_000_000_000 - 1_795_000_000_000 % HOUR_MS
PROV = Provenance("bench", 0, 0)
NORMAL_TYPES = ("CHAT_MODEL", "RETRIEVER", "TOOL", "CHAIN")


def _trace(tid: str, ts_ms: int, types: list[str], rng: random.Random) -> TraceEvent:
    spans = tuple(SpanSummary(f"s{i}", t, rng.lognormvariate(3.0, 1.2), "OK")
                  for i, t in enumerate(types))
    return TraceEvent(tid, "1", "agent", "OK", ts_ms, int(rng.lognormvariate(6.5, 0.8)),
                      None, None, {"environment": "prod"}, {}, 100, 50, 150, spans, "flat", PROV)


def _feedback(tid: str, ts_ms: int, rng: random.Random) -> AssessmentEvent:
    value = round(rng.random(), 3)
    return AssessmentEvent(f"a-{tid}", tid, "relevance", "feedback", value, value, None, None,
                           "LLM_JUDGE", "judge", True, None, None, ts_ms, ts_ms, {}, PROV)


def _normal(hour_ms: int, n: int, rng: random.Random, prefix: str
            ) -> tuple[list[TraceEvent], list[AssessmentEvent]]:
    traces = [_trace(f"{prefix}-{i}", hour_ms + rng.randrange(HOUR_MS),
                     [rng.choice(NORMAL_TYPES) for _ in range(rng.randint(2, 4))], rng)
              for i in range(n)]
    return traces, [_feedback(t.trace_id, t.timestamp_ms, rng) for t in traces[::10]]


def _hostile(hour_ms: int, prefix: str, rng: random.Random) -> list[TraceEvent]:
    return [_trace(f"{prefix}-4k", hour_ms + 1000, [f"T{i}" for i in range(4000)], rng),
            _trace(f"{prefix}-45k", hour_ms + 2000, [f"T{i}" for i in range(45_000)], rng)]


def _write(engine: Engine, traces: list[TraceEvent], feedback: list[AssessmentEvent],
           config: MetricsConfig) -> None:
    for i in range(0, max(len(traces), len(feedback)), 2000):
        with engine.begin() as conn:
            apply_batch(conn, Batch(traces=traces[i:i + 2000], assessments=feedback[i:i + 2000]),
                        START_MS, metrics_config=config)


def _uncapped_summary(e: TraceEvent) -> dict[str, Any]:
    """The span summary as it was stored before the per-trace cap: every type named."""
    out: dict[str, dict[str, Any]] = {}
    for s in e.spans:
        agg = out.setdefault(s.span_type, {"count": 0, "total_ms": 0.0, "max_ms": 0.0,
                                           "bins": {}})
        agg["count"] += 1
        agg["total_ms"] += s.duration_ms
        agg["max_ms"] = max(agg["max_ms"], s.duration_ms)
        k = key_for(s.duration_ms)
        agg["bins"][k] = agg["bins"].get(k, 0) + 1
    for agg in out.values():
        agg["bins"] = [[k, n] for k, n in agg["bins"].items()]
    return out


def _legacy_buckets(engine: Engine, traces: list[TraceEvent], config: MetricsConfig) -> None:
    stream = StreamRollup()
    for e in traces:
        stream.add(contribution(TraceFacts(event_view(e), e.input_tokens, e.output_tokens,
                                           e.total_tokens, _uncapped_summary(e), e.completeness),
                                [], [], config.dimension_tag))
    with engine.begin() as conn:
        insert_buckets(conn, stream.completed(None), START_MS)


def _measure(run: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(median seconds, tracemalloc peak MiB) of ``run``."""
    run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return statistics.median(times), peak / 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--store-url", help="a migrated, empty store (default: a fresh SQLite file)")
    ap.add_argument("--traces", type=int, default=2000, help="normal traces per hour")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rng = random.Random(7)
    config = MetricsConfig("environment", None, None)
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(args.store_url or f"sqlite:///{tmp}/hostile.db")
        schema.upgrade(engine)
        hours = {"baseline": START_MS, "hostile": START_MS + HOUR_MS,
                 "legacy": START_MS + 2 * HOUR_MS}
        t0 = time.perf_counter()
        for name, hour in hours.items():
            traces, feedback = _normal(hour, args.traces, rng, name)
            if name == "hostile":
                traces += _hostile(hour, name, rng)
            _write(engine, traces, feedback, config)
            if name == "legacy":
                _legacy_buckets(engine, _hostile(hour, name, rng), config)
        print(f"store {engine.url.get_backend_name()}: loaded 3 hours in "
              f"{time.perf_counter() - t0:.1f} s ({args.traces} normal traces each)")
        base: tuple[float, float] | None = None
        print(f"{'hour':<9} {'span types':>10} {'median ms':>10} {'peak MiB':>9} "
              f"{'time x':>7} {'memory x':>9}")
        for name, hour in hours.items():
            types = len(summary(engine, hour, hour + HOUR_MS).overall.span_types)
            secs, peak = _measure(lambda h=hour: summary(engine, h, h + HOUR_MS),  # type: ignore[misc]
                                  args.repeat)
            base = base or (secs, peak)
            print(f"{name:<9} {types:>10} {secs * 1000:>10.1f} {peak:>9.1f} "
                  f"{secs / base[0]:>7.1f} {peak / base[1]:>9.1f}")
        engine.dispose()


if __name__ == "__main__":
    main()
