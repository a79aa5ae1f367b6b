"""What ``/metrics``, ``/healthz`` and ``/readyz`` say about one worker process.

Nothing here counts on its own: the loop keeps ``RunStats``, the tag writer and the curator keep
their counters, and ``WorkerCollector`` turns them into Prometheus families when ``/metrics`` is
scraped. A scrape only reads, on the HTTP server's thread; the one store query is the outbox
size (a COUNT), and a store that does not answer leaves that family out instead of failing the
scrape. Consumer lag is the loop's own figure (highwater - committed, refreshed every few
seconds on the loop's thread: the Kafka consumer is not thread-safe).

Liveness (``/healthz``): the loop turned within ``LIVENESS_S`` (waiting out an outage counts).
Readiness (``/readyz``): the source can deliver (a Kafka group joined, or MLflow listed) and no
step is being retried. Neither exposes data beyond counts and states.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from store import outbox
from worker.loop import BATCH_SECONDS_BUCKETS, Worker
from worker.serve.server import TEXT, Response, Route

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

logger = logging.getLogger(__name__)

LIVENESS_S = 120.0
PREFIX = "trace_curator"


class WorkerCollector(Collector):
    def __init__(self, worker: Worker, engine: Engine | None) -> None:
        self.worker = worker
        self.engine = engine
        self.started_unix = time.time()

    def collect(self) -> Iterator[Metric]:
        s = self.worker.stats
        events = CounterMetricFamily(f"{PREFIX}_events_consumed", "Events stored, by kind.",
                                     labels=["kind"])
        events.add_metric(["trace"], s.traces)
        events.add_metric(["assessment"], s.assessments)
        yield events
        yield _counter("records_consumed", "Records read from the source (all kinds).",
                       s.records)
        yield _counter("dead_letters", "Records dead-lettered (undecodable or refused).",
                       s.dead_letters)
        yield _counter("tags_changed", "Rule tags set or cleared on stored traces.",
                       s.tags_changed)
        yield _counter("otlp_spans", "OpenTelemetry spans read (redeliveries included).",
                       s.otlp_spans)
        yield _counter("otlp_spans_dropped", "OpenTelemetry spans dropped past their "
                       "trace's caps (otlp_max_trace_spans, otlp_max_trace_bytes).",
                       s.otlp_dropped)
        otlp = CounterMetricFamily(f"{PREFIX}_otlp_traces_assembled",
                                   "OpenTelemetry traces assembled from buffered spans, by how: "
                                   "due, early (the buffer past a bound), refused by the store.",
                                   labels=["how"])
        otlp.add_metric(["due"], s.otlp_traces - s.otlp_forced)
        otlp.add_metric(["early"], s.otlp_forced)
        otlp.add_metric(["refused"], s.otlp_refused)
        yield otlp
        spans_from = CounterMetricFamily(
            f"{PREFIX}_otlp_traces_assembled_from",
            "OpenTelemetry traces assembled, by where their spans came from: the worker's span "
            "cache (otlp_span_cache_bytes), or read back from the store.", labels=["source"])
        spans_from.add_metric(["cache"], s.otlp_from_cache)
        spans_from.add_metric(["store"], max(s.otlp_traces - s.otlp_from_cache, 0))
        yield spans_from
        yield _counter("batches", "Batches stored and checkpointed.", s.batches)
        yield _counter("retries", "Retries of a failing poll or store step.", s.retries)
        yield _counter("offset_commit_failures",
                       "Offset commits refused (a rebalance): the records are redelivered.",
                       s.commit_failures)
        yield _histogram(s.batch_seconds_counts, s.batch_seconds_sum)
        lag = GaugeMetricFamily(f"{PREFIX}_consumer_lag",
                                "Records not yet processed (highwater - committed).",
                                labels=["topic", "partition"])
        for (topic, partition), n in sorted(s.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        last = GaugeMetricFamily(f"{PREFIX}_last_success_timestamp_seconds",
                                 "Unix time of the last success of each task.", labels=["task"])
        if s.last_checkpoint_unix is not None:
            last.add_metric(["batch"], s.last_checkpoint_unix)
        yield from self._jobs(last)
        yield last
        yield from self._outbox()
        up = GaugeMetricFamily(f"{PREFIX}_ready", "1 when /readyz would answer 200.")
        up.add_metric([], 1.0 if readiness(self.worker)[0] else 0.0)
        yield up
        start = GaugeMetricFamily(f"{PREFIX}_start_time_seconds", "Unix time the worker started.")
        start.add_metric([], self.started_unix)
        yield start

    def _jobs(self, last: GaugeMetricFamily) -> Iterator[Metric]:
        leader = GaugeMetricFamily(f"{PREFIX}_leader",
                                   "1 while this worker leads the job (PostgreSQL lock).",
                                   labels=["task"])
        writer: Any = self.worker.tag_writer
        if writer is not None:
            yield _counter("tags_written", "Tags confirmed by MLflow.", writer.written)
            yield _counter("tag_write_failures", "Tag writes to retry later.",
                           writer.failed_attempts)
            leader.add_metric(["tag-writer"], 1.0 if writer.leader.leading else 0.0)
            if writer.last_round_unix is not None:
                last.add_metric(["tag_write"], writer.last_round_unix)
        cur: Any = self.worker.curator
        if cur is not None:
            runs = CounterMetricFamily(f"{PREFIX}_curation_runs",
                                       "Dataset curation runs, by outcome.", labels=["outcome"])
            for outcome, n in sorted(cur.outcomes.items()):
                runs.add_metric([outcome], n)
            yield runs
            leader.add_metric(["curator"], 1.0 if cur.lock.leading else 0.0)
            if cur.last_success_unix is not None:
                last.add_metric(["curation"], cur.last_success_unix)
        yield leader

    def _outbox(self) -> Iterator[Metric]:
        if self.engine is None:
            return
        try:
            with self.engine.connect() as conn:
                stats = outbox.stats(conn)
        except Exception as exc:  # the store is away: leave the family out, keep the scrape
            logger.debug("outbox size unavailable: %s", exc)
            return
        size = GaugeMetricFamily(f"{PREFIX}_outbox_size",
                                 "Tag writes waiting for MLflow, by state.", labels=["state"])
        size.add_metric(["ready"], stats.ready)
        size.add_metric(["waiting_for_trace"], stats.waiting_for_trace)
        yield size
        age = GaugeMetricFamily(f"{PREFIX}_outbox_oldest_age_seconds",
                                "Age of the oldest waiting tag write (0 when none).")
        age.add_metric([], max(0.0, time.time() - stats.oldest_created_ms / 1000)
                       if stats.oldest_created_ms else 0.0)
        yield age


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _histogram(counts: list[int], total: float) -> HistogramMetricFamily:
    buckets, running = [], 0
    for bound, n in zip((*BATCH_SECONDS_BUCKETS, float("inf")), counts, strict=True):
        running += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return HistogramMetricFamily(f"{PREFIX}_batch_seconds",
                                 "One batch from decode to offset commit.", buckets=buckets,
                                 sum_value=total)


def liveness(worker: Worker) -> tuple[bool, str]:
    age = time.monotonic() - worker.stats.heartbeat_s
    if age > LIVENESS_S and not worker.stop.is_set():
        return False, f"the loop has not turned for {age:.0f}s"
    return True, "ok"


def readiness(worker: Worker) -> tuple[bool, str]:
    if worker.stop.is_set():
        return False, "stopping"
    if worker.stats.failing is not None:
        return False, f"retrying the {worker.stats.failing} step"
    if not worker.source.ready():
        return False, f"the {worker.source.name} source is not ready (joining)"
    return True, "ok"


def routes(worker: Worker, engine: Engine | None) -> dict[str, Route]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(worker, engine))

    def metrics(_q: Mapping[str, list[str]]) -> Response:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    def probe(check: Any) -> Any:
        def handler(_q: Mapping[str, list[str]]) -> Response:
            ok, why = check(worker)
            return (200 if ok else 503), TEXT, (why + "\n").encode()
        return handler

    return {"/metrics": metrics, "/healthz": probe(liveness), "/readyz": probe(readiness)}
