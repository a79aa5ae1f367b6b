"""Spans refused past a buffered OpenTelemetry trace's caps, counted per trace
(``store.otlp_buffer``: ``otlp_max_trace_spans``, ``otlp_max_trace_bytes``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("otlp_traces") as batch:
        batch.add_column(sa.Column("spans_dropped", sa.Integer(), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("otlp_traces") as batch:
        batch.drop_column("spans_dropped")
