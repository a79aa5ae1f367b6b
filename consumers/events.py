"""The typed events: the shared vocabulary of every layer.

Events are immutable and carry their provenance (topic, partition, offset), so that any row in
the store or any dead letter can be traced back to the record it came from. The per-event types
are NamedTuples: as immutable as frozen dataclasses, and built in half the time (a frozen
dataclass sets each field through ``object.__setattr__``; several are made per event). Times
are epoch milliseconds as ``int``; durations carry a unit suffix. ``request`` and ``response``
are JSON text as received (never re-serialized on the hot path), or None when the source had
none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

TraceStatus = Literal["OK", "ERROR", "IN_PROGRESS"]
AssessmentKind = Literal["feedback", "expectation"]

TRACE_STATUSES: frozenset[str] = frozenset({"OK", "ERROR", "IN_PROGRESS"})


class Provenance(NamedTuple):
    """Where a record came from. For polled sources, ``topic`` names the source and offset is -1."""

    topic: str
    partition: int
    offset: int


class SpanSummary(NamedTuple):
    """One span, reduced to what metrics and rules need."""

    name: str
    span_type: str
    duration_ms: float
    status: str  # "OK" | "ERROR" | "UNSET"


class TraceEvent(NamedTuple):
    trace_id: str
    experiment_id: str | None
    name: str | None
    status: TraceStatus
    timestamp_ms: int
    execution_time_ms: int | None
    request: str | None
    response: str | None
    tags: Mapping[str, str]
    metadata: Mapping[str, str]
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    spans: tuple[SpanSummary, ...]
    source_format: str  # "trace" | "trace_info" | "flat"
    provenance: Provenance

    @property
    def completeness(self) -> int:
        """Orders versions of one trace: a finished trace beats IN_PROGRESS, more spans beat fewer.

        The store keeps the version with the highest completeness; an equal one changes nothing,
        which makes redelivery a no-op.
        """
        finished = 0 if self.status == "IN_PROGRESS" else 1
        return finished * 1_000_000 + min(len(self.spans), 999_999)


class AssessmentEvent(NamedTuple):
    assessment_id: str
    trace_id: str
    name: str
    kind: AssessmentKind
    value: Any  # the JSON value as logged (bool, float, str, dict, list or None)
    numeric_value: float | None  # floats as is, bool and yes/no as 1.0/0.0, else None
    error: str | None  # a failed judge's error message
    rationale: str | None
    source_type: str | None
    source_id: str | None
    valid: bool
    overrides: str | None  # the assessment id this one overrides
    span_id: str | None
    create_time_ms: int
    last_update_time_ms: int
    metadata: Mapping[str, str]
    provenance: Provenance


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be decoded. ``payload`` is the raw bytes (possibly truncated)."""

    provenance: Provenance
    key: bytes | None
    payload: bytes
    payload_size_bytes: int
    error_type: str
    error: str
    traceback: str | None = None
    created_ms: int = 0


class RawRecord(NamedTuple):
    """A record as a source hands it over, before decoding."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def provenance(self) -> Provenance:
        return Provenance(self.topic, self.partition, self.offset)


# ---------------------------------------------------------------------------------------------
# Rule decisions: what the rules engine (worker) reads and returns, and the store (below it)
# persists. They live here, in the lowest package, so that no package imports upward.


class TraceView(NamedTuple):
    """What the rules engine sees of a trace: built from an event or from a stored row."""

    trace_id: str
    experiment_id: str | None
    name: str | None
    status: str
    timestamp_ms: int
    execution_time_ms: int | None
    tags: Mapping[str, str]
    metadata: Mapping[str, str]


class AssessmentView(NamedTuple):
    assessment_id: str
    name: str
    kind: str  # "feedback" | "expectation"
    value: Any
    valid: bool
    last_update_time_ms: int


Outcome = Literal["tagged", "superseded", "sampled_out", "no_match", "not_applicable"]


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    rule: str
    outcome: Outcome
    reason: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Every rule's outcome for one trace, and the tags that result (key -> (value, rule))."""

    trace_id: str
    outcomes: tuple[RuleOutcome, ...]
    tags: Mapping[str, tuple[str, str]]
    digest: str  # equal inputs (rules, trace version, valid feedback) give an equal digest
