"""``report`` side by side with MLflow's own trace metrics (``query_trace_metrics``), same traces.

In one run, per backend (SQLite; PostgreSQL too with ``--backends sqlite postgresql``):
  1. generate ``--traces`` realistic traces spread over the 24 hours before the run (seeded): three
     trace names, an ``environment`` tag, OK/ERROR (about 6% errors, more in the slow tail),
     lognormal latencies, a CHAIN root with RETRIEVER, CHAT_MODEL, TOOL and PARSER children at
     microsecond precision, token usage on the chat spans and in the trace metadata, as the SDK
     records it;
  2. load them into an MLflow tracking store through MLflow's own SQL store (``SqlAlchemyStore``)
     in the SDK exporter's order: ``log_spans`` (many traces a call, at most 512 spans, OTel's
     export batch) then ``start_trace`` for each trace (its info, tags and metadata). These are
     MLflow's API writes, so its queries see exactly what the SDK would have written; no row is
     written past MLflow's code. 200 traces are then read back from MLflow and checked against
     the generated records;
  3. load the same traces (``Trace.to_json()``) into a trace-curator store through the worker's
     path: ``decode_trace``, then ``SqlWriter`` (default rules, metrics with the worker's default
     settings) in batches of ``batch_max_records``;
  4. start ``mlflow server`` on the MLflow store and, for the 24-hour window (whole minutes,
     ``[since, until)``; MLflow's ``end_time_ms`` is inclusive, so ``until - 1``), time the
     ``query_trace_metrics`` calls that give the figures of one report, through the REST client
     (``MlflowClient`` has no such method in MLflow 3.17: the client side is the tracking store,
     ``TracingClient(uri).store``, as the UI's charts use it) and, for reference, in-process on
     the ``SqlAlchemyStore``; time ``store.report.summary()`` on our store; medians of ``--runs``
     after a warm-up, interleaved. Then run ``trace-curator report --since 24h --format json``
     once, as users run it, and time its wall clock;
  5. print the figures: exact (from the generated traces) | MLflow | trace-curator | agreement.
     Counts and token sums must be equal; averages equal to 1e-6; percentiles and the max within
     1% (the sketch's bound). Any other gap is printed with its cause, checked against the
     generated data: MLflow floors each span's latency to whole milliseconds
     (``(end_ns - start_ns) // 1e6``) and interpolates percentiles linearly; ours keeps
     microseconds and reads percentiles from a sketch (within 1% of the sample at rank
     ``floor(q (n - 1))``).
Figures are printed, never asserted; a disagreement without a known cause exits 1.

    .venv/bin/python -m bench.vs_mlflow --traces 100000 --runs 5
    .venv/bin/python -m bench.vs_mlflow --traces 100000 --backends sqlite postgresql
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

# MLflow 3.17's SQL store uses a loader strategy SQLAlchemy 2.1 deprecates; the SDK warns while
# building some entities. Neither matters here.
warnings.filterwarnings("ignore", message=".*noload.*")
warnings.filterwarnings("ignore", category=FutureWarning)
# Chat spans name their model: MLflow prices them at ingest, from its bundled price catalog
# here (the default first fetches a remote one, which costs 7 s of retries without a network).
os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
# A query MLflow's server cannot answer in its 120 s fails at once instead of being sent 7 times.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

from mlflow.entities import Span, Trace, TraceData, TraceInfo, TraceLocation, TraceState  # noqa: E402
from mlflow.entities.trace_metrics import (  # noqa: E402
    AggregationType,
    MetricAggregation,
    MetricDataPoint,
    MetricViewType,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: E402
from mlflow.tracing.client import TracingClient  # noqa: E402

from consumers.embedded_broker import free_port  # noqa: E402
from consumers.events import Provenance  # noqa: E402
from consumers.formats import decode_trace  # noqa: E402
from store import schema  # noqa: E402
from store.engine import make_engine  # noqa: E402
from store.report import Stats, iso, summary  # noqa: E402
from store.upserts import Batch  # noqa: E402
from store.writer import SqlWriter  # noqa: E402
from worker.app import bucket_config  # noqa: E402
from worker.rules.engine import load_rules  # noqa: E402
from worker.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
SPAN_BATCH = 512  # OTel BatchSpanProcessor's max_export_batch_size
SAMPLE_CHECK = 200
PROV = Provenance("bench", 0, 0)
# name, share of traffic, median latency (ms), children (span name, type)
APPS = (
    ("answer_question", 0.6, 900.0, (("retrieve_docs", "RETRIEVER"), ("chat", "CHAT_MODEL"),
                                      ("lookup_order", "TOOL"), ("parse_answer", "PARSER"))),
    ("summarize", 0.3, 1800.0, (("retrieve_docs", "RETRIEVER"), ("chat_map", "CHAT_MODEL"),
                                ("chat_reduce", "CHAT_MODEL"))),
    ("triage_ticket", 0.1, 450.0, (("classify", "CHAT_MODEL"), ("route_ticket", "TOOL"))),
)
ENVIRONMENTS = (("production", 0.8), ("staging", 0.2))
PCT = {q: MetricAggregation(AggregationType.PERCENTILE, q * 100.0) for q in (0.5, 0.95, 0.99)}
AVG = MetricAggregation(AggregationType.AVG)
MAX = MetricAggregation(AggregationType.MAX)
SUM = MetricAggregation(AggregationType.SUM)
COUNT = MetricAggregation(AggregationType.COUNT)


# --- the traces -------------------------------------------------------------------------------


def _pick(rng: random.Random, choices: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    r, acc = rng.random(), 0.0
    for c in choices:
        acc += c[1]
        if r < acc:
            return c
    return choices[-1]


def _span(trace_id: str, span_id: str, parent: str | None, name: str, span_type: str,
          start_ns: int, end_ns: int, *, inputs: Any, outputs: Any, error: str | None = None,
          extra: dict[str, Any] | None = None) -> Span:
    attrs = {"mlflow.traceRequestId": json.dumps(trace_id),
             "mlflow.spanType": json.dumps(span_type),
             "mlflow.spanInputs": json.dumps(inputs)}
    if outputs is not None:
        attrs["mlflow.spanOutputs"] = json.dumps(outputs)
    attrs.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    events = [] if error is None else [{
        "name": "exception", "time_unix_nano": end_ns,
        "attributes": {"exception.type": error, "exception.message": f"{error} in {name}"}}]
    return Span.from_dict({
        "trace_id": trace_id, "span_id": span_id, "parent_span_id": parent, "name": name,
        "start_time_unix_nano": start_ns, "end_time_unix_nano": end_ns, "events": events,
        "status": {"code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK",
                   "message": error or ""},
        "attributes": attrs})


def make_trace(rng: random.Random, experiment_id: str, i: int, ts_ms: int
               ) -> tuple[TraceInfo, list[Span]]:
    """One finished trace as the SDK hands it to the exporter: its info and its spans."""
    name, _, median_ms, plan = _pick(rng, APPS)
    env = _pick(rng, ENVIRONMENTS)[0]
    latency_us = max(2_000, round(rng.lognormvariate(math.log(median_ms * 1000), 0.75)))
    failed = rng.random() < 0.05 or (latency_us > 6_000_000 and rng.random() < 0.4)
    children = [c for c in plan if c[1] != "TOOL" or name != "answer_question"
                or rng.random() < 0.4]
    fail_at = len(children) - 1 - (rng.random() < 0.5 and len(children) > 1) if failed else -1
    tid = f"tr-{rng.getrandbits(128):032x}"
    root_id = f"{rng.getrandbits(64):016x}"
    start_ns = ts_ms * 1_000_000 + rng.randrange(1000) * 1000  # microsecond precision
    end_ns = start_ns + latency_us * 1000
    question = f"question {i}: where is my order?"
    spans: list[Span] = []
    usage_in = usage_out = 0
    weights = [rng.uniform(0.3, 1.0) * (3 if t == "CHAT_MODEL" else 1) for _, t in children]
    budget_us = latency_us * 0.96
    cursor = start_ns + rng.randrange(50, 400) * 1000
    for k, ((span_name, span_type), w) in enumerate(zip(children, weights, strict=True)):
        dur_ns = max(1, int(budget_us * w / sum(weights))) * 1000
        error = "TimeoutError" if k == fail_at else None
        extra: dict[str, Any] = {}
        if span_type == "CHAT_MODEL":
            extra = {"mlflow.llm.model": "gpt-4o-mini", "mlflow.llm.provider": "openai"}
            if error is None:
                inp = rng.randint(300, 3500 if name == "summarize" else 1500)
                out = rng.randint(20, 600)
                extra["mlflow.chat.tokenUsage"] = {"input_tokens": inp, "output_tokens": out,
                                                   "total_tokens": inp + out}
                usage_in, usage_out = usage_in + inp, usage_out + out
        spans.append(_span(tid, f"{rng.getrandbits(64):016x}", root_id, span_name, span_type,
                           cursor, min(cursor + dur_ns, end_ns - 1000),
                           inputs={"query": question}, outputs=None if error else {"ok": True},
                           error=error, extra=extra))
        if error:
            break
        cursor = min(cursor + dur_ns + rng.randrange(0, 300) * 1000, end_ns - 2000)
    answer = None if failed else {"answer": f"answer {i}"}
    root = _span(tid, root_id, None, name, "CHAIN", start_ns, end_ns,
                 inputs={"question": question}, outputs=answer,
                 error="TimeoutError" if failed else None)
    metadata = {"mlflow.trace_schema.version": "3", "mlflow.user": "bench",
                "mlflow.source.name": "support_bot.py", "mlflow.source.type": "LOCAL"}
    if usage_in:
        metadata["mlflow.trace.tokenUsage"] = json.dumps(
            {"input_tokens": usage_in, "output_tokens": usage_out,
             "total_tokens": usage_in + usage_out})
    info = TraceInfo(
        trace_id=tid, trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=start_ns // 1_000_000,
        state=TraceState.ERROR if failed else TraceState.OK,
        request_preview=json.dumps({"question": question}),
        response_preview=json.dumps(answer) if answer else None,
        execution_duration=(end_ns - start_ns) // 1_000_000,
        trace_metadata=metadata, tags={"mlflow.traceName": name, "environment": env})
    return info, [root, *spans]


def stamps(n: int, seed: int, until_ms: int) -> list[int]:
    rng = random.Random(seed)
    return sorted(until_ms - DAY_MS + rng.randrange(DAY_MS) for _ in range(n))


def traces(n: int, seed: int, until_ms: int, experiment_id: str
           ) -> Iterator[tuple[TraceInfo, list[Span]]]:
    """The same ``n`` traces for the same seed and window, in time order."""
    rng = random.Random(seed + 1)
    for i, ts in enumerate(stamps(n, seed, until_ms)):
        yield make_trace(rng, experiment_id, i, ts)


def chunks(it: Iterator[Any], size: Callable[[list[Any]], bool]) -> Iterator[list[Any]]:
    out: list[Any] = []
    for x in it:
        out.append(x)
        if size(out):
            yield out
            out = []
    if out:
        yield out


# --- the exact figures, from the generated traces ---------------------------------------------


@dataclass
class Truth:
    latency_ms: list[int] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    hourly: Counter[int] = field(default_factory=Counter)
    span_ns: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, info: TraceInfo, spans: list[Span]) -> None:
        self.latency_ms.append(info.execution_duration)
        self.states[info.state.value] += 1
        usage = info.trace_metadata.get("mlflow.trace.tokenUsage")
        if usage:
            self.tokens.update(json.loads(usage))
        self.hourly[info.request_time // HOUR_MS * HOUR_MS] += 1
        for s in spans:
            self.span_ns[s.span_type].append(s.end_time_ns - s.start_time_ns)


def linear(values: Any, q: float) -> float:
    """MLflow's percentile: linear interpolation (numpy's default, PERCENTILE_CONT)."""
    return float(np.quantile(values, q))


def lower(values: Any, q: float) -> float:
    """The sample at rank floor(q (n - 1)): what our sketch is within 1% of."""
    return float(np.quantile(values, q, method="lower"))


# --- MLflow: load, server, queries ------------------------------------------------------------


class Server:
    """``mlflow server`` on a backend store URI, one worker, a free port (the approach of
    tests/mlflow_server.py, which starts only SQLite stores). Ready when a real API call
    answers."""

    def __init__(self, backend_uri: str, folder: Path) -> None:
        self.backend_uri, self.folder, self.port = backend_uri, folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> Server:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = open(self.folder / "mlflow-server.log", "ab")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
             "--default-artifact-root", str(self.folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"{self.uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {self.folder}/mlflow-server.log")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not ready in {timeout_s}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass(frozen=True)
class Load:
    seconds: float
    detail: str


def load_mlflow(store: SqlAlchemyStore, gen: Iterator[tuple[TraceInfo, list[Span]]],
                experiment_id: str, sample_ids: set[str], every: int) -> Load:
    """The SDK exporter's writes: spans in export batches (``log_spans``, many traces a call),
    then each trace's info (``start_trace``). Collects every ``every``-th trace id."""
    spans_s = infos_s = 0.0
    n = 0
    for chunk in chunks(gen, lambda c: sum(len(s) for _, s in c) > SPAN_BATCH - 6):
        t0 = time.perf_counter()
        store.log_spans(experiment_id, [s for _, spans in chunk for s in spans])
        t1 = time.perf_counter()
        for info, _ in chunk:
            store.start_trace(info)
        infos_s += time.perf_counter() - t1
        spans_s += t1 - t0
        sample_ids.update(info.trace_id for k, (info, _) in enumerate(chunk, n)
                          if k % every == 0)
        if (n + len(chunk)) // 10_000 > n // 10_000:
            print(f"    MLflow: {n + len(chunk):,} traces in {spans_s + infos_s:.0f} s",
                  flush=True)
        n += len(chunk)
    total = spans_s + infos_s
    return Load(total, f"{n / total:,.0f} traces/s (log_spans {spans_s:.1f} s, "
                       f"start_trace {infos_s:.1f} s)")


