"""Spend records and their daily roll-ups.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def money(precision: int) -> sa.types.TypeEngine[Any]:
    # Exact NUMERIC(p, 10); on SQLite an INTEGER of 1e-10 USD units (see schema.Money).
    return sa.Numeric(precision, 10).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "spend_records",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("team", sa.String(), nullable=True),
        sa.Column("end_user", sa.String(), nullable=True),
        sa.Column("tags", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("deployment", sa.String(), nullable=True),
        sa.Column("upstream_model", sa.String(), nullable=True),
        sa.Column("region", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("fallback_used", sa.Boolean(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error_type", sa.String(), nullable=True),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", money(20), nullable=True),
        sa.Column("usage_estimated", sa.Boolean(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_spend_records"),
    )
    op.create_index(
        "ix_spend_records_started_at_request_id", "spend_records", ["started_at", "request_id"]
    )
    op.create_index(
        "ix_spend_records_key_id_started_at_request_id",
        "spend_records",
        ["key_id", "started_at", "request_id"],
    )
    op.create_index("ix_spend_records_model_started_at", "spend_records", ["model", "started_at"])

    rollup("spend_daily", "key_id", "team", "model", "provider")
    rollup("spend_daily_users", "key_id", "end_user")


def rollup(name: str, *dimensions: str) -> None:
    """A daily roll-up: sums per (day, *dimensions); see gateway/ledger/schema.py."""
    counters = [
        "requests",
        "errors",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "unknown_cost_requests",
    ]
    op.create_table(
        name,
        sa.Column("day", sa.Date(), nullable=False),
        *(sa.Column(d, sa.String(), nullable=False) for d in dimensions),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in counters),
        sa.Column("cost_usd", money(28), nullable=False),
        sa.PrimaryKeyConstraint("day", *dimensions, name=f"pk_{name}"),
        sqlite_with_rowid=False,
    )
    op.create_index(f"ix_{name}_key_id_day", name, ["key_id", "day"])


def downgrade() -> None:
    op.drop_table("spend_daily_users")
    op.drop_table("spend_daily")
    op.drop_table("spend_records")
