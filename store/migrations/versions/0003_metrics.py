"""Metric buckets (minute and hour), store facts, and the SQL views over the buckets.

Buckets for traces stored before this revision are built from their rows, with the same code
the worker uses (``store.metrics.rebuild``), so later updates subtract what was added.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCALARS = ("traces", "ok", "errors", "in_progress", "latency_count", "latency_sum_ms",
           "input_tokens", "output_tokens", "total_tokens")

# The views: one scalar view per resolution, and per-hour views over the JSON columns. They
# show the finest rollup level only (0), so that SUM(...) GROUP BY anything counts each trace once.
_SCALAR_VIEW = """
CREATE VIEW tc_metrics_{res} AS
SELECT bucket_ms, {time_expr} AS bucket_start, experiment_id, trace_name,
       dimension AS environment, traces, ok, errors, in_progress,
       CASE WHEN traces > 0 THEN CAST(ok AS DOUBLE PRECISION) / traces END AS success_rate,
       CASE WHEN latency_count > 0
            THEN CAST(latency_sum_ms AS DOUBLE PRECISION) / latency_count END AS avg_latency_ms,
       p50_ms, p95_ms, p99_ms, max_ms, input_tokens, output_tokens, total_tokens
FROM metric_{res} WHERE rollup = 0
"""
_TIME = {
    "postgresql": "to_timestamp(bucket_ms / 1000.0) AT TIME ZONE 'UTC'",
    "sqlite": "datetime(bucket_ms / 1000, 'unixepoch')",
}
_JSON_VIEWS = {
    "postgresql": [
        """CREATE VIEW tc_span_types_hour AS
SELECT m.bucket_ms, to_timestamp(m.bucket_ms / 1000.0) AT TIME ZONE 'UTC' AS bucket_start,
       m.experiment_id, m.trace_name, m.dimension AS environment, s.key AS span_type,
       CAST(s.value->>'count' AS BIGINT) AS spans,
       CAST(s.value->>'total_us' AS DOUBLE PRECISION) / 1e6 AS total_time_s,
       CAST(s.value->>'total_us' AS DOUBLE PRECISION) / 1e6
         / NULLIF(CAST(s.value->>'count' AS BIGINT), 0) AS avg_time_s
FROM metric_hour m, json_each(m.spans) s WHERE m.rollup = 0""",
        """CREATE VIEW tc_feedback_hour AS
SELECT m.bucket_ms, to_timestamp(m.bucket_ms / 1000.0) AT TIME ZONE 'UTC' AS bucket_start,
       m.experiment_id, m.trace_name, m.dimension AS environment, f.key AS assessment_name,
       CAST(f.value->>0 AS BIGINT) AS feedback_count,
       CAST(f.value->>1 AS BIGINT) AS numeric_count,
       CAST(f.value->>2 AS DOUBLE PRECISION) / 1e6 AS numeric_sum,
       CAST(f.value->>3 AS BIGINT) AS passed,
       CAST(f.value->>4 AS BIGINT) AS failed
FROM metric_hour m, json_each(m.feedback) f WHERE m.rollup = 0""",
        """CREATE VIEW tc_candidates_hour AS
SELECT m.bucket_ms, to_timestamp(m.bucket_ms / 1000.0) AT TIME ZONE 'UTC' AS bucket_start,
       m.experiment_id, m.trace_name, m.dimension AS environment, k.key AS tag_key,
       v.key AS tag_value, CAST(v.value::text AS BIGINT) AS candidates
FROM metric_hour m, json_each(m.candidates) k, json_each(k.value) v
WHERE m.rollup = 0""",
    ],
    "sqlite": [
        """CREATE VIEW tc_span_types_hour AS
SELECT m.bucket_ms, datetime(m.bucket_ms / 1000, 'unixepoch') AS bucket_start,
       m.experiment_id, m.trace_name, m.dimension AS environment, s.key AS span_type,
       json_extract(s.value, '$.count') AS spans,
       json_extract(s.value, '$.total_us') / 1e6 AS total_time_s,
       json_extract(s.value, '$.total_us') / 1e6
         / NULLIF(json_extract(s.value, '$.count'), 0) AS avg_time_s
FROM metric_hour m, json_each(m.spans) s WHERE m.rollup = 0""",
        """CREATE VIEW tc_feedback_hour AS
SELECT m.bucket_ms, datetime(m.bucket_ms / 1000, 'unixepoch') AS bucket_start,
       m.experiment_id, m.trace_name, m.dimension AS environment, f.key AS assessment_name,
       json_extract(f.value, '$[0]') AS feedback_count,
       json_extract(f.value, '$[1]') AS numeric_count,
       json_extract(f.value, '$[2]') / 1e6 AS numeric_sum,
       json_extract(f.value, '$[3]') AS passed,
       json_extract(f.value, '$[4]') AS failed
FROM metric_hour m, json_each(m.feedback) f WHERE m.rollup = 0""",
        """CREATE VIEW tc_candidates_hour AS
SELECT m.bucket_ms, datetime(m.bucket_ms / 1000, 'unixepoch') AS bucket_start,
       m.experiment_id, m.trace_name, m.dimension AS environment, k.key AS tag_key,
       v.key AS tag_value, v.value AS candidates
FROM metric_hour m, json_each(m.candidates) k, json_each(k.value) v
WHERE m.rollup = 0""",
    ],
}
VIEWS = ("tc_metrics_minute", "tc_metrics_hour", "tc_span_types_hour", "tc_feedback_hour",
         "tc_candidates_hour")


def _bucket_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("bucket_ms", sa.BigInteger(), primary_key=True),
        sa.Column("rollup", sa.SmallInteger(), primary_key=True),
        sa.Column("experiment_id", sa.String(256), primary_key=True),
        sa.Column("trace_name", sa.String(512), primary_key=True),
        sa.Column("dimension", sa.String(512), primary_key=True),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in SCALARS),
        *(sa.Column(c, sa.Float(), nullable=True) for c in ("p50_ms", "p95_ms", "p99_ms",
                                                             "max_ms")),
        sa.Column("sketches", sa.LargeBinary(), nullable=False),
        *(sa.Column(c, sa.JSON(), nullable=False) for c in ("spans", "feedback", "candidates")),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    )


def upgrade() -> None:
    _bucket_table("metric_minute")
    _bucket_table("metric_hour")
    op.create_table(
        "store_meta",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        # Sketch blobs are rewritten on every batch that touches their bucket, and hardly
        # compress: storing them uncompressed saves pglz's CPU on each write and each read.
        for table in ("metric_minute", "metric_hour"):
            op.execute(f"ALTER TABLE {table} ALTER COLUMN sketches SET STORAGE EXTERNAL")
    for res in ("minute", "hour"):
        op.execute(_SCALAR_VIEW.format(res=res, time_expr=_TIME[dialect]))
    for ddl in _JSON_VIEWS[dialect]:
        op.execute(ddl)
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT 1 FROM traces LIMIT 1")).first() is not None:
        from store.metrics import MetricsConfig, rebuild

        rebuild(conn, MetricsConfig("environment", None, None), int(time.time() * 1000))


def downgrade() -> None:
    for view in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_table("store_meta")
    op.drop_table("metric_hour")
    op.drop_table("metric_minute")
