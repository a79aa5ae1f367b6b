"""Report benchmark: ``summary`` over the metric buckets against two baselines, 1M and 10M traces.

For each size and backend, in one run:
  * load N synthetic traces (3 experiments x 2 trace names x 2 environments, lognormal latency,
    ~8% errors, 2-4 spans of 4 types, token usage, feedback on ~10%) spread uniformly over
    ``--days`` days ending at "now". ``--load upsert`` uses the worker's own path
    (``apply_batch`` with metrics, 2,000 traces a transaction). ``--load bulk`` (the default)
    writes the same rows with COPY/executemany and builds the buckets in the same pass with the
    same pure code (``store.rollup``): per trace, the contribution of the row it wrote. Before
    loading, both paths load the same 20,000 traces into two scratch stores and the bucket tables
    are compared: the run stops unless they are identical;
  * time ``summary`` (the ``report`` command's query) for 24 h and 7 d windows ending at now
    (minute- but not hour-aligned, so both edges read minute buckets), for all experiments and
    for one; median of ``--repeat`` runs after one warm-up;
  * time the baselines on the same windows: exact SQL over the raw rows (PostgreSQL:
    ``percentile_cont`` plus count, errors, mean and hourly volume; SQLite: ORDER BY/OFFSET per
    percentile), and the notebook approach (the window's raw rows into pandas, then the classic
    ``analyze_trace_quality`` + hourly volume code), and print the ratios.
Figures are printed, never asserted. Targets (PostgreSQL): 24 h report <= 20 ms at 1M and
<= 50 ms at 10M; >= 100x faster than exact raw SQL and >= 1,000x faster than the notebook at 10M.

    .venv/bin/python -m bench.report --traces 1000000 --backends postgresql
    .venv/bin/python -m bench.report --traces 10000000 --backends postgresql --repeat 10
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pandas as pd
import psycopg
from sqlalchemy import Engine, text

from consumers.events import AssessmentEvent, Provenance, SpanSummary, TraceEvent
from store import dialect, schema
from store.decisions import event_view
from store.engine import make_engine
from store.metrics import MetricsConfig, insert_buckets
from store.models import ASSESSMENTS, TRACES
from store.report import summary
from store.rollup import FeedbackFacts, StreamRollup, TraceFacts
from store.rollup import contribution as contribution_of
from store.upserts import (
    ASSESSMENT_COLUMNS,
    TRACE_COLUMNS,
    Batch,
    apply_batch,
    assessment_row,
    span_summary,
    trace_row,
)

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")
DAY_MS = 86_400_000
EXPERIMENTS = ("1", "2", "3")
NAMES = ("answer_question", "summarize")
ENVS = ("production", "staging")
SPAN_TYPES = ("RETRIEVER", "CHAT_MODEL", "TOOL", "PARSER")
PROV = Provenance("bench", 0, 0)
TARGET_24H_MS = {1_000_000: 20.0, 10_000_000: 50.0}


# --- synthetic traffic -----------------------------------------------------------------------


def events(n: int, end_ms: int, days: float, seed: int = 1
           ) -> Iterator[tuple[TraceEvent, AssessmentEvent | None]]:
    """N traces in time order over ``days`` ending at ``end_ms``, ~10% with one feedback."""
    rng = random.Random(seed)
    span_ms = int(days * DAY_MS)
    start = end_ms - span_ms
    step = span_ms / n
    for i in range(n):
        ts = start + int(i * step + rng.random() * step)
        latency = max(1, int(rng.lognormvariate(6.6, 0.7)))
        status = "ERROR" if rng.random() < 0.08 else "OK"
        spans = tuple(SpanSummary(t.lower(), t, latency * rng.uniform(0.05, 0.45), "OK")
                      for t in SPAN_TYPES[: 2 + i % 3])
        inp, out = rng.randint(50, 2000), rng.randint(10, 800)
        tid = f"tr-{i:09d}"
        trace = TraceEvent(
            tid, EXPERIMENTS[i % 3], NAMES[(i // 3) % 2], status, ts, latency,  # type: ignore[arg-type]
            '{"question": "q"}', '{"answer": "a"}', {"environment": ENVS[(i // 7) % 2]}, {},
            inp, out, inp + out, spans, "flat", PROV)
        fb = None
        if rng.random() < 0.1:
            v = round(rng.random(), 3)
            fb = AssessmentEvent(f"a-{i:09d}", tid, "relevance", "feedback", v, v, None, None,
                                 "LLM_JUDGE", "judge", True, None, None, ts + 1000, ts + 1000,
                                 {}, PROV)
        yield trace, fb


# --- loading ---------------------------------------------------------------------------------


def load_upsert(engine: Engine, gen: Iterator[tuple[TraceEvent, AssessmentEvent | None]],
                now_ms: int, batch: int = 2000) -> None:
    cfg = MetricsConfig("environment", None, None)
    traces: list[TraceEvent] = []
    fbs: list[AssessmentEvent] = []

    def flush() -> None:
        with engine.begin() as conn:
            apply_batch(conn, Batch(traces=traces, assessments=fbs), now_ms, None, cfg)
        traces.clear()
        fbs.clear()

    for t, fb in gen:
        traces.append(t)
        if fb is not None:
            fbs.append(fb)
        if len(traces) >= batch:
            flush()
    if traces:
        flush()


def load_bulk(engine: Engine, gen: Iterator[tuple[TraceEvent, AssessmentEvent | None]],
              now_ms: int, chunk: int = 20_000) -> None:
    """The documented bulk path: rows by COPY, buckets from the same pure contribution code."""
    cfg = MetricsConfig("environment", None, None)
    stream = StreamRollup()
    rows: list[tuple[Any, ...]] = []
    arows: list[tuple[Any, ...]] = []

    def flush(last_ts: int | None) -> None:
        with engine.begin() as conn:
            dialect.bulk_upsert(conn, TRACES, ("trace_id",), TRACE_COLUMNS, rows,
                                on_conflict="nothing")
            dialect.bulk_upsert(conn, ASSESSMENTS, ("assessment_id",), ASSESSMENT_COLUMNS,
                                arows, on_conflict="nothing")
            insert_buckets(conn, stream.completed(last_ts), now_ms)
        rows.clear()
        arows.clear()

    for t, fb in gen:
        summary_ = span_summary(t)
        rows.append(trace_row(t, now_ms, summary_))
        facts = TraceFacts(event_view(t), t.input_tokens, t.output_tokens, t.total_tokens,
                           orjson.loads(orjson.dumps(summary_)), t.completeness)
        feedback: tuple[FeedbackFacts, ...] = ()
        if fb is not None:
            arows.append(assessment_row(fb, now_ms))
            feedback = (FeedbackFacts(fb.assessment_id, fb.name, fb.value, fb.numeric_value,
                                      fb.error),)
        stream.add(contribution_of(facts, feedback, (), cfg.dimension_tag))
        if len(rows) >= chunk:
            flush(t.timestamp_ms)
    flush(None)


@contextlib.contextmanager
def fresh_store(backend: str) -> Iterator[Engine]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            engine = make_engine(f"sqlite:///{d}/bench.db")
            schema.upgrade(engine)
            yield engine
            engine.dispose()
        return
    name = "bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        engine = make_engine(PG_ADMIN.rsplit("/", 1)[0] + "/" + name)
        schema.upgrade(engine)
        yield engine
        engine.dispose()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bucket_tables(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return [conn.execute(text(
            f"SELECT bucket_ms, rollup, experiment_id, trace_name, dimension, traces, ok, errors, "
            f"latency_sum_ms, input_tokens, p95_ms, sketches, CAST(spans AS TEXT), "
            f"CAST(feedback AS TEXT) FROM metric_{res} ORDER BY 1, 2, 3, 4, 5")).all()
                for res in ("minute", "hour")]


def check_bulk_equals_upsert(backend: str, now_ms: int) -> None:
    with fresh_store(backend) as a, fresh_store(backend) as b:
        load_upsert(a, events(20_000, now_ms, 2, seed=5), now_ms)
        load_bulk(b, events(20_000, now_ms, 2, seed=5), now_ms, chunk=3000)
        same = bucket_tables(a) == bucket_tables(b)
    verdict = "identical buckets" if same else "DIFFERENT"
    print(f"  bulk path == upsert path on 20,000 traces: {verdict}")
    if not same:
        sys.exit(1)


# --- the timed queries -----------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def exact_sql(engine: Engine, since: int, until: int, exp: str | None) -> dict[str, Any]:
    where = "timestamp_ms >= :s AND timestamp_ms < :u" + (" AND experiment_id = :e" if exp
                                                          else "")
    params = {"s": since, "u": until, "e": exp}
    with engine.connect() as conn:
        head = conn.execute(text(
            f"SELECT count(*), sum(CASE WHEN status = 'OK' THEN 1 ELSE 0 END), "
            f"sum(CASE WHEN status = 'ERROR' THEN 1 ELSE 0 END), avg(execution_time_ms) "
            f"FROM traces WHERE {where}"), params).one()
        if engine.dialect.name == "postgresql":
            pct = conn.execute(text(
                "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
                f"(ORDER BY execution_time_ms) FROM traces WHERE {where}"), params).scalar()
        else:
            n = head[0] or 0
            pct = [conn.execute(text(
                f"SELECT execution_time_ms FROM traces WHERE {where} "
                "ORDER BY execution_time_ms LIMIT 1 OFFSET :k"),
                {**params, "k": max(0, math.floor(q * (n - 1)))}).scalar() for q in
                (0.5, 0.95, 0.99)]
        hourly = conn.execute(text(
            f"SELECT timestamp_ms / 3600000, count(*) FROM traces WHERE {where} GROUP BY 1"),
            params).all()
    return {"total": head[0], "ok": head[1], "p": pct, "hours": len(hourly)}


def notebook(engine: Engine, since: int, until: int, exp: str | None) -> dict[str, Any]:
    """The classic notebook analysis, on the window's raw rows (read from our store)."""
    where = "timestamp_ms >= :s AND timestamp_ms < :u" + (" AND experiment_id = :e" if exp
                                                          else "")
    with engine.connect() as conn:
        traces = pd.read_sql_query(
            text(f"SELECT trace_id, request, response, status, execution_time_ms, timestamp_ms, "
                 f"tags FROM traces WHERE {where}"), conn,
            params={"s": since, "u": until, "e": exp})
    if len(traces) == 0:
        return {"error": "No traces found"}
    analysis = {
        "total_traces": len(traces),
        "success_rate": (traces["status"] == "OK").mean(),
        "avg_latency_ms": traces["execution_time_ms"].mean(),
        "p50_latency_ms": traces["execution_time_ms"].median(),
        "p95_latency_ms": traces["execution_time_ms"].quantile(0.95),
        "p99_latency_ms": traces["execution_time_ms"].quantile(0.99),
    }
    errors = traces[traces["status"] == "ERROR"]
    if len(errors) > 0:
        analysis["error_count"] = len(errors)
        analysis["sample_errors"] = errors["request"].head(5).tolist()
    traces["hour"] = pd.to_datetime(traces["timestamp_ms"], unit="ms").dt.hour
    analysis["hourly_volume"] = traces.groupby("hour").size().to_dict()
    return analysis


