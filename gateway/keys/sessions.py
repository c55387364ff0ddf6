"""Dashboard sessions, kept in the ledger's database so that logging out ends a session on
every worker and replica: a session cookie is honoured only while its row is open.

The cookie carries a random session id; the database keeps only its SHA-256 (as for keys), who
the session is for, when it expires and when it was ended.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, String, Table, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.db import SQLITE_IMMEDIATE
from gateway.ledger.schema import metadata

# In the ledger's MetaData; migration v0004 creates it.
ui_sessions_table = Table(
    "ui_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # SHA-256 of the session id, hex
    Column("subject", String, nullable=False),  # "master" or a key id
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Open, check and end dashboard sessions by id."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def open(self, session_id: str, subject: str, expires: datetime) -> None:
        """Record a new session (and forget sessions that expired)."""
        now = datetime.now(UTC)
        table = ui_sessions_table
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                await conn.execute(delete(table).where(table.c.expires_at < now))
                await conn.execute(
                    table.insert().values(
                        id=_digest(session_id), subject=subject, expires_at=expires
                    )
                )

    async def is_open(self, session_id: str) -> bool:
        """Whether the session was opened here and neither ended nor expired."""
        table = ui_sessions_table
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(table.c.expires_at, table.c.ended_at).where(
                        table.c.id == _digest(session_id)
                    )
                )
            ).first()
        if row is None or row.ended_at is not None:
            return False
        expires: datetime = row.expires_at
        if expires.tzinfo is None:  # SQLite returns naive datetimes
            expires = expires.replace(tzinfo=UTC)
        return expires > datetime.now(UTC)

    async def end(self, session_id: str) -> None:
        """End a session: its cookie is refused from now on, wherever it is sent."""
        table = ui_sessions_table
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                await conn.execute(
                    update(table)
                    .where(table.c.id == _digest(session_id))
                    .values(ended_at=datetime.now(UTC))
                )
