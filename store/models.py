"""SQLAlchemy models: the schema that Alembic migrations create (``store/migrations``).

Natural ids are primary keys (``trace_id``, ``assessment_id``), so every write is an idempotent
upsert. ``traces.completeness`` orders versions of one trace (finished beats IN_PROGRESS, more
spans beat fewer); a row only changes for a strictly more complete version. ``assessments``
keep the newest version (``version``: update time, then invalid over valid). Dead letters are
unique by origin (topic, partition, offset), so a redelivered poison record is recorded once.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Trace(Base):
    __tablename__ = "traces"

    trace_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    experiment_id: Mapped[str | None] = mapped_column(String(256))
    name: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger)
    execution_time_ms: Mapped[int | None] = mapped_column(BigInteger)
    request: Mapped[str | None] = mapped_column(Text)
    response: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[dict[str, str]] = mapped_column(JSON)
    trace_metadata: Mapped[dict[str, str]] = mapped_column(JSON)
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    total_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # {span_type: {"count": n, "total_ms": x, "max_ms": y}}
    span_summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    span_count: Mapped[int] = mapped_column(Integer)
    completeness: Mapped[int] = mapped_column(BigInteger)
    source_format: Mapped[str] = mapped_column(String(16))
    src_topic: Mapped[str] = mapped_column(Text)
    src_partition: Mapped[int] = mapped_column(Integer)
    src_offset: Mapped[int] = mapped_column(BigInteger)
    ingested_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_traces_timestamp_ms", "timestamp_ms"),)


class Assessment(Base):
    __tablename__ = "assessments"

    assessment_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    trace_id: Mapped[str] = mapped_column(String(256))
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    numeric_value: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    rationale: Mapped[str | None] = mapped_column(Text)
    source_type: Mapped[str | None] = mapped_column(Text)
    source_id: Mapped[str | None] = mapped_column(Text)
    valid: Mapped[bool] = mapped_column(Boolean)
    overrides: Mapped[str | None] = mapped_column(String(256))
    span_id: Mapped[str | None] = mapped_column(Text)
    create_time_ms: Mapped[int] = mapped_column(BigInteger)
    last_update_time_ms: Mapped[int] = mapped_column(BigInteger)
    # Orders versions: newer last_update_time_ms wins; at equal times an invalid version wins
    # (MLflow marks an overridden assessment valid=false without changing its update time).
    version: Mapped[int] = mapped_column(BigInteger)
    assessment_metadata: Mapped[dict[str, str]] = mapped_column(JSON)
    src_topic: Mapped[str] = mapped_column(Text)
    src_partition: Mapped[int] = mapped_column(Integer)
    src_offset: Mapped[int] = mapped_column(BigInteger)
    ingested_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_assessments_trace_id", "trace_id"),
        Index("ix_assessments_overrides", "overrides"),
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(Text)
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    payload_size_bytes: Mapped[int] = mapped_column(BigInteger)
    error_type: Mapped[str] = mapped_column(String(128))
    error: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    created_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint("topic", "partition", "offset", name="uq_dead_letters_origin"),
    )


class TraceTag(Base):
    """The current rule decision per (trace, tag key). ``tag_value`` None: no rule tags it."""

    __tablename__ = "trace_tags"

    trace_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    tag_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    tag_value: Mapped[str | None] = mapped_column(Text)
    rule: Mapped[str | None] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
    decided_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_trace_tags_key_value", "tag_key", "tag_value"),)


class DecisionLog(Base):
    """Every evaluation of a trace: each rule's outcome and reason. One row per distinct input."""

    __tablename__ = "decision_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    trace_id: Mapped[str] = mapped_column(String(256))
    digest: Mapped[str] = mapped_column(String(64))
    decided_ms: Mapped[int] = mapped_column(BigInteger)
    trigger: Mapped[str] = mapped_column(String(16))
    outcomes: Mapped[list[Any]] = mapped_column(JSON)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)

    __table_args__ = (
        UniqueConstraint("trace_id", "digest", name="uq_decision_log_trace_digest"),
    )


class TagOutbox(Base):
    """Tags to write back to MLflow. A row is deleted only after MLflow confirms its revision."""

    __tablename__ = "tag_outbox"

    trace_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    tag_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    tag_value: Mapped[str | None] = mapped_column(Text)  # None: delete the tag
    digest: Mapped[str] = mapped_column(String(64))  # the revision; a newer decision replaces it
    created_ms: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_ms: Mapped[int] = mapped_column(BigInteger)
    waiting_for_trace: Mapped[bool] = mapped_column(Boolean)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_tag_outbox_next_attempt_ms", "next_attempt_ms"),)


class _MetricBucket:
    """A metric bucket: one (start, experiment, trace name, dimension value) at one resolution.

    Scalar columns are exact integer sums (``store.rollup.SCALARS``); ``sketches`` holds the
    latency and span-type histograms (sketch bins), ``spans`` the span counts and totals.
    ``p50_ms``/``p95_ms``/``p99_ms``/``max_ms`` are this bucket's own percentiles (within 1%),
    kept for SQL views and alerting. Merging buckets merges bins, never these columns.
    """

    bucket_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # 0: per (experiment, trace name, dimension); 1: per experiment; 2: all (store.rollup)
    rollup: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    experiment_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    trace_name: Mapped[str] = mapped_column(String(512), primary_key=True)
    dimension: Mapped[str] = mapped_column(String(512), primary_key=True)
    traces: Mapped[int] = mapped_column(BigInteger)
    ok: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    in_progress: Mapped[int] = mapped_column(BigInteger)
    latency_count: Mapped[int] = mapped_column(BigInteger)
    latency_sum_ms: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    total_tokens: Mapped[int] = mapped_column(BigInteger)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    max_ms: Mapped[float | None] = mapped_column(Float)
    # The latency and per-span-type histograms, binary (``store.sketch_column``).
    sketches: Mapped[bytes] = mapped_column(LargeBinary)
    spans: Mapped[dict[str, Any]] = mapped_column(JSON)
    feedback: Mapped[dict[str, Any]] = mapped_column(JSON)
    candidates: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class MetricMinute(_MetricBucket, Base):
    __tablename__ = "metric_minute"


