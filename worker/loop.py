"""The worker loop: poll -> (maybe) maintain -> (maybe) assemble -> decode -> checkpoint ->
(maybe) wait for the assembler, one batch at a time.

Checkpoint order is the invariant (docs/design.md, invariants 1 and 5; ``Worker._checkpoint``):
(1) publish and flush the batch's dead letters to ``<topic>.dlq``; (2) commit the SQL transaction
(upserts, dead-letter rows, rule decisions, metric deltas); (3) commit offsets, last processed + 1,
per partition. A failure before step 3 commits no offset: the batch is redelivered, and idempotent
upserts make that harmless. ``TransientError`` in steps 1-2 is retried with jittered exponential
backoff until it succeeds or ``stop`` is set; nothing is skipped. Signals only set ``stop``: the
batch in hand is checkpointed before ``run`` returns unless an outage holds it (then nothing is
committed). The tag writer (MLflow write-back) and the curator run beside the loop.
OpenTelemetry spans are checkpointed into the store's span buffer like any event. The traces
that are due are turned into trace events in transactions of their own (``store.otlp_buffer``),
whichever worker read their spans. On PostgreSQL an assembler thread beside the loop does it:
the store's trace locks keep it and the loop's batches apart, as they keep two workers apart,
and each waits on the database while the other computes. When more traces are pending than half
the buffer's bound, the loop waits for the assembler before it polls again (at most
``ASSEMBLY_WAIT_MAX_S``), so a backlog drains without pushing traces out of the buffer early. A
crash of the assembler stops the worker with its error, as a crash of the loop does. On SQLite
(one writer at a time) the loop assembles between batches.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_random_exponential,
)

from consumers.errors import DecodeError, TransientError
from consumers.events import AssessmentEvent, DeadLetter, Provenance, RawRecord, TraceEvent
from consumers.formats import dead_letter, decode_assessment, decode_trace
from consumers.otlp import OtlpSpan, OtlpSpans, decode_otlp
from consumers.ports import DeadLetterSink, EventSource, TopicKind
from store.otlp_buffer import OtlpConfig
from store.upserts import Batch, BatchResult
from store.writer import EmitResult, StoreRejectedError
from worker.settings import Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class TagWriterPort(Protocol):
    """The outbox drainer (``worker.tag_writer.TagWriter``) as the loop needs it."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 10.0) -> None: ...

    def drained(self) -> bool: ...


class BackgroundPort(Protocol):
    """A job beside the loop (``worker.curation.curator.CuratorThread``)."""

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 30.0) -> None: ...


class MaintenancePort(Protocol):
    """Periodic upkeep (``worker.maintenance.Pruner``): cheap to call when nothing is due."""

    def run_due(self, now_ms: int) -> object: ...


class BatchWriter(Protocol):
    """The store port: ``store.writer.SqlWriter``, or an in-memory fake in unit tests."""

    def write(self, batch: Batch, now_ms: int) -> BatchResult:
        """One transaction. Raises TransientError (retry) or StoreRejectedError (isolate)."""
        ...

    def close(self) -> None: ...


class OtlpEmitterPort(Protocol):
    """Assembles buffered OpenTelemetry spans into traces (``store.writer.SqlWriter``)."""

    def emit_otlp(self, now_ms: int, cfg: OtlpConfig) -> EmitResult:
        """One transaction of due traces. Raises TransientError."""
        ...

    def pending_otlp(self) -> int:
        """Traces with spans not yet assembled."""
        ...

    @property
    def beside_loop(self) -> bool:
        """Whether assembly gains from a thread of its own: the store takes writes from two
        connections at once (PostgreSQL). SQLite takes one writer at a time: assembly then runs
        in the loop, between batches."""
        ...


