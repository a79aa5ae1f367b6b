"""OpenTelemetry spans buffered until their trace is assembled (``store.otlp_buffer``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "otlp_spans",
        sa.Column("trace_id", sa.String(256), primary_key=True),
        sa.Column("span_id", sa.String(16), primary_key=True),
        sa.Column("span", sa.Text(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "otlp_traces",
        sa.Column("trace_id", sa.String(256), primary_key=True),
        sa.Column("first_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_ms", sa.BigInteger(), nullable=False),
        sa.Column("has_root", sa.Boolean(), nullable=False),
        sa.Column("span_count", sa.Integer(), nullable=False),
        sa.Column("span_bytes", sa.BigInteger(), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("emitted_ms", sa.BigInteger(), nullable=True),
        sa.Column("src_topic", sa.Text(), nullable=False),
        sa.Column("src_partition", sa.Integer(), nullable=False),
        sa.Column("src_offset", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_otlp_traces_pending_first_ms", "otlp_traces", ["pending", "first_ms"])
    op.create_index("ix_otlp_traces_emitted_ms", "otlp_traces", ["emitted_ms"])


def downgrade() -> None:
    op.drop_index("ix_otlp_traces_emitted_ms", "otlp_traces")
    op.drop_index("ix_otlp_traces_pending_first_ms", "otlp_traces")
    op.drop_table("otlp_traces")
    op.drop_table("otlp_spans")
