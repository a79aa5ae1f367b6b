"""Rule decisions: current tags per trace, the decision log, the write-back outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "trace_tags",
        sa.Column("trace_id", sa.String(256), primary_key=True),
        sa.Column("tag_key", sa.String(256), primary_key=True),
        sa.Column("tag_value", sa.Text(), nullable=True),
        sa.Column("rule", sa.Text(), nullable=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("decided_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_trace_tags_key_value", "trace_tags", ["tag_key", "tag_value"])
    op.create_table(
        "decision_log",
        sa.Column("id", BIGINT_PK, primary_key=True, autoincrement=True),
        sa.Column("trace_id", sa.String(256), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("decided_ms", sa.BigInteger(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("outcomes", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.UniqueConstraint("trace_id", "digest", name="uq_decision_log_trace_digest"),
    )
    op.create_table(
        "tag_outbox",
        sa.Column("trace_id", sa.String(256), primary_key=True),
        sa.Column("tag_key", sa.String(256), primary_key=True),
        sa.Column("tag_value", sa.Text(), nullable=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("waiting_for_trace", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_tag_outbox_next_attempt_ms", "tag_outbox", ["next_attempt_ms"])


def downgrade() -> None:
    op.drop_index("ix_tag_outbox_next_attempt_ms", table_name="tag_outbox")
    op.drop_table("tag_outbox")
    op.drop_table("decision_log")
    op.drop_index("ix_trace_tags_key_value", table_name="trace_tags")
    op.drop_table("trace_tags")