T = TypeVar("T")
Decoded = TraceEvent | AssessmentEvent | OtlpSpans
JOIN_GRACE_S = 60.0  # how long --exit-when-idle waits for a group join before giving up
LAG_EVERY_S = 5.0  # how often the loop asks the source for its lag (a broker round trip)
OTLP_EMIT_EVERY_S = 0.5  # how often the assembler looks for OpenTelemetry traces due
ASSEMBLY_WAIT_MAX_S = 30.0  # the longest the loop waits for the assembler between two polls
ASSEMBLER_JOIN_S = 30.0  # how long stopping waits for the assembler's transaction in hand
# Upper bounds (s) of the batch latency histogram that /metrics exposes.
BATCH_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class RunStats:
    records: int = 0
    traces: int = 0
    assessments: int = 0
    dead_letters: int = 0
    batches: int = 0
    retries: int = 0
    commit_failures: int = 0
    tags_changed: int = 0
    otlp_spans: int = 0  # OpenTelemetry spans read (buffered, or redelivered and ignored)
    otlp_traces: int = 0  # OpenTelemetry traces assembled and written (each version)
    otlp_forced: int = 0  # of them, assembled early: the buffer was past a bound
    otlp_refused: int = 0  # assembled traces the store refused, given up
    otlp_dropped: int = 0  # spans refused past their trace's caps (a redelivered one again)
    otlp_from_cache: int = 0  # of otlp_traces, assembled from the span cache, not read back
    started_s: float = field(default_factory=time.monotonic)
    first_record_s: float | None = None  # monotonic time the first records arrived
    last_checkpoint_s: float | None = None  # monotonic time of the last completed checkpoint
    last_checkpoint_unix: float | None = None  # wall time of the same, for /metrics
    last_assembly_s: float | None = None  # monotonic time OpenTelemetry traces were last written
    heartbeat_s: float = field(default_factory=time.monotonic)  # the loop is alive (liveness)
    failing: str | None = None  # "poll" or "store" while that step is being retried
    lag: dict[tuple[str, int], int] = field(default_factory=dict)  # per partition, refreshed
    batch_seconds_counts: list[int] = field(
        default_factory=lambda: [0] * (len(BATCH_SECONDS_BUCKETS) + 1))
    batch_seconds_sum: float = 0.0

    def observe_batch(self, seconds: float) -> None:
        """One batch from decode to offset commit, into the latency histogram."""
        i = next((i for i, b in enumerate(BATCH_SECONDS_BUCKETS) if seconds <= b),
                 len(BATCH_SECONDS_BUCKETS))
        self.batch_seconds_counts[i] += 1
        self.batch_seconds_sum += seconds

    @property
    def busy_s(self) -> float:
        """From the first record received to the last checkpoint or, later, the last assembly
        of OpenTelemetry traces: the draining time."""
        if self.first_record_s is None or self.last_checkpoint_s is None:
            return 0.0
        return max(self.last_checkpoint_s, self.last_assembly_s or 0.0) - self.first_record_s

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self.started_s, 1e-9)
        busy = self.busy_s
        rate = self.records / busy if busy > 0 else 0.0
        return (f"records={self.records} traces={self.traces} assessments={self.assessments} "
                f"otlp_spans={self.otlp_spans} otlp_traces={self.otlp_traces} "
                f"otlp_spans_dropped={self.otlp_dropped} "
                f"dead_letters={self.dead_letters} batches={self.batches} "
                f"retries={self.retries} commit_failures={self.commit_failures} "
                f"elapsed_s={elapsed:.1f} busy_s={busy:.2f} rate_per_s={rate:.0f} "
                f"cpu_s={time.process_time():.1f}")