class MetricHour(_MetricBucket, Base):
    __tablename__ = "metric_hour"


class StoreMeta(Base):
    """Small key/value facts about the store, e.g. the tag the metric buckets are keyed by."""

    __tablename__ = "store_meta"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SourceCheckpoint(Base):
    """A polled source's progress (``consumers.mlflow_source``: one watermark per experiment and
    per backfill), upserted in the same transaction as the data it covers."""

    __tablename__ = "source_checkpoints"

    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class OtlpSpan(Base):
    """An OpenTelemetry span waiting for its trace (``store.otlp_buffer``): the decoded span as a
    JSON array of ``consumers.otlp.OtlpSpan`` fields, inserted once (a redelivery changes
    nothing), kept after its trace is emitted so a late span can amend it."""

    __tablename__ = "otlp_spans"

    trace_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    span_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    span: Mapped[str] = mapped_column(Text)
    received_ms: Mapped[int] = mapped_column(BigInteger)


class OtlpTrace(Base):
    """A buffered OpenTelemetry trace: when its spans came, whether its root did, and whether
    spans came since it was last emitted (``pending``); the record of its latest span is the
    trace's provenance. ``spans_dropped``: spans refused past the trace's caps (a redelivered
    one counts again)."""

    __tablename__ = "otlp_traces"

    trace_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    first_ms: Mapped[int] = mapped_column(BigInteger)
    last_ms: Mapped[int] = mapped_column(BigInteger)
    has_root: Mapped[bool] = mapped_column(Boolean)
    span_count: Mapped[int] = mapped_column(Integer)
    span_bytes: Mapped[int] = mapped_column(BigInteger)
    pending: Mapped[bool] = mapped_column(Boolean)
    emitted_ms: Mapped[int | None] = mapped_column(BigInteger)
    src_topic: Mapped[str] = mapped_column(Text)
    src_partition: Mapped[int] = mapped_column(Integer)
    src_offset: Mapped[int] = mapped_column(BigInteger)
    spans_dropped: Mapped[int] = mapped_column(Integer, server_default="0")

    __table_args__ = (Index("ix_otlp_traces_pending_first_ms", "pending", "first_ms"),
                      Index("ix_otlp_traces_emitted_ms", "emitted_ms"))


class Dataset(Base):
    """A curated evaluation dataset: its sink, and the sink's own id once it exists."""

    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    sink: Mapped[str] = mapped_column(String(32))
    sink_dataset_id: Mapped[str | None] = mapped_column(String(256))
    created_ms: Mapped[int] = mapped_column(BigInteger)


class DatasetVersion(Base):
    """The version ledger (invariant 4 in docs/design.md). A version is written ``pending`` with its
    records before the sink is called, and becomes ``done`` only after the sink confirmed."""

    __tablename__ = "dataset_versions"

    dataset: Mapped[str] = mapped_column(String(256), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # pending | done
    created_ms: Mapped[int] = mapped_column(BigInteger)
    committed_ms: Mapped[int | None] = mapped_column(BigInteger)
    record_count: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 over the version's records
    rule_mix: Mapped[dict[str, int]] = mapped_column(JSON)  # candidate rule -> records
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)


class DatasetRecord(Base):
    """Membership: each record (by inputs hash) belongs to exactly one version of a dataset."""

    __tablename__ = "dataset_records"

    dataset: Mapped[str] = mapped_column(String(256), primary_key=True)
    input_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    trace_id: Mapped[str] = mapped_column(String(256))
    record: Mapped[dict[str, Any]] = mapped_column(JSON)  # inputs, outputs, expectations, ...
    created_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_dataset_records_version", "dataset", "version"),
        Index("ix_dataset_records_trace", "dataset", "trace_id"),
    )


class DatasetSkip(Base):
    """A candidate a dataset will not take (no inputs, or inputs it already holds), with why:
    remembered so that later cycles do not select it again."""

    __tablename__ = "dataset_skips"

    dataset: Mapped[str] = mapped_column(String(256), primary_key=True)
    trace_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    # "": for good (no inputs, inputs already held); else the digest of the spec's selection
    # that passed the trace over, so that editing the selection looks at it again.
    selection: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)


def core_table(model: type[Base]) -> Table:
    """A declarative model's Core table (mypy sees ``__table__`` as a FromClause)."""
    return cast(Table, model.__table__)


# The Core tables, named once for the modules that write SQL against them.
TRACES = core_table(Trace)
ASSESSMENTS = core_table(Assessment)
TRACE_TAGS = core_table(TraceTag)
DECISION_LOG = core_table(DecisionLog)
DEAD_LETTERS = core_table(DeadLetter)
META = core_table(StoreMeta)
OUTBOX = core_table(TagOutbox)
CHECKPOINTS = core_table(SourceCheckpoint)
OTLP_SPANS = core_table(OtlpSpan)
OTLP_TRACES = core_table(OtlpTrace)
DATASETS = core_table(Dataset)
VERSIONS = core_table(DatasetVersion)
RECORDS = core_table(DatasetRecord)
SKIPS = core_table(DatasetSkip)