def check_stored(store: SqlAlchemyStore, sample: dict[str, bytes]) -> str:
    """The sampled traces as MLflow stored them decode to the same events as the generated
    records (trace fields, tags, tokens, every span's type, duration and status)."""
    def key(raw: bytes) -> tuple[Any, ...]:
        e = decode_trace(raw, PROV, 1 << 24)
        return (e.trace_id, e.experiment_id, e.name, e.status, e.timestamp_ms,
                e.execution_time_ms, e.tags.get("environment"), e.input_tokens, e.output_tokens,
                e.total_tokens, sorted((s.span_type, s.name, s.duration_ms, s.status)
                                       for s in e.spans))
    stored = store.batch_get_traces(list(sample))
    bad = [t.info.trace_id for t in stored if key(t.to_json().encode()) != key(
        sample[t.info.trace_id])]
    missing = len(sample) - len(stored)
    if bad or missing:
        return f"MISMATCH: {len(bad)} differ ({bad[:3]}), {missing} missing"
    return f"{len(sample)} sampled traces read back from MLflow equal the generated records"


@dataclass(frozen=True)
class Q:
    label: str
    view: MetricViewType
    metric: str
    aggs: tuple[MetricAggregation, ...]
    dimensions: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    interval_s: int | None = None


BASE_QUERIES = (
    Q("traces by status", MetricViewType.TRACES, "trace_count", (COUNT,), ("trace_status",)),
    Q("trace latency avg/max/p50/p95/p99", MetricViewType.TRACES, "latency",
      (AVG, MAX, *PCT.values())),
    Q("input tokens sum", MetricViewType.TRACES, "input_tokens", (SUM,)),
    Q("output tokens sum", MetricViewType.TRACES, "output_tokens", (SUM,)),
    Q("total tokens sum", MetricViewType.TRACES, "total_tokens", (SUM,)),
    Q("hourly volume", MetricViewType.TRACES, "trace_count", (COUNT,), interval_s=3600),
    Q("spans by type", MetricViewType.SPANS, "span_count", (COUNT,), ("span_type",)),
)


