"""Idempotent batch writes: one call, one transaction, exactly-once effect.

``apply_batch`` writes a decoded batch inside the caller's transaction:
  1. pre-aggregate: per trace_id keep the most complete version, per assessment_id the newest;
  2. upsert traces: a row changes only for a strictly more complete version;
  3. upsert assessments: a row changes only for a strictly newer version (update time, then
     invalid over valid);
  4. invalidate overridden assessments (order-independent: the override may arrive first);
  5. insert dead letters, once per origin (topic, partition, offset), and upsert a polled
     source's checkpoints (``store.checkpoints``), so a watermark never runs ahead of its data;
     OpenTelemetry spans go to their buffer first (``store.otlp_buffer``), to be assembled
     into traces once due;
  6. with a rules engine, decide the touched traces (``store.decisions``);
  7. move the metric buckets by each touched trace's change of contribution (``store.metrics``).
Steps 6 and 7 compute without the store between their reads and their writes.
In a batch without assessments no valid feedback changes, so they read first and compute while
the new traces are copied in (the server works meanwhile); the result is the same.
A trace's stored span summary names at most ``SPAN_TYPES_PER_TRACE`` span types (the rest are
one exact ``other`` entry), so no trace can blow up its buckets or the reports.
On PostgreSQL the batch first takes an advisory lock per touched trace (``store.locks``), so
concurrent workers never interleave on one trace; the traces (and their decisions) the store
did not hold before are then plain inserts (``dialect.inserting_new``: COPY, the upsert as its
fallback). Applying the same batch again, or any redelivered subset, changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, and_, exists, select, update
from sqlalchemy.orm import aliased

from consumers.events import AssessmentEvent, DeadLetter, Provenance, TraceEvent, TraceView
from consumers.otlp import OtlpSpan
from store import dialect, locks, metrics, otlp_buffer
from store.decisions import (
    Decider,
    Decisions,
    FeedbackRow,
    Prior,
    TagChange,
    current_tags,
    decide,
    decision_views,
    event_view,
    feedback_rows,
    seen_before,
    views_of,
    writing_decisions,
)
from store.metrics import MetricsConfig
from store.models import (
    ASSESSMENTS,
    CHECKPOINTS,
    DEAD_LETTERS,
    TRACES,
    Assessment,
)
from store.rollup import (
    OTHER,
    Agg,
    Contribution,
    DeltaKey,
    FeedbackFacts,
    NewTrace,
    TraceFacts,
    cells_of_new,
    contribution,
    deltas,
)
from store.sketch import DEFAULT_MAPPING

# Span types that keep their name in one trace's summary; later types merge into ``OTHER``.
SPAN_TYPES_PER_TRACE = 50


@dataclass(slots=True)
class Batch:
    traces: list[TraceEvent] = field(default_factory=list)
    assessments: list[AssessmentEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # A polled source's progress (name -> JSON value), stored in the batch's transaction.
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    # OpenTelemetry spans and their records, buffered until their trace is due (otlp_buffer).
    spans: list[tuple[OtlpSpan, Provenance]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.traces) + len(self.assessments) + len(self.dead_letters) \
            + len(self.spans)


@dataclass(frozen=True, slots=True)
class BatchResult:
    traces_written: int
    assessments_written: int
    dead_letters_written: int
    tags_changed: int = 0
    spans_dropped: int = 0  # OpenTelemetry spans refused past their trace's caps
    capped: tuple[str, ...] = ()  # the traces those were of
    span_updates: tuple[otlp_buffer.CacheUpdate, ...] = ()  # for the span cache, once committed


def latest_traces(events: Iterable[TraceEvent]) -> list[TraceEvent]:
    """Per trace_id, the most complete version; among equals the first seen (as the store does)."""
    best: dict[str, TraceEvent] = {}
    for e in events:
        cur = best.get(e.trace_id)
        if cur is None or e.completeness > cur.completeness:
            best[e.trace_id] = e
    return list(best.values())


def latest_assessments(events: Iterable[AssessmentEvent]) -> list[AssessmentEvent]:
    best: dict[str, AssessmentEvent] = {}
    for e in events:
        cur = best.get(e.assessment_id)
        if cur is None or assessment_version(e) > assessment_version(cur):
            best[e.assessment_id] = e
    return list(best.values())


def assessment_version(e: AssessmentEvent) -> int:
    """Newer update time wins; at an equal time, invalid beats valid (invalidity is final)."""
    return e.last_update_time_ms * 2 + (0 if e.valid else 1)


def span_summary(e: TraceEvent) -> dict[str, dict[str, Any]]:
    """Per span type: count, total and max duration (ms), and the sketch bins of the durations
    (``[[key, n], ...]``), so that the metric buckets can later subtract exactly this trace.
    Types and bins appear in span order; the row stores them in that order.

    At most ``SPAN_TYPES_PER_TRACE`` types keep their name: the first ones in span order. The
    spans of every later type are merged into the ``OTHER`` entry (exact count, total, max and
    bins), so a trace's summary, its bucket contribution and the report stay small whatever
    the trace holds. The fold is a function of the trace alone, and the stored summary is what
    the buckets later subtract, so subtraction stays exact."""
    out: dict[str, dict[str, Any]] = {}
    bins: dict[str, dict[int, int]] = {}
    key_for = DEFAULT_MAPPING.key_for
    named = 0
    for s in e.spans:
        d = s.duration_ms
        k = key_for(d if d > 0.0 else 0.0)
        t = s.span_type
        agg = out.get(t)
        if agg is None:
            if t != OTHER:
                if named >= SPAN_TYPES_PER_TRACE:
                    t, agg = OTHER, out.get(OTHER)
                else:
                    named += 1
            if agg is None:
                out[t] = {"count": 1, "total_ms": d, "max_ms": d}
                bins[t] = {k: 1}
                continue
        agg["count"] += 1
        agg["total_ms"] += d
        if d > agg["max_ms"]:
            agg["max_ms"] = d
        per_type = bins[t]
        per_type[k] = per_type.get(k, 0) + 1
    for t, agg in out.items():
        agg["bins"] = [[k, n] for k, n in bins[t].items()]
    return out


def _json(v: Any) -> str:
    return orjson.dumps(v).decode()


TRACE_COLUMNS = (
    "trace_id", "experiment_id", "name", "status", "timestamp_ms", "execution_time_ms",
    "request", "response", "tags", "trace_metadata", "input_tokens", "output_tokens",
    "total_tokens", "span_summary", "span_count", "completeness", "source_format", "src_topic",
    "src_partition", "src_offset", "ingested_ms")


def trace_row(e: TraceEvent, now_ms: int,
              summary: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """A ``traces`` row in ``TRACE_COLUMNS`` order, JSON columns already encoded."""
    p = e.provenance
    if summary is None:
        summary = span_summary(e)
    dumps = orjson.dumps  # as ``_json``, without a call per column
    return (e.trace_id, e.experiment_id, e.name, e.status, e.timestamp_ms, e.execution_time_ms,
            e.request, e.response, dumps(e.tags).decode(), dumps(e.metadata).decode(),
            e.input_tokens, e.output_tokens, e.total_tokens, dumps(summary).decode(),
            len(e.spans), e.completeness, e.source_format, p.topic, p.partition, p.offset,
            now_ms)


ASSESSMENT_COLUMNS = (
    "assessment_id", "trace_id", "name", "kind", "value", "numeric_value", "error", "rationale",
    "source_type", "source_id", "valid", "overrides", "span_id", "create_time_ms",
    "last_update_time_ms", "version", "assessment_metadata", "src_topic", "src_partition",
    "src_offset", "ingested_ms")


def assessment_row(e: AssessmentEvent, now_ms: int) -> tuple[Any, ...]:
    p = e.provenance
    return (e.assessment_id, e.trace_id, e.name, e.kind, _json(e.value), e.numeric_value,
            e.error, e.rationale, e.source_type, e.source_id, e.valid, e.overrides, e.span_id,
            e.create_time_ms, e.last_update_time_ms, assessment_version(e), _json(e.metadata),
            p.topic, p.partition, p.offset, now_ms)


def dead_letter_row(d: DeadLetter) -> dict[str, Any]:
    p = d.provenance
    return {
        "topic": p.topic, "partition": p.partition, "offset": p.offset, "key": d.key,
        "payload": d.payload, "payload_size_bytes": d.payload_size_bytes,
        "error_type": d.error_type, "error": d.error, "traceback": d.traceback,
        "created_ms": d.created_ms,
    }


def _invalidate_overridden(conn: Connection, events: Sequence[AssessmentEvent]) -> None:
    """An assessment is invalid once any stored assessment overrides it, whichever came first."""
    a = ASSESSMENTS
    targets = sorted({e.overrides for e in events if e.overrides})
    if targets:
        conn.execute(update(a).where(a.c.assessment_id.in_(targets), a.c.valid.is_(True))
                     .values(valid=False))
    ids = [e.assessment_id for e in events if e.valid]
    if ids:
        other = aliased(Assessment)
        overridden = exists(select(other.assessment_id).where(
            other.overrides == a.c.assessment_id))
        conn.execute(update(a).where(and_(a.c.assessment_id.in_(ids), a.c.valid.is_(True),
                                          overridden)).values(valid=False))


def apply_batch(conn: Connection, batch: Batch, now_ms: int,
                decider: Decider | None = None,
                metrics_config: MetricsConfig | None = None, *,
                outbox: bool = True, traces_locked: bool = False,
                otlp: otlp_buffer.OtlpConfig = otlp_buffer.DEFAULT_CONFIG) -> BatchResult:
    """Write one decoded batch in the caller's transaction. See the module docstring for order.
    ``traces_locked``: the caller holds the trace locks of the batch's traces already.
    ``otlp``: the span buffer's caps per trace.

    With a ``decider`` (the rules engine), the batch's traces are also decided in the same
    transaction (``store.decisions``): decision log, current tags and the write-back outbox.
    With a ``metrics_config``, the metric buckets move by the difference between the touched
    traces' contributions before and after the batch (``store.metrics``). Without ``outbox``
    (write-back off), changed tags are not queued for MLflow.
    """
    traces = latest_traces(batch.traces)
    assessments = latest_assessments(batch.assessments)
    touched = list(dict.fromkeys([e.trace_id for e in traces]
                                 + [a.trace_id for a in assessments]))
    if not traces_locked:
        locks.lock_traces(conn, touched)
    read = bool((decider or metrics_config) and touched)
    before = metrics.read_state(conn, touched, with_assessments=metrics_config is not None) \
        if read else metrics.State({}, {}, {})
    summaries = [span_summary(e) for e in traces]
    versions = list(zip(traces, summaries, strict=True))
    new: list[tuple[TraceEvent, dict[str, Any]]] = []
    if read:
        # The traces the store did not hold (under the trace locks) are plain inserts; a
        # stored one changes only for a strictly more complete version (the upsert's own
        # condition), so the others, a replay's, are not sent at all.
        stored = before.facts
        new = [(e, s) for e, s in versions if e.trace_id not in stored]
        versions = [(e, s) for e, s in versions if e.trace_id in stored
                    and e.completeness > stored[e.trace_id].completeness]
    new_rows = [trace_row(e, now_ms, s) for e, s in new]
    rows = [trace_row(e, now_ms, s) for e, s in versions]
    # A batch without assessments changes no valid feedback: what the rules and the metrics
    # read is read first, and the rules decide while the new traces are copied in (PostgreSQL
    # works on the COPY meanwhile). With assessments, they read after the writes, as stored.
    # The bucket deltas are computed while the new traces' decision log is copied in (or
    # with the decisions, without rules).
    decisions: Decisions | None = None
    moves: dict[DeltaKey, Agg] | None = None  # the bucket deltas
    inputs = _read_inputs(conn, decider, metrics_config, traces, assessments, touched, before) \
        if read and not assessments else None

    def bucket_deltas(inputs: _Inputs, changes: Sequence[TagChange]) -> dict[DeltaKey, Agg]:
        assert metrics_config is not None
        return _metric_deltas(metrics_config, before, traces, summaries, assessments, changes,
                              metrics.facts_of(inputs.feedback_now or {}), now_ms)

    with dialect.inserting_new(conn, dialect.NewRows(TRACES, ("trace_id",), TRACE_COLUMNS,
                                                     new_rows, newer_col="completeness")):
        if inputs is not None:
            decisions = _decide(inputs, decider, now_ms, outbox)
            if decisions is None and metrics_config is not None:
                moves = bucket_deltas(inputs, ())
    dialect.upsert_newer(conn, TRACES, "trace_id", "completeness", TRACE_COLUMNS, rows)
    dialect.upsert_newer(conn, ASSESSMENTS, "assessment_id", "version", ASSESSMENT_COLUMNS,
                         [assessment_row(e, now_ms) for e in assessments])
    if assessments:
        _invalidate_overridden(conn, assessments)
    buffered = _write_records(conn, batch, now_ms, otlp)
    if not read:
        return BatchResult(len(traces), len(assessments), len(batch.dead_letters), 0,
                           buffered.dropped, tuple(buffered.capped), buffered.updates)
    if inputs is None:
        inputs = _read_inputs(conn, decider, metrics_config, traces, assessments, touched,
                              before)
        decisions = _decide(inputs, decider, now_ms, outbox)
    changed = decisions.changes if decisions is not None else []
    with writing_decisions(conn, decisions) if decisions is not None \
            else contextlib.nullcontext():
        if metrics_config is not None and moves is None:
            moves = bucket_deltas(inputs, changed)
    if moves is not None:
        metrics.apply_deltas(conn, moves, now_ms)
    return BatchResult(len(traces), len(assessments), len(batch.dead_letters), len(changed),
                       buffered.dropped, tuple(buffered.capped), buffered.updates)


def _write_records(conn: Connection, batch: Batch, now_ms: int,
                   otlp: otlp_buffer.OtlpConfig) -> otlp_buffer.Buffered:
    """What the batch's records hold besides events: dead letters, a polled source's
    checkpoints, OpenTelemetry spans for their buffer."""
    if batch.dead_letters:
        stmt = dialect.insert(conn, DEAD_LETTERS).on_conflict_do_nothing(
            index_elements=["topic", "partition", "offset"])
        conn.execute(stmt, [dead_letter_row(d) for d in batch.dead_letters])
    if batch.checkpoints:
        dialect.bulk_upsert(conn, CHECKPOINTS, ("name",), ("name", "value", "updated_ms"),
                            [(k, _json(v), now_ms) for k, v in sorted(batch.checkpoints.items())])
    if batch.spans:
        return otlp_buffer.buffer_spans(conn, batch.spans, now_ms, otlp)
    return otlp_buffer.Buffered(0, 0, [])


class _Inputs(NamedTuple):
    """What the rules and the metrics read of the store besides ``before``: the valid feedback
    of the touched traces as stored after the batch (None if neither needs it), the traces to
    decide (view, trigger), those seen before the batch, and their current tags."""

    feedback_now: dict[str, list[FeedbackRow]] | None
    views: dict[str, tuple[TraceView, str]]
    seen: list[str]
    current: dict[tuple[str, str], str | None]


def _read_inputs(conn: Connection, decider: Decider | None,
                 metrics_config: MetricsConfig | None, traces: Sequence[TraceEvent],
                 assessments: Sequence[AssessmentEvent], touched: Sequence[str],
                 before: metrics.State) -> _Inputs:
    """The reads of ``_Inputs``: valid feedback once for both the rules and the metrics."""
    with_feedback = metrics_config is not None or bool(decider and decider.needs_assessments())
    feedback_now = feedback_rows(conn, touched) if with_feedback else None
    if decider is None:
        return _Inputs(feedback_now, {}, [], {})
    prior = {tid: Prior(f.completeness, f.view) for tid, f in before.facts.items()}
    views = decision_views(conn, decider, traces, assessments, prior)
    seen = seen_before(views, prior)
    return _Inputs(feedback_now, views, seen, current_tags(conn, seen) if seen else {})


def _decide(inputs: _Inputs, decider: Decider | None, now_ms: int,
            outbox: bool) -> Decisions | None:
    """The batch's decisions, computed without the store (None without a rules engine);
    without ``outbox``, nothing queued for write-back."""
    if decider is None or not inputs.views:
        return None
    feedback = views_of(inputs.feedback_now) \
        if decider.needs_assessments() and inputs.feedback_now is not None else {}
    decisions = decide(decider, inputs.views, feedback, inputs.current, inputs.seen, now_ms)
    return decisions if outbox else decisions.without_outbox()


def _metric_deltas(config: MetricsConfig, before: metrics.State,
                   traces: Sequence[TraceEvent], summaries: Sequence[dict[str, Any]],
                   assessments: Sequence[AssessmentEvent], tag_changes: Sequence[TagChange],
                   feedback_now: Mapping[str, list[FeedbackFacts]], now_ms: int
                   ) -> dict[DeltaKey, Agg]:
    """Bucket deltas (retained) for the traces whose row, valid feedback or candidate tags
    changed.

    A trace the store did not hold has no "before": its contribution is simply added, summed
    per bucket cell straight from the event (``rollup.cells_of_new``). For a stored trace, the
    contribution before the batch (from ``before``) is replaced by the one after it (its new
    version, feedback and tags) where the two differ. Everything is summed per cell in Python
    (``rollup.deltas``), so each bucket sees one delta."""
    dim = config.dimension_tag
    facts, feedback, tags = before.facts, before.feedback, before.tags
    changed_tags: dict[str, dict[str, str | None]] = {}
    for ch in tag_changes:  # the decisions of this batch, applied to the tags read before it
        changed_tags.setdefault(ch.trace_id, dict(tags.get(ch.trace_id, ())))[
            ch.tag_key] = ch.tag_value
    # In any order: a contribution counts each distinct (key, value) once.
    new_tags = {tid: [(k, v) for k, v in kv.items() if v is not None]
                for tid, kv in changed_tags.items()}
    fresh: list[NewTrace] = []
    new_facts: dict[str, TraceFacts] = {}
    for e, summary in zip(traces, summaries, strict=True):
        tid = e.trace_id
        old = facts.get(tid)
        if old is None:
            fresh.append((e, e.input_tokens, e.output_tokens, e.total_tokens, summary,
                          feedback_now.get(tid, ()), new_tags.get(tid, ())))
        elif e.completeness > old.completeness:
            new_facts[tid] = TraceFacts(event_view(e), e.input_tokens, e.output_tokens,
                                        e.total_tokens, summary, e.completeness)
    # Stored traces: a new version, other valid feedback, or new candidate tags.
    dirty = set(new_facts)
    new_feedback: dict[str, list[FeedbackFacts]] = {}
    for tid in {a.trace_id for a in assessments} | dirty:
        if tid in facts:
            valid = new_feedback[tid] = feedback_now.get(tid, [])
            if valid != feedback.get(tid, []):
                dirty.add(tid)
    dirty.update(tid for tid in new_tags if tid in facts)
    removed: list[Contribution] = []
    added: list[Contribution] = []
    for tid in dirty:
        old = facts[tid]
        c = contribution(new_facts.get(tid, old), new_feedback.get(tid, feedback.get(tid, ())),
                         new_tags.get(tid, tags.get(tid, ())), dim)
        was = contribution(old, feedback.get(tid, ()), tags.get(tid, ()), dim)
        if was != c:
            removed.append(was)
            added.append(c)
    return config.retained(deltas(removed, added, cells_of_new(fresh, dim)), now_ms)
