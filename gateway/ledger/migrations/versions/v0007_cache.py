"""Response cache hits on the books: whether a record was answered from the cache, and what
that answer cost when it was produced (the money the hit saved).

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("spend_records") as batch:
        batch.add_column(
            sa.Column("cache_hit", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        # Exact NUMERIC(20, 10); on SQLite an INTEGER of 1e-10 USD units (see schema.Money).
        batch.add_column(
            sa.Column(
                "saved_usd",
                sa.Numeric(20, 10).with_variant(sa.BigInteger(), "sqlite"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("spend_records") as batch:
        batch.drop_column("saved_usd")
        batch.drop_column("cache_hit")
