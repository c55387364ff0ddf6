"""Cost provenance per record (the price entry, or why the cost is unknown), the basis of
estimated usage, and adjustment records that re-price earlier ones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    "usage_basis",
    "cost_note",
    "price_family",
    "price_model",
    "price_source",
    "price_effective",
    "kind",
    "adjusts",
    "adjusted_cost_usd",
)


def money(precision: int) -> sa.types.TypeEngine[Any]:
    # Exact NUMERIC(p, 10); on SQLite an INTEGER of 1e-10 USD units (see schema.Money).
    return sa.Numeric(precision, 10).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    # Records written before this revision are calls; an estimated one is marked "estimated"
    # (whether it was a lower bound was not recorded), the others "reported".
    with op.batch_alter_table("spend_records") as batch:
        batch.add_column(
            sa.Column("usage_basis", sa.String(16), nullable=False, server_default="reported")
        )
        batch.add_column(sa.Column("cost_note", sa.String(), nullable=True))
        batch.add_column(sa.Column("price_family", sa.String(), nullable=True))
        batch.add_column(sa.Column("price_model", sa.String(), nullable=True))
        batch.add_column(sa.Column("price_source", sa.String(), nullable=True))
        batch.add_column(sa.Column("price_effective", sa.String(32), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="call"))
        batch.add_column(sa.Column("adjusts", sa.String(), nullable=True))
        batch.add_column(sa.Column("adjusted_cost_usd", money(20), nullable=True))
        batch.create_index("ix_spend_records_adjusts", ["adjusts"])
    records = sa.table("spend_records", sa.column("usage_basis"), sa.column("usage_estimated"))
    op.execute(
        records.update()
        .where(records.c.usage_estimated == sa.true())
        .values(usage_basis="estimated")
    )


def downgrade() -> None:
    with op.batch_alter_table("spend_records") as batch:
        batch.drop_index("ix_spend_records_adjusts")
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
