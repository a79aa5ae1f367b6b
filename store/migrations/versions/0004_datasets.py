"""Curated evaluation datasets: datasets, the version ledger, record membership, skips.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("sink", sa.String(32), nullable=False),
        sa.Column("sink_dataset_id", sa.String(256), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("dataset", sa.String(256), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("committed_ms", sa.BigInteger(), nullable=True),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("rule_mix", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_table(
        "dataset_records",
        sa.Column("dataset", sa.String(256), primary_key=True),
        sa.Column("input_hash", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("trace_id", sa.String(256), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_dataset_records_version", "dataset_records", ["dataset", "version"])
    op.create_table(
        "dataset_skips",
        sa.Column("dataset", sa.String(256), primary_key=True),
        sa.Column("trace_id", sa.String(256), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("selection", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_dataset_records_trace", "dataset_records", ["dataset", "trace_id"])


def downgrade() -> None:
    op.drop_table("dataset_skips")
    op.drop_index("ix_dataset_records_trace", table_name="dataset_records")
    op.drop_index("ix_dataset_records_version", table_name="dataset_records")
    op.drop_table("dataset_records")
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
