"""Which API surface each request came through (openai, azure, mistral, library).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every record written before this revision came through the OpenAI-compatible API or
    # the library; the server default files them under the former.
    with op.batch_alter_table("spend_records") as batch:
        batch.add_column(
            sa.Column("surface", sa.String(16), nullable=False, server_default="openai")
        )


def downgrade() -> None:
    with op.batch_alter_table("spend_records") as batch:
        batch.drop_column("surface")
