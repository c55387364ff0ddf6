"""Batch jobs and the files they read and write, so a job is followed to its end across
restarts and replicas.

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def money(precision: int) -> sa.types.TypeEngine[Any]:
    # Exact NUMERIC(p, 10); on SQLite an INTEGER of 1e-10 USD units (see schema.Money).
    return sa.Numeric(precision, 10).with_variant(sa.BigInteger(), "sqlite")


def when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batch_files",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", when(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_batch_files"),
    )
    op.create_index("ix_batch_files_key_id_created_at", "batch_files", ["key_id", "created_at"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("team", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("deployment", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("upstream_id", sa.String(), nullable=True),
        sa.Column("upstream_output_file", sa.String(), nullable=True),
        sa.Column("upstream_error_file", sa.String(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", when(), nullable=False),
        sa.Column("times", sa.JSON(), nullable=False),
        sa.Column("request_total", sa.Integer(), nullable=False),
        sa.Column("request_completed", sa.Integer(), nullable=False),
        sa.Column("request_failed", sa.Integer(), nullable=False),
        sa.Column("batch_metadata", sa.JSON(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("reserved_usd", money(20), nullable=False),
        sa.Column("cost_usd", money(20), nullable=True),
        sa.Column("live_cost_usd", money(20), nullable=True),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("next_poll_at", when(), nullable=True),
        sa.Column("poll_failures", sa.Integer(), nullable=False),
        sa.Column("lease_until", when(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    op.create_index("ix_batches_key_id_created_at", "batches", ["key_id", "created_at"])
    op.create_index("ix_batches_next_poll_at", "batches", ["next_poll_at"])


def downgrade() -> None:
    op.drop_index("ix_batches_next_poll_at", "batches")
    op.drop_index("ix_batches_key_id_created_at", "batches")
    op.drop_table("batches")
    op.drop_index("ix_batch_files_key_id_created_at", "batch_files")
    op.drop_table("batch_files")