def span_latency_query(span_type: str) -> Q:
    # MLflow's span latency has no span_type dimension; it takes a span.type filter.
    return Q(f"span latency, {span_type}", MetricViewType.SPANS, "latency", (AVG, MAX, PCT[0.95]),
             filters=(f"span.type = '{span_type}'",))


def run_query(store: Any, q: Q, experiment_id: str, since: int, until: int
              ) -> list[MetricDataPoint]:
    page = store.query_trace_metrics(
        experiment_ids=[experiment_id], view_type=q.view, metric_name=q.metric,
        aggregations=list(q.aggs), dimensions=list(q.dimensions) or None,
        filters=list(q.filters) or None, time_interval_seconds=q.interval_s,
        start_time_ms=since, end_time_ms=until - 1)
    if page.token:
        raise RuntimeError(f"{q.label}: more than one page of points")
    return list(page)


def mlflow_report(store: Any, experiment_id: str, since: int, until: int,
                  per_query: dict[str, list[float]] | None = None
                  ) -> dict[str, list[MetricDataPoint]]:
    """The figures of one report, as MLflow's queries give them: the fixed queries, then one
    span-latency query per span type the span count found (what a client of the API must do)."""
    out: dict[str, list[MetricDataPoint]] = {}

    def one(q: Q) -> None:
        t0 = time.perf_counter()
        out[q.label] = run_query(store, q, experiment_id, since, until)
        if per_query is not None:
            per_query.setdefault(q.label, []).append((time.perf_counter() - t0) * 1000)

    for q in BASE_QUERIES:
        one(q)
    for p in sorted(out["spans by type"], key=lambda p: p.dimensions["span_type"]):
        one(span_latency_query(p.dimensions["span_type"]))
    return out


