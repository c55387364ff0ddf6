"""Every upstream attempt of a request, beside its spend record; budget alerts sent; the
prompt and answer of requests whose key logs content.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def money(precision: int) -> sa.types.TypeEngine[Any]:
    # Exact NUMERIC(p, 10); on SQLite an INTEGER of 1e-10 USD units (see schema.Money).
    return sa.Numeric(precision, 10).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("spend_records") as batch:
        batch.add_column(
            sa.Column(
                "content", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True
            )
        )
    op.create_table(
        "spend_attempts",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deployment", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error_type", sa.String(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("billed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "seq", name="pk_spend_attempts"),
    )
    op.create_index(
        "ix_spend_attempts_deployment_started_at", "spend_attempts", ["deployment", "started_at"]
    )
    op.create_index("ix_spend_attempts_started_at", "spend_attempts", ["started_at"])
    op.create_table(
        "budget_alerts",
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("scope_id", sa.String(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("spent_usd", money(20), nullable=False),
        sa.Column("budget_usd", money(20), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint(
            "scope", "scope_id", "period_start", "threshold", name="pk_budget_alerts"
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("spend_records") as batch:
        batch.drop_column("content")
    op.drop_table("budget_alerts")
    op.drop_index("ix_spend_attempts_started_at", table_name="spend_attempts")
    op.drop_index("ix_spend_attempts_deployment_started_at", table_name="spend_attempts")
    op.drop_table("spend_attempts")
