"""Initial schema: traces, assessments, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "traces",
        sa.Column("trace_id", sa.String(256), primary_key=True),
        sa.Column("experiment_id", sa.String(256), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger(), nullable=False),
        sa.Column("execution_time_ms", sa.BigInteger(), nullable=True),
        sa.Column("request", sa.Text(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("trace_metadata", sa.JSON(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("total_tokens", sa.BigInteger(), nullable=True),
        sa.Column("span_summary", sa.JSON(), nullable=False),
        sa.Column("span_count", sa.Integer(), nullable=False),
        sa.Column("completeness", sa.BigInteger(), nullable=False),
        sa.Column("source_format", sa.String(16), nullable=False),
        sa.Column("src_topic", sa.Text(), nullable=False),
        sa.Column("src_partition", sa.Integer(), nullable=False),
        sa.Column("src_offset", sa.BigInteger(), nullable=False),
        sa.Column("ingested_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_traces_timestamp_ms", "traces", ["timestamp_ms"])
    op.create_table(
        "assessments",
        sa.Column("assessment_id", sa.String(256), primary_key=True),
        sa.Column("trace_id", sa.String(256), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("numeric_value", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("rationale", sa.Text(), nullable=True),
        sa.Column("source_type", sa.Text(), nullable=True),
        sa.Column("source_id", sa.Text(), nullable=True),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("overrides", sa.String(256), nullable=True),
        sa.Column("span_id", sa.Text(), nullable=True),
        sa.Column("create_time_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_update_time_ms", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("assessment_metadata", sa.JSON(), nullable=False),
        sa.Column("src_topic", sa.Text(), nullable=False),
        sa.Column("src_partition", sa.Integer(), nullable=False),
        sa.Column("src_offset", sa.BigInteger(), nullable=False),
        sa.Column("ingested_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_assessments_trace_id", "assessments", ["trace_id"])
    op.create_index("ix_assessments_overrides", "assessments", ["overrides"])
    op.create_table(
        "dead_letters",
        sa.Column("id", BIGINT_PK, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("error_type", sa.String(128), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("topic", "partition", "offset", name="uq_dead_letters_origin"),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_index("ix_assessments_overrides", table_name="assessments")
    op.drop_index("ix_assessments_trace_id", table_name="assessments")
    op.drop_table("assessments")
    op.drop_index("ix_traces_timestamp_ms", table_name="traces")
    op.drop_table("traces")