def run(backend: str, n: int, days: float, repeat: int, load: str) -> None:
    now_ms = (int(time.time() * 1000) // 60_000) * 60_000  # minute-aligned, not hour-aligned
    if now_ms % 3_600_000 == 0:
        now_ms -= 23 * 60_000
    print(f"\n== {backend}: {n:,} traces over {days:g} days (load: {load})")
    check_bulk_equals_upsert(backend, now_ms)
    with fresh_store(backend) as engine:
        t0 = time.perf_counter()
        (load_bulk if load == "bulk" else load_upsert)(engine, events(n, now_ms, days), now_ms)
        load_s = time.perf_counter() - t0
        with engine.connect() as conn:
            counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in
                      ("traces", "metric_minute", "metric_hour")}
            if backend == "postgresql":
                conn.execute(text("ANALYZE"))
        print(f"  loaded in {load_s:,.0f}s ({n / load_s:,.0f} traces/s); rows: "
              + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        print(f"  {'window':<16}{'report ms':>10}{'exact SQL ms':>14}{'x':>8}"
              f"{'notebook ms':>13}{'x':>9}  traces in window")
        for label, hours in (("24h", 24), ("7d", 24 * 7)):
            for exp in (None, "2"):
                since = now_ms - hours * 3_600_000
                rep_ms, s = timed(lambda s=since, e=exp: summary(  # type: ignore[misc]
                    engine, s, now_ms, experiment_id=e, now_ms=now_ms), repeat)
                sql_ms, exact = timed(lambda s=since, e=exp: exact_sql(  # type: ignore[misc]
                    engine, s, now_ms, e), max(1, repeat // 5))
                nb_ms, _ = timed(lambda s=since, e=exp: notebook(  # type: ignore[misc]
                    engine, s, now_ms, e), 1)
                assert s.overall.total_traces == exact["total"], (s.overall, exact)
                target = TARGET_24H_MS.get(n) if label == "24h" else None
                flag = ""
                if target is not None and backend == "postgresql":
                    met = "met" if rep_ms <= target else "MISSED"
                    flag = f"  (target <= {target:g} ms: {met})"
                print(f"  {label + (' exp 2' if exp else ' all'):<16}{rep_ms:>10.1f}"
                      f"{sql_ms:>14.1f}{sql_ms / rep_ms:>8.0f}{nb_ms:>13.0f}"
                      f"{nb_ms / rep_ms:>9.0f}  {s.overall.total_traces:,}{flag}")
                p95_exact = exact["p"][1]
                print(f"  {'':<16}p95 report {s.overall.p95_latency_ms:.0f} ms, exact "
                      f"{p95_exact:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--backends", default="postgresql,sqlite")
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--load", choices=("bulk", "upsert"), default="bulk")
    args = ap.parse_args(argv)
    for n in args.traces:
        for backend in args.backends.split(","):
            run(backend, n, args.days, args.repeat, args.load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
