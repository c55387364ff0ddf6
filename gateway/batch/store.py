"""Batch jobs and their files, kept in the ledger's database: a job is followed to its end by
whichever replica holds its lease, across restarts.

Files are kept whole (input files until deleted; result files the gateway wrote from the
provider's, in OpenAI's shape). A job's ``lease_until`` is the lock that lets one replica at a
time look at it upstream: a replica takes it with a conditional UPDATE, so two pollers never
settle the same job twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    and_,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.db import SQLITE_IMMEDIATE
from gateway.ledger.schema import Money, UTCDateTime, metadata

# In the ledger's MetaData; migration v0010 creates them.
batch_files = Table(
    "batch_files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String, nullable=True),  # None: the master key's
    Column("purpose", String(32), nullable=False),  # batch, batch_output
    Column("filename", String, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("content", LargeBinary, nullable=False),
)
Index(None, batch_files.c.key_id, batch_files.c.created_at)

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String, nullable=True),
    Column("team", String, nullable=True),
    Column("model", String, nullable=False),  # the public model the lines named
    Column("deployment", String, nullable=False),
    Column("provider", String, nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("output_file_id", String(64), nullable=True),
    Column("error_file_id", String(64), nullable=True),
    Column("upstream_id", String, nullable=True),
    Column("upstream_output_file", String, nullable=True),
    Column("upstream_error_file", String, nullable=True),
    Column("status", String(32), nullable=False),  # OpenAI's batch statuses
    Column("created_at", UTCDateTime(), nullable=False),
    Column("times", JSON, nullable=False),  # status → unix seconds it was first seen
    Column("request_total", Integer, nullable=False),
    Column("request_completed", Integer, nullable=False),
    Column("request_failed", Integer, nullable=False),
    Column("batch_metadata", JSON, nullable=True),
    Column("errors", JSON, nullable=True),
    Column("reserved_usd", Money(20), nullable=False),
    Column("cost_usd", Money(20), nullable=True),
    Column("live_cost_usd", Money(20), nullable=True),  # the same lines as live calls
    Column("budget", JSON, nullable=False),  # the scopes and periods of its reservation
    Column("settled", Boolean, nullable=False),
    Column("next_poll_at", UTCDateTime(), nullable=True),  # None: nothing more to look at
    Column("poll_failures", Integer, nullable=False),
    Column("lease_until", UTCDateTime(), nullable=True),
)
Index(None, batches.c.key_id, batches.c.created_at)
Index(None, batches.c.next_poll_at)


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    key_id: str | None
    purpose: str
    filename: str
    bytes: int
    created_at: datetime


class BatchStore:
    """Reads and writes batch jobs and files; every method is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- files -------------------------------------------------------------------------
    async def add_file(self, file: StoredFile, content: bytes) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                batch_files.insert().values(
                    id=file.id,
                    key_id=file.key_id,
                    purpose=file.purpose,
                    filename=file.filename,
                    bytes=file.bytes,
                    created_at=file.created_at,
                    content=content,
                )
            )

    async def file(self, file_id: str) -> StoredFile | None:
        t = batch_files
        query = select(
            t.c.id, t.c.key_id, t.c.purpose, t.c.filename, t.c.bytes, t.c.created_at
        ).where(t.c.id == file_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else StoredFile(*row)

    async def files(self, key_id: str | None, *, everyone: bool, limit: int) -> list[StoredFile]:
        t = batch_files
        query = select(
            t.c.id, t.c.key_id, t.c.purpose, t.c.filename, t.c.bytes, t.c.created_at
        ).order_by(t.c.created_at.desc(), t.c.id.desc())
        if not everyone:
            query = query.where(t.c.key_id == key_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [StoredFile(*row) for row in rows]

    async def content(self, file_id: str) -> bytes | None:
        query = select(batch_files.c.content).where(batch_files.c.id == file_id)
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar_one_or_none()
        return None if value is None else bytes(value)

    async def delete_file(self, file_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(batch_files).where(batch_files.c.id == file_id))

    # -- batches -----------------------------------------------------------------------
    async def add_batch(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(batches.insert().values(**values))

    async def batch(self, batch_id: str) -> Row[Any] | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(batches).where(batches.c.id == batch_id))).first()

    async def batches(
        self, key_id: str | None, *, everyone: bool, limit: int, after: str | None = None
    ) -> list[Row[Any]]:
        query = select(batches).order_by(batches.c.created_at.desc(), batches.c.id.desc())
        if not everyone:
            query = query.where(batches.c.key_id == key_id)
        if after is not None:
            anchor = await self.batch(after)
            if anchor is not None:
                query = query.where(
                    or_(
                        batches.c.created_at < anchor.created_at,
                        and_(batches.c.created_at == anchor.created_at, batches.c.id < anchor.id),
                    )
                )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query.limit(limit))).all())

    async def update(self, batch_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(batches).where(batches.c.id == batch_id).values(**values))

    async def due(self, now: datetime, limit: int = 100) -> list[str]:
        """Jobs whose next look is due and that no replica holds."""
        query = (
            select(batches.c.id)
            .where(batches.c.next_poll_at <= now)
            .where(or_(batches.c.lease_until.is_(None), batches.c.lease_until < now))
            .order_by(batches.c.next_poll_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def lease(self, batch_id: str, now: datetime, seconds: float) -> bool:
        """Take a job's lease (None or lapsed) for ``seconds``; False if another holds it."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                result = await conn.execute(
                    update(batches)
                    .where(batches.c.id == batch_id)
                    .where(or_(batches.c.lease_until.is_(None), batches.c.lease_until < now))
                    .values(lease_until=now + timedelta(seconds=seconds))
                )
        return bool(result.rowcount == 1)

    async def unlease(self, batch_id: str) -> None:
        await self.update(batch_id, lease_until=None)


def money(value: Decimal | None) -> Decimal:
    return value if value is not None else Decimal(0)
