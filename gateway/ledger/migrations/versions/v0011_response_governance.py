"""Stored responses: whose they are (the end user and the request's metadata tags, for
erasure by person) and where they were answered (the region of the deployment and the
regions the conversation was restricted to, for residency when it is continued).

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stored_responses") as batch:
        batch.add_column(sa.Column("end_user", sa.String(), nullable=True))
        batch.add_column(
            sa.Column(
                "tags", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True
            )
        )
        batch.add_column(sa.Column("region", sa.String(), nullable=True))
        batch.add_column(sa.Column("regions", sa.String(), nullable=True))
    op.create_index("ix_stored_responses_end_user", "stored_responses", ["end_user"])
    op.create_index("ix_stored_responses_owner", "stored_responses", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_stored_responses_owner", table_name="stored_responses")
    op.drop_index("ix_stored_responses_end_user", table_name="stored_responses")
    with op.batch_alter_table("stored_responses") as batch:
        batch.drop_column("regions")
        batch.drop_column("region")
        batch.drop_column("tags")
        batch.drop_column("end_user")
