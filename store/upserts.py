"""Idempotent batch writes: one call, one transaction, exactly-once effect.

``apply_batch`` writes a decoded batch inside the caller's transaction:
  1. pre-aggregate: per trace_id keep the most complete version, per assessment_id the newest;
  2. upsert traces: a row changes only for a strictly more complete version;
  3. upsert assessments: a row changes only for a strictly newer version (update time, then
     invalid over valid);
  4. invalidate overridden assessments (order-independent: the override may arrive first);
  5. insert dead letters, once per origin (topic, partition, offset);
  6. with a rules engine, decide the touched traces (``store.decisions``).
Applying the same batch again, or any redelivered subset, changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, Table, and_, exists, select, update
from sqlalchemy.orm import aliased

from consumers.events import AssessmentEvent, DeadLetter, TraceEvent
from store import dialect
from store.decisions import Decider, decide_batch, prior_versions
from store.models import Assessment, Trace
from store.models import DeadLetter as DeadLetterRow

TRACES: Table = Trace.__table__  # type: ignore[assignment]
ASSESSMENTS: Table = Assessment.__table__  # type: ignore[assignment]
DEAD_LETTERS: Table = DeadLetterRow.__table__  # type: ignore[assignment]


@dataclass(slots=True)
class Batch:
    traces: list[TraceEvent] = field(default_factory=list)
    assessments: list[AssessmentEvent] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    dlq_flushed: bool = False  # the dead letters are already on the DLQ topic

    def __len__(self) -> int:
        return len(self.traces) + len(self.assessments) + len(self.dead_letters)


@dataclass(frozen=True, slots=True)
class BatchResult:
    traces_written: int
    assessments_written: int
    dead_letters_written: int
    tags_changed: int = 0


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


def span_summary(e: TraceEvent) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in e.spans:
        agg = out.get(s.span_type)
        if agg is None:
            out[s.span_type] = {"count": 1, "total_ms": s.duration_ms, "max_ms": s.duration_ms}
        else:
            agg["count"] += 1
            agg["total_ms"] += s.duration_ms
            if s.duration_ms > agg["max_ms"]:
                agg["max_ms"] = s.duration_ms
    return out


def _json(v: Any) -> str:
    return orjson.dumps(v).decode()


TRACE_COLUMNS = (
    "trace_id", "experiment_id", "name", "status", "timestamp_ms", "execution_time_ms",
    "request", "response", "tags", "trace_metadata", "input_tokens", "output_tokens",
    "total_tokens", "span_summary", "span_count", "completeness", "source_format", "src_topic",
    "src_partition", "src_offset", "ingested_ms")


def trace_row(e: TraceEvent, now_ms: int) -> tuple[Any, ...]:
    """A ``traces`` row in ``TRACE_COLUMNS`` order, JSON columns already encoded."""
    p = e.provenance
    return (e.trace_id, e.experiment_id, e.name, e.status, e.timestamp_ms, e.execution_time_ms,
            e.request, e.response, _json(e.tags), _json(e.metadata), e.input_tokens,
            e.output_tokens, e.total_tokens, _json(span_summary(e)), len(e.spans),
            e.completeness, e.source_format, p.topic, p.partition, p.offset, now_ms)


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
                decider: Decider | None = None) -> BatchResult:
    """Write one decoded batch in the caller's transaction. See the module docstring for order.

    With a ``decider`` (the rules engine), the batch's traces are also decided in the same
    transaction (``store.decisions``): decision log, current tags and the write-back outbox.
    """
    traces = latest_traces(batch.traces)
    assessments = latest_assessments(batch.assessments)
    prior = prior_versions(conn, [e.trace_id for e in traces]) if decider else {}
    dialect.upsert_newer(conn, TRACES, "trace_id", "completeness", TRACE_COLUMNS,
                         [trace_row(e, now_ms) for e in traces])
    dialect.upsert_newer(conn, ASSESSMENTS, "assessment_id", "version", ASSESSMENT_COLUMNS,
                         [assessment_row(e, now_ms) for e in assessments])
    if assessments:
        _invalidate_overridden(conn, assessments)
    if batch.dead_letters:
        stmt = dialect.insert(conn, DEAD_LETTERS).on_conflict_do_nothing(
            index_elements=["topic", "partition", "offset"])
        conn.execute(stmt, [dead_letter_row(d) for d in batch.dead_letters])
    changed = decide_batch(conn, decider, traces, assessments, prior, now_ms) if decider else 0
    return BatchResult(len(traces), len(assessments), len(batch.dead_letters), changed)