# --- trace-curator: load, report --------------------------------------------------------------


def load_ours(url: str, gen: Iterator[tuple[TraceInfo, list[Span]]], now_ms: int,
              sample_ids: set[str]) -> tuple[Load, dict[str, bytes]]:
    """The worker's path: decode each record, one transaction a batch (rules, metrics)."""
    settings = Settings.model_construct()  # the documented defaults, whatever the environment
    engine = make_engine(url)
    writer = SqlWriter(engine, load_rules(None) if settings.rules_enabled else None,
                       bucket_config(settings))
    timed, n, sample = 0.0, 0, {}
    for chunk in chunks(gen, lambda c: len(c) >= settings.batch_max_records):
        records = [Trace(info, TraceData(spans)).to_json().encode() for info, spans in chunk]
        sample.update((info.trace_id, r) for (info, _), r in zip(chunk, records, strict=True)
                      if info.trace_id in sample_ids)
        t0 = time.perf_counter()
        events = [decode_trace(r, PROV, settings.max_event_bytes) for r in records]
        writer.write(Batch(traces=events), now_ms)
        timed += time.perf_counter() - t0
        n += len(chunk)
    engine.dispose()
    return Load(timed, f"{n / timed:,.0f} traces/s (decode, rules, metrics, commit; batches of "
                       f"{settings.batch_max_records:,})"), sample


