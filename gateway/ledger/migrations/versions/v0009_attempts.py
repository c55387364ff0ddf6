"""Every upstream attempt of a request, beside its spend record.

Revision ID: 0009
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
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


def downgrade() -> None:
    op.drop_index("ix_spend_attempts_started_at", table_name="spend_attempts")
    op.drop_index("ix_spend_attempts_deployment_started_at", table_name="spend_attempts")
    op.drop_table("spend_attempts")