class Worker:
    """Drives one source into the store. ``run`` returns when stopped, idle or at a record limit."""

    def __init__(self, settings: Settings, source: EventSource, writer: BatchWriter,
                 dlq: DeadLetterSink, *, clock: Clock = time.time,
                 tag_writer: TagWriterPort | None = None,
                 maintenance: MaintenancePort | None = None,
                 curator: BackgroundPort | None = None,
                 emitter: OtlpEmitterPort | None = None) -> None:
        self.settings = settings
        self.curator = curator
        self.maintenance = maintenance
        self.source = source
        self.writer = writer
        self.tag_writer = tag_writer
        self.dlq = dlq
        self.clock = clock
        self.stop = threading.Event()
        self.stats = RunStats()
        self._ready_since: float | None = None
        max_bytes = settings.max_event_bytes
        by_kind: dict[TopicKind, Callable[[RawRecord], Decoded]] = {
            "trace": lambda r: decode_trace(r.value, r.provenance, max_bytes),
            "assessment": lambda r: decode_assessment(r.value, r.provenance, max_bytes),
            "otlp": lambda r: decode_otlp(r.value, settings.otlp_encoding, max_bytes),
        }
        # Decoded: the topics the source declares; a record on any other is a dead letter.
        self._decoders = {topic: by_kind[kind] for topic, kind in source.topics().items()}
        # OpenTelemetry traces are assembled from the store's span buffer, whoever read them.
        self.emitter = emitter if "otlp" in source.topics().values() else None
        self.otlp = otlp_config(settings)
        self._next_emit_s = 0.0
        self._stats_lock = threading.Lock()  # counters that the loop and the assembler share
        self._assembler_stop = threading.Event()
        self._assembled = threading.Event()  # set after each assembly transaction
        self._assembler_error: BaseException | None = None

    # -- the loop ------------------------------------------------------------------------------

    def run(self, *, max_records: int | None = None,
            exit_when_idle_s: float | None = None) -> RunStats:
        jobs = [j for j in (self.tag_writer, self.curator) if j is not None]
        for job in jobs:
            job.start()
        assembler = self._start_assembler()
        try:
            stats = self._run(max_records, exit_when_idle_s)
        finally:
            if assembler is not None:
                self._assembler_stop.set()
                assembler.join(ASSEMBLER_JOIN_S)
            for job in jobs:
                job.stop()
        if self._assembler_error is not None:
            raise self._assembler_error  # even if the loop had nothing left to do
        return stats

    def _run(self, max_records: int | None, exit_when_idle_s: float | None) -> RunStats:
        s = self.settings
        started = idle_since = time.monotonic()
        next_lag = started
        while not self.stop.is_set():
            self.stats.heartbeat_s = time.monotonic()
            if self._assembler_error is not None:
                raise self._assembler_error
            # Traces still due for assembly in the loop: look for records without waiting.
            poll = functools.partial(self.source.poll,
                                     0 if self._assembly_backlog() else s.poll_timeout_ms,
                                     s.batch_max_records)
            records = self._retry(poll, "poll")
            if records is None:
                break  # stopped while the source was unavailable
            self.maintain()
            if self._assemble_in_loop() and not self.assemble_due():
                break  # stopped while the store was unavailable
            if self.stats.heartbeat_s >= next_lag:
                next_lag = self.stats.heartbeat_s + LAG_EVERY_S
                self.stats.lag = self.source.lag()
            if not records:
                if self._finished():
                    logger.info("the source is exhausted and every tag is written back, exiting")
                    break
                if exit_when_idle_s is not None and self._idle_long_enough(
                        started, idle_since, exit_when_idle_s):
                    logger.info("idle for %.1fs, exiting", exit_when_idle_s)
                    break
                continue
            if not self.process(records):
                break  # stopped before the checkpoint: nothing committed, will be redelivered
            self.wait_for_assembly()
            idle_since = time.monotonic()
            if max_records is not None and self.stats.records >= max_records:
                break
        logger.info("worker stopped %s", self.stats.summary())
        return self.stats

    def _finished(self) -> bool:
        """A finite source (a backfill) has delivered everything, and the tags are written."""
        return self.source.exhausted() and (self.tag_writer is None or self.tag_writer.drained())

    def _idle_long_enough(self, started: float, idle_since: float, idle_s: float) -> bool:
        """Idle means nothing to do *with partitions assigned*: waiting for a group join (or a
        rebalance) is not idleness, or a restarted worker could exit before it saw its backlog.
        A source that never becomes ready still lets the run end, after a generous bound. Tags
        still to write back (other than those waiting for traces MLflow does not know) are work
        too, so a run that exits has written back every tag it could."""
        now = time.monotonic()
        if self.tag_writer is not None and not self.tag_writer.drained():
            return False  # tags still to write back: not idle
        if self.emitter is not None:
            pending: int | None = self._retry(self.emitter.pending_otlp, "assemble")
            if pending:
                return False  # spans waiting to be assembled into traces: not idle
        if not self.source.ready():
            self._ready_since = None
            return now - started >= idle_s + JOIN_GRACE_S
        if self._ready_since is None:
            self._ready_since = now
        return now - max(idle_since, self._ready_since) >= idle_s

    def process(self, records: list[RawRecord]) -> bool:
        """Decode, checkpoint and count one batch. False if stopped before the checkpoint."""
        began = time.monotonic()
        if self.stats.first_record_s is None:
            self.stats.first_record_s = began
        batch = self.decode(records)
        if not self._checkpoint(batch, records):
            return False
        self._count(batch, records, began)
        return True

    # -- the named steps -----------------------------------------------------------------------

    def decode(self, records: list[RawRecord]) -> Batch:
        batch = Batch()
        now_ms = self.now_ms()
        for r in records:
            decoder = self._decoders.get(r.topic)
            try:
                if decoder is None:
                    raise DecodeError(f"no decoder for topic {r.topic!r}", "topic")
                event = decoder(r)
            except DecodeError as exc:
                batch.dead_letters.append(
                    dead_letter(r, exc, now_ms, self.settings.dlq_max_payload_bytes))
                logger.warning("dead-lettered topic=%s partition=%d offset=%d error=%s",
                               r.topic, r.partition, r.offset, exc)
                continue
            if isinstance(event, OtlpSpans):
                self._take_spans(batch, r, event, now_ms)
            elif isinstance(event, TraceEvent):
                batch.traces.append(event)
            else:
                batch.assessments.append(event)
        return batch

    def _take_spans(self, batch: Batch, r: RawRecord, spans: OtlpSpans, now_ms: int) -> None:
        """A record's spans go to the buffer; its rejected spans, if any, make one dead letter
        of the record that names them (the others are kept)."""
        prov = r.provenance
        batch.spans.extend((s, prov) for s in spans.spans)
        if spans.rejects:
            reasons = "; ".join(f"span {j.span_id or '?'}: {j.reason}" for j in spans.rejects[:5])
            exc = DecodeError(f"{len(spans.rejects)} of the record's "
                              f"{len(spans.rejects) + len(spans.spans)} spans rejected, the "
                              f"others kept ({reasons})", "spans")
            batch.dead_letters.append(
                dead_letter(r, exc, now_ms, self.settings.dlq_max_payload_bytes))
            logger.warning("dead-lettered spans topic=%s partition=%d offset=%d error=%s",
                           r.topic, r.partition, r.offset, exc)

    def _checkpoint(self, batch: Batch, records: list[RawRecord]) -> bool:
        """Checkpoint a decoded batch, in this order (the module docstring says why):

        1. publish and flush the batch's dead letters to ``<topic>.dlq``;
        2. commit the SQL transaction: the batch's upserts, dead-letter rows, rule decisions,
           metric deltas and the source's progress; a refused row is isolated (``store``);
        3. commit offsets, last processed + 1, per partition.

        TransientError in steps 1-2 is retried until they succeed or ``stop`` is set; a retry
        does not re-send dead letters already flushed. Stopped during the retry: False, and no
        offset is committed. A failed offset commit only counts in ``commit_failures``.
        """
        batch.checkpoints = self.source.checkpoint()
        dlq_flushed = False  # loop state: survives the retries of this batch only

        def dead_letters_then_transaction() -> bool:
            nonlocal dlq_flushed
            # Step 1: dead letters out and durable, once per batch.
            if batch.dead_letters and not dlq_flushed:
                self.dlq.publish(batch.dead_letters)
                self.dlq.flush()
                dlq_flushed = True
            # Step 2: the SQL transaction (idempotent upserts, so a retry is harmless).
            return self.store(batch, records)

        if not self._retry(dead_letters_then_transaction, "store"):
            return False  # stopped during an outage: nothing committed, will be redelivered
        # Step 3: offsets; a refused commit means redelivery, which the upserts absorb.
        if not self.source.commit(next_offsets(records)):
            self.stats.commit_failures += 1
        return True

    def store(self, batch: Batch, records: list[RawRecord]) -> bool:
        """Checkpoint step 2: the batch's SQL transaction; True once the batch is stored. A row
        the database refuses is isolated (``_store_isolating``). Raises TransientError."""
        now_ms = self.now_ms()
        try:
            self._written(self.writer.write(batch, now_ms))
        except StoreRejectedError:
            self._store_isolating(batch, records, now_ms)
        return True

    def _store_isolating(self, batch: Batch, records: list[RawRecord], now_ms: int) -> None:
        """The database refused a row: write events one by one, and OpenTelemetry spans record
        by record, and dead-letter the refused ones.

        Each commits on its own here; that is safe because upserts are idempotent (a span is
        inserted once) and the offsets are still committed only after the whole batch is
        through.
        """
        logger.warning("store refused a row; isolating it in a batch of %d", len(batch))
        raw = {r.provenance: r for r in records}
        refused: list[DeadLetter] = []

        def refuse(p: Provenance, exc: StoreRejectedError) -> None:
            logger.warning("dead-lettered topic=%s partition=%d offset=%d error=%s",
                           p.topic, p.partition, p.offset, exc)
            refused.append(dead_letter(raw[p], exc, now_ms, self.settings.dlq_max_payload_bytes))

        kept_traces: list[TraceEvent] = []
        kept_assessments: list[AssessmentEvent] = []
        events: list[TraceEvent | AssessmentEvent] = [*batch.traces, *batch.assessments]
        for ev in events:
            single = (Batch(traces=[ev]) if isinstance(ev, TraceEvent)
                      else Batch(assessments=[ev]))
            try:
                self.writer.write(single, now_ms)
            except StoreRejectedError as exc:
                refuse(ev.provenance, exc)
                continue
            if isinstance(ev, TraceEvent):
                kept_traces.append(ev)
            else:
                kept_assessments.append(ev)
        by_record: dict[Provenance, list[tuple[OtlpSpan, Provenance]]] = {}
        for item in batch.spans:
            by_record.setdefault(item[1], []).append(item)
        kept_spans: list[tuple[OtlpSpan, Provenance]] = []
        for p, spans in by_record.items():
            try:
                self._written(self.writer.write(Batch(spans=spans), now_ms))
            except StoreRejectedError as exc:
                refuse(p, exc)
                continue
            kept_spans.extend(spans)
        self.dlq.publish(refused)
        self.dlq.flush()
        batch.traces, batch.assessments, batch.spans = kept_traces, kept_assessments, kept_spans
        batch.dead_letters.extend(refused)
        self.writer.write(Batch(dead_letters=batch.dead_letters,
                                checkpoints=batch.checkpoints), now_ms)

    def _written(self, result: BatchResult) -> None:
        with self._stats_lock:
            self.stats.tags_changed += result.tags_changed
            self.stats.otlp_dropped += result.spans_dropped
        if result.spans_dropped:
            shown = ", ".join(result.capped[:5]) + (", ..." if len(result.capped) > 5 else "")
            logger.warning("dropped %d spans past their trace's caps (otlp_max_trace_spans=%d, "
                           "otlp_max_trace_bytes=%d) trace_ids=%s", result.spans_dropped,
                           self.otlp.max_trace_spans, self.otlp.max_trace_bytes, shown)

    def _count(self, batch: Batch, records: list[RawRecord], began: float) -> None:
        """Stats of a checkpointed batch, its latency from ``began`` (monotonic) included."""
        self.stats.batches += 1
        self.stats.records += len(records)
        self.stats.traces += len(batch.traces)
        self.stats.assessments += len(batch.assessments)
        self.stats.otlp_spans += len(batch.spans)
        self.stats.dead_letters += len(batch.dead_letters)
        self.stats.last_checkpoint_s = time.monotonic()
        self.stats.last_checkpoint_unix = time.time()
        self.stats.observe_batch(self.stats.last_checkpoint_s - began)

    def _assemble_in_loop(self) -> bool:
        return self.emitter is not None and not self.emitter.beside_loop

    def _assembly_backlog(self) -> bool:
        """Assembly in the loop, whose last transaction was full: more traces are due."""
        return self._assemble_in_loop() and self._next_emit_s == 0.0 \
            and self.stats.otlp_traces > 0

    def _start_assembler(self) -> threading.Thread | None:
        """The assembler thread, if this worker reads OpenTelemetry spans into a store that
        gains from it (``OtlpEmitterPort.beside_loop``)."""
        if self.emitter is None or not self.emitter.beside_loop:
            return None
        self._assembler_stop.clear()
        thread = threading.Thread(target=self._assemble_beside, name="assembler", daemon=True)
        thread.start()
        return thread

    def _assemble_beside(self) -> None:
        """The assembler thread: ``assemble_due`` until the loop ends. An error it did not
        expect is kept for the loop to raise."""
        try:
            while not self._assembler_stop.is_set() and not self.stop.is_set():
                if not self.assemble_due(stop=self._assembler_stop):
                    return  # stopped during a store outage: the traces stay pending
                self._assembled.set()
                wait_s = self._next_emit_s - time.monotonic()
                if wait_s > 0:
                    self._assembler_stop.wait(wait_s)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            self._assembler_error = exc
            self._assembled.set()

    def wait_for_assembly(self) -> None:
        """Backpressure: while more traces are pending than half the buffer's bound, wait for
        the assembler thread or, without one, assemble in the loop as the traces come due (at
        most ``ASSEMBLY_WAIT_MAX_S``, then poll anyway: the bound itself still holds, by
        assembling the oldest traces early)."""
        if self.emitter is None:
            return
        emitter = self.emitter
        high = max(self.otlp.max_open_traces // 2, 1)
        deadline = time.monotonic() + ASSEMBLY_WAIT_MAX_S
        while not self.stop.is_set() and self._assembler_error is None:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return
            pending = self._retry(emitter.pending_otlp, "assemble")
            if pending is None or pending <= high:
                return
            self.stats.heartbeat_s = time.monotonic()
            if emitter.beside_loop:
                self._assembled.clear()
                self._assembled.wait(min(OTLP_EMIT_EVERY_S, left_s))
                continue
            self._next_emit_s = 0.0  # in the loop: assemble what is due now
            assembled = self.stats.otlp_traces
            if not self.assemble_due():
                return  # stopped during a store outage
            if self.stats.otlp_traces == assembled:
                self.stop.wait(min(0.05, left_s))  # none due yet: their quiet period runs

    def assemble_due(self, stop: threading.Event | None = None) -> bool:
        """(Maybe) assemble the OpenTelemetry traces that are due, every ``OTLP_EMIT_EVERY_S``
        (at once again while a full transaction's worth was due). False if stopped (``stop``,
        else the worker's) during a store outage."""
        if self.emitter is None or time.monotonic() < self._next_emit_s:
            return True
        emitter = self.emitter
        result = self._retry(lambda: emitter.emit_otlp(self.now_ms(), self.otlp), "assemble",
                             stop=stop)
        if result is None:
            return False
        full = result.more or result.traces + len(result.refused) >= self.otlp.emit_batch
        self._next_emit_s = 0.0 if full else time.monotonic() + OTLP_EMIT_EVERY_S
        if result.traces:
            self.stats.last_assembly_s = time.monotonic()
        with self._stats_lock:
            self.stats.otlp_traces += result.traces
            self.stats.otlp_forced += result.forced
            self.stats.otlp_refused += len(result.refused)
            self.stats.otlp_from_cache += result.from_cache
            self.stats.tags_changed += result.tags_changed
        for trace_id, why in result.refused:
            logger.warning("assembled trace refused by the store, given up trace_id=%s "
                           "error=%s", trace_id, why)
        if result.forced:
            logger.warning("span buffer past its bound: %d traces assembled early",
                           result.forced)
        return True

    def maintain(self) -> None:
        """(Maybe) maintain: retention pruning when its interval has passed."""
        if self.maintenance is not None:
            self.maintenance.run_due(self.now_ms())

    # -- helpers -------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _retry(self, fn: Callable[[], T], what: str,
               stop: threading.Event | None = None) -> T | None:
        """Run ``fn``, retrying TransientError until it succeeds or ``stop`` (else the worker's
        own) is set."""
        stop = stop if stop is not None else self.stop

        def sleep(seconds: float) -> None:
            stop.wait(seconds)  # back off, but wake at once when asked to stop

        def before_sleep(state: RetryCallState) -> None:
            with self._stats_lock:
                self.stats.retries += 1
            self.stats.failing = what
            self.stats.heartbeat_s = time.monotonic()  # waiting out an outage is being alive
            exc = state.outcome.exception() if state.outcome else None
            logger.warning("%s failed, retrying attempt=%d wait_s=%.1f error=%s", what,
                           state.attempt_number, state.upcoming_sleep, exc)

        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            wait=wait_random_exponential(multiplier=0.5, max=self.settings.db_retry_max_wait_s),
            stop=stop_when_event_set(stop), sleep=sleep, before_sleep=before_sleep,
            reraise=True)
        try:
            out = retrying(fn)
            if self.stats.failing == what:
                self.stats.failing = None
            return out
        except TransientError:
            if stop.is_set():
                return None
            raise

    def close(self) -> None:
        """Close the source and the sink and release database connections."""
        try:
            self.source.close()
        finally:
            self.dlq.close()
            self.writer.close()


def otlp_config(settings: Settings) -> OtlpConfig:
    """The OpenTelemetry span buffer's timings and bounds, from the settings."""
    return OtlpConfig(
        quiet_ms=round(settings.otlp_quiet_s * 1000),
        max_wait_ms=round(settings.otlp_max_wait_s * 1000),
        max_open_traces=settings.otlp_max_open_traces,
        max_buffer_bytes=settings.otlp_max_buffer_bytes,
        keep_ms=round(settings.otlp_keep_s * 1000),
        max_trace_spans=settings.otlp_max_trace_spans,
        max_trace_bytes=settings.otlp_max_trace_bytes,
        cache_bytes=settings.otlp_span_cache_bytes)


def next_offsets(records: list[RawRecord]) -> dict[tuple[str, int], int]:
    """Per partition, the offset to commit: the highest processed offset + 1."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if r.offset + 1 > out.get(key, -1):
            out[key] = r.offset + 1
    return out