def run_cli(url: str) -> tuple[float, dict[str, Any]]:
    exe = Path(sys.executable).with_name("trace-curator")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "worker"]
    # PYTHONPATH: this checkout's code, also when run from a copy of it (the editable install
    # points at the main checkout); a no-op otherwise.
    env = {**os.environ, "TRACE_CURATOR_STORE_URL": url,
           "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT),
                                                       os.environ.get("PYTHONPATH"))))}
    t0 = time.perf_counter()
    done = subprocess.run([*cmd, "report", "--since", "24h", "--format", "json"], env=env,
                          cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - t0, orjson.loads(done.stdout)


# --- side by side -----------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    exact: str
    mlflow: str
    ours: str
    agreement: str
    ok: bool
    note: str = ""


def _fmt(v: float | int | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1000:
        return f"{int(v):,}{unit}"
    return f"{v:,.2f}{unit}" if abs(v) >= 10 else f"{v:,.3f}{unit}"


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a - b)


def compare(truth: Truth, got: dict[str, list[MetricDataPoint]], ours: Stats) -> list[Row]:
    rows: list[Row] = []

    def count(figure: str, exact: int, m: float, o: int) -> None:
        same = int(m) == o == exact
        rows.append(Row(figure, _fmt(exact), _fmt(int(m)), _fmt(o),
                        "equal" if same else f"DIFFERENT ({o - int(m):+,})", same))

    def value(figure: str, exact: float, m: float, o: float, tol: float, *,
              m_def: float | None = None, o_def: float | None = None, cause: str = "",
              o_tol: float | None = None, unit: str = " ms") -> None:
        gap = _rel(o, m)
        if gap <= tol:
            rows.append(Row(figure, _fmt(exact, unit), _fmt(m, unit), _fmt(o, unit),
                            f"within {tol:.0%}" if tol >= 0.01 else "equal", True))
            return
        # Explained only if each side equals the exact value under its own definition.
        m_ok = m_def is not None and _rel(m, m_def) <= 1e-9
        o_ok = o_def is not None and _rel(o, o_def) <= (tol if o_tol is None else o_tol)
        why = cause if m_ok and o_ok else "UNEXPLAINED"
        rows.append(Row(figure, _fmt(exact, unit), _fmt(m, unit), _fmt(o, unit),
                        f"{gap:.2%} apart", m_ok and o_ok, why))

    by_status = {p.dimensions["trace_status"]: p.values["COUNT"]
                 for p in got["traces by status"]}
    total = sum(truth.states.values())
    count("traces", total, sum(by_status.values()), ours.total_traces)
    count("OK traces", truth.states["OK"], by_status.get("OK", 0), ours.ok_count)
    count("ERROR traces", truth.states["ERROR"], by_status.get("ERROR", 0), ours.error_count)
    rate = truth.states["ERROR"] / total
    m_rate = by_status.get("ERROR", 0) / max(1, sum(by_status.values()))
    o_rate = 1 - ours.success_rate
    value("error rate", rate * 100, m_rate * 100, o_rate * 100, 1e-9, unit=" %")

    (lat,) = got["trace latency avg/max/p50/p95/p99"]
    lat_v = np.array(truth.latency_ms)
    value("latency avg", float(lat_v.mean()), lat.values["AVG"], ours.avg_latency_ms, 1e-6)
    for q, mine in ((0.5, ours.p50_latency_ms), (0.95, ours.p95_latency_ms),
                    (0.99, ours.p99_latency_ms)):
        value(f"latency p{round(q * 100)}", linear(lat_v, q), lat.values[str(PCT[q])], mine,
              0.01, m_def=linear(lat_v, q), o_def=lower(lat_v, q),
              cause="MLflow interpolates between neighbouring samples; ours is within 1% of the "
                    "sample at rank floor(q(n-1))")
    value("latency max", float(lat_v.max()), lat.values["MAX"], ours.max_latency_ms, 0.01)

    for key, label in (("input", "input_tokens"), ("output", "output_tokens"),
                       ("total", "total_tokens")):
        (p,) = got[f"{key} tokens sum"]
        count(f"{key} tokens (sum)", truth.tokens[label], p.values["SUM"], ours.tokens[key])

    counts = {p.dimensions["span_type"]: int(p.values["COUNT"]) for p in got["spans by type"]}
    for span_type in sorted(truth.span_ns):
        ns = np.array(truth.span_ns[span_type])
        exact_ms = ns / 1e6
        floored = ns // 1_000_000  # MLflow's span latency
        mine = ours.span_types.get(span_type)
        count(f"{span_type} spans", len(ns), counts.get(span_type, 0),
              mine.count if mine else 0)
        (sp,) = got[f"span latency, {span_type}"]
        if mine is None:
            continue
        floor_cause = ("MLflow floors each span to whole ms ((end_ns - start_ns) // 1e6); ours "
                       "keeps microseconds")
        value(f"{span_type} span avg", float(exact_ms.mean()), sp.values["AVG"],
              mine.avg_time_s * 1000, 1e-6, m_def=float(floored.mean()),
              o_def=float(exact_ms.mean()), o_tol=1e-6, cause=floor_cause)
        value(f"{span_type} span p95", linear(exact_ms, 0.95), sp.values[str(PCT[0.95])],
              mine.p95_time_s * 1000, 0.01, m_def=linear(floored, 0.95),
              o_def=lower(exact_ms, 0.95), cause=floor_cause + "; MLflow interpolates, ours is "
                                                                "a sketch (1%)")
        value(f"{span_type} span max", float(exact_ms.max()), sp.values["MAX"],
              mine.max_time_s * 1000, 0.01, m_def=float(floored.max()),
              o_def=float(exact_ms.max()), cause=floor_cause)
    return rows


def compare_hourly(truth: Truth, got: dict[str, list[MetricDataPoint]],
                   hourly_ours: dict[str, int]) -> Row:
    exact = {iso(h): n for h, n in truth.hourly.items()}
    mlflow = {datetime.fromisoformat(p.dimensions["time_bucket"][:19]).strftime(
        "%Y-%m-%dT%H:%M:%SZ"): int(p.values["COUNT"]) for p in got["hourly volume"]}
    ours = {k: v for k, v in hourly_ours.items() if v}
    same = exact == mlflow == ours
    return Row("hourly volume (traces per hour)", f"{len(exact)} hours",
               f"{len(mlflow)} hours", f"{len(ours)} hours",
               "equal, hour by hour" if same else "DIFFERENT", same)


# --- one backend ------------------------------------------------------------------------------


@contextlib.contextmanager
def databases(backend: str, folder: Path) -> Iterator[tuple[str, str]]:
    """(MLflow store URI, trace-curator store URL), fresh, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'mlflow.db'}", f"sqlite:///{folder / 'trace_curator.db'}"
        return
    import psycopg

    names = [f"bench_vsm_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "tc")]
    base = PG_ADMIN.rsplit("/", 1)[0].split("://", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        for name in names:
            c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{base}/{names[0]}", f"postgresql://{base}/{names[1]}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            for name in names:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def analyze(*urls: str) -> None:
    """Table statistics after the bulk load, on both stores alike, as autovacuum would gather
    them. A test server may run with autovacuum off: without statistics, PostgreSQL plans
    MLflow's span-latency query as one bitmap scan of every span of the type per trace in the
    window (measured: 103 s on 48,579 traces, 144 ms after ANALYZE)."""
    import psycopg

    for url in urls:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                             autocommit=True) as c:
            autovacuum = c.execute("SHOW autovacuum").fetchone()
            c.execute("ANALYZE")
    print(f"  ANALYZE on both databases (this server's autovacuum: {autovacuum[0]})")


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs)


def ms(x: float) -> str:
    return f"{x / 1000:.2f} s" if x >= 1000 else f"{x:.1f} ms"


def run_backend(backend: str, args: argparse.Namespace, until_ms: int, folder: Path,
                truth: Truth) -> bool:
    since = until_ms - DAY_MS
    n = args.traces
    print(f"\n== {backend}: {n:,} traces, window {iso(since)} .. {iso(until_ms)} ==")
    with databases(backend, folder) as (mlflow_uri, our_url):
        store = SqlAlchemyStore(mlflow_uri, str(folder / "artifacts"))
        eid = store.create_experiment(f"vs-mlflow-{args.seed}-{uuid.uuid4().hex[:6]}")
        sample_ids: set[str] = set()
        loaded = load_mlflow(store, traces(n, args.seed, until_ms, eid), eid, sample_ids,
                             max(1, n // SAMPLE_CHECK))
        print(f"  MLflow load (SqlAlchemyStore: log_spans + start_trace): "
              f"{loaded.seconds:.1f} s, {loaded.detail}")

        engine = make_engine(our_url)
        schema.upgrade(engine)
        engine.dispose()
        ours_load, sample = load_ours(our_url, traces(n, args.seed, until_ms, eid),
                                      until_ms + MINUTE_MS, sample_ids)
        print(f"  trace-curator load (decode_trace + SqlWriter): {ours_load.seconds:.1f} s, "
              f"{ours_load.detail}")
        stored_check = check_stored(store, sample)
        print(f"  same traces: {stored_check}")
        if backend == "postgresql":
            analyze(mlflow_uri, our_url)

        server = Server(mlflow_uri, folder).start()
        engine = make_engine(our_url)
        try:
            rest = TracingClient(tracking_uri=server.uri).store
            server_runs, inproc_runs, ours_runs = [], [], []
            per_query: dict[str, list[float]] = {}
            got = mlflow_report(rest, eid, since, until_ms)  # warm-up
            mlflow_report(store, eid, since, until_ms)
            mine = summary(engine, since, until_ms)
            for _ in range(args.runs):
                t0 = time.perf_counter()
                got = mlflow_report(rest, eid, since, until_ms, per_query)
                server_runs.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                mlflow_report(store, eid, since, until_ms)
                inproc_runs.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                mine = summary(engine, since, until_ms)
                ours_runs.append((time.perf_counter() - t0) * 1000)
            cli_s, cli = run_cli(our_url)
        except Exception:
            log = (folder / "mlflow-server.log").read_text(errors="replace").splitlines()
            print("  the run failed; the MLflow server's log ends with:\n    "
                  + "\n    ".join(log[-30:]), flush=True)
            raise
        finally:
            server.stop()
            engine.dispose()
            store.engine.dispose()

    rows = [r for r in compare(truth, got, mine.overall) if r.figure != "hourly volume"]
    rows.append(compare_hourly(truth, got, mine.hourly_volume))
    cli_since = datetime.fromisoformat(cli["window"]["since"].replace("Z", "+00:00"))
    in_cli = n - bisect.bisect_left(stamps(n, args.seed, until_ms),
                                    int(cli_since.timestamp() * 1000))
    cli_ok = cli["total_traces"] == in_cli
    rows.append(Row("`report --since 24h` (CLI, window ending at its own now)", _fmt(in_cli),
                    "", _fmt(cli["total_traces"]),
                    "equal" if cli_ok else "DIFFERENT", cli_ok,
                    "" if in_cli == n else
                    f"the window moved on by the time it ran: {n - in_cli:,} of the oldest "
                    "traces fell out"))

    print(f"\n  Figures ({backend}; exact = computed from the generated traces):\n")
    print("  | figure | exact | MLflow | trace-curator | agreement |")
    print("  | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"  | {r.figure} | {r.exact} | {r.mlflow} | {r.ours} | {r.agreement} |")
    notes = [r for r in rows if r.note]
    if notes:
        print("\n  Why figures differ:")
        for r in notes:
            print(f"    {r.figure}: {r.note}")
    server_med, inproc_med, ours_med = (median_ms(x) for x in (server_runs, inproc_runs,
                                                               ours_runs))
    n_queries = len(got)
    print(f"\n  Latency for the figures of one 24 h report (median of {args.runs}):\n")
    print("  | query | time | vs `summary()` |")
    print("  | --- | --- | --- |")
    print(f"  | MLflow `query_trace_metrics` via `mlflow server` ({n_queries} calls) | "
          f"{ms(server_med)} | {server_med / ours_med:,.0f}x |")
    print(f"  | MLflow `SqlAlchemyStore.query_trace_metrics` in-process ({n_queries} calls) | "
          f"{ms(inproc_med)} | {inproc_med / ours_med:,.0f}x |")
    print(f"  | trace-curator `summary()` (1 call) | {ms(ours_med)} | 1x |")
    print(f"  | `trace-curator report --since 24h --format json` (wall, once, process start "
          f"included) | {ms(cli_s * 1000)} | |")
    print("\n  MLflow per call via the server (median):")
    for label, xs in per_query.items():
        print(f"    {label:<36} {ms(median_ms(xs))}")
    ok = all(r.ok for r in rows) and not stored_check.startswith("MISMATCH")
    if not ok:
        print("\n  DISAGREEMENT without a known cause: see the table above")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per query set (median)")
    ap.add_argument("--backends", nargs="+", choices=("sqlite", "postgresql"),
                    default=["sqlite"])
    args = ap.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    until_ms = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
    print(f"vs_mlflow: {args.traces:,} traces (seed {args.seed}) over {iso(until_ms - DAY_MS)} "
          f".. {iso(until_ms)}; MLflow {__import__('mlflow').__version__}; "
          f"{os.cpu_count()} CPUs; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    truth = Truth()
    for info, spans in traces(args.traces, args.seed, until_ms, "0"):
        truth.add(info, spans)
    ok = True
    folder = Path(tempfile.mkdtemp(prefix="bench-vs-mlflow-"))
    try:
        for backend in args.backends:
            sub = folder / backend
            sub.mkdir()
            ok = run_backend(backend, args, until_ms, sub, truth) and ok
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
