"""Stored Responses API answers, in the ledger's database: what ``GET /v1/responses/{id}``,
``DELETE …``, ``…/input_items`` and a later request's ``previous_response_id`` read.

A stored response belongs to whoever made it: the key that called (``owner``) and its team.
Another key of the same team may read it; any other caller is told it does not exist. Rows
expire after ``ledger.responses_retention_days``: an expired row is not read any more, and the
background retention task (``gateway.governance.retention``) deletes it in batches. Erasure by
person deletes a person's rows (``erase_stored_responses``). Without a ledger database, a
gateway keeps them in its own memory instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import JSON, Column, DateTime, Index, String, Table, delete, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.db import SQLITE_IMMEDIATE
from gateway.ledger.schema import metadata

_JSON = JSON().with_variant(JSONB(), "postgresql")

# In the ledger's MetaData; migration v0006 creates it.
stored_responses_table = Table(
    "stored_responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String, nullable=False),  # the key id ("" for the master key / no auth)
    Column("team_id", String),
    Column("previous_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("input", _JSON, nullable=False),  # this turn's input items
    Column("response", _JSON, nullable=False),  # the response object as answered
    # Migration v0011: whose it is (for erasure by person) and where it was answered (for
    # residency when the conversation is continued).
    Column("end_user", String),
    Column("tags", _JSON),  # the request's metadata tags
    Column("region", String),  # of the deployment that answered (None: it has none)
    Column("regions", String),  # the regions the call was restricted to, comma-separated
)
Index(None, stored_responses_table.c.expires_at)
Index(None, stored_responses_table.c.end_user)
Index(None, stored_responses_table.c.owner)


@dataclass(frozen=True, slots=True)
class Owner:
    """Who may read a stored response: the key that made it, and the other keys of its team."""

    key_id: str  # "" for the master key (or a gateway without auth)
    team_id: str | None = None

    def may_read(self, key_id: str, team_id: str | None) -> bool:
        return key_id == self.key_id or (self.team_id is not None and team_id == self.team_id)


@dataclass(slots=True)
class StoredResponse:
    id: str
    previous_id: str | None
    input: list[dict[str, Any]]
    response: dict[str, Any]
    end_user: str | None = None
    tags: dict[str, Any] | None = None
    region: str | None = None  # of the deployment that answered
    regions: frozenset[str] | None = None  # the call's region policy (None: unrestricted)


def _policy_text(regions: frozenset[str] | None) -> str | None:
    return None if regions is None else ",".join(sorted(regions))


def _policy(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(r for r in text.split(",") if r)


class ResponseStore(Protocol):
    async def save(
        self, owner: Owner, stored: StoredResponse, created: datetime, expires: datetime
    ) -> None: ...
    async def get(self, owner: Owner, response_id: str) -> StoredResponse | None: ...
    async def delete(self, owner: Owner, response_id: str) -> bool: ...


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class DatabaseResponseStore:
    """Stored responses in the ledger's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def save(
        self, owner: Owner, stored: StoredResponse, created: datetime, expires: datetime
    ) -> None:
        table = stored_responses_table
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                await conn.execute(
                    table.insert().values(
                        id=stored.id,
                        owner=owner.key_id,
                        team_id=owner.team_id,
                        previous_id=stored.previous_id,
                        created_at=created,
                        expires_at=expires,
                        input=stored.input,
                        response=stored.response,
                        end_user=stored.end_user,
                        tags=stored.tags or None,
                        region=stored.region,
                        regions=_policy_text(stored.regions),
                    )
                )

    async def get(self, owner: Owner, response_id: str) -> StoredResponse | None:
        table = stored_responses_table
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.id == response_id))).first()
        if row is None or not owner.may_read(row.owner, row.team_id):
            return None
        if _aware(row.expires_at) <= datetime.now(UTC):
            return None
        return StoredResponse(
            row.id,
            row.previous_id,
            list(row.input),
            dict(row.response),
            row.end_user,
            dict(row.tags) if row.tags else None,
            row.region,
            _policy(row.regions),
        )

    async def delete(self, owner: Owner, response_id: str) -> bool:
        if await self.get(owner, response_id) is None:
            return False
        table = stored_responses_table
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                await conn.execute(delete(table).where(table.c.id == response_id))
        return True


class MemoryResponseStore:
    """Stored responses in this process's memory (a gateway without a ledger database)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, str | None, datetime, StoredResponse]] = {}

    async def save(
        self, owner: Owner, stored: StoredResponse, created: datetime, expires: datetime
    ) -> None:
        for rid in [rid for rid, row in self.rows.items() if row[2] < created]:
            del self.rows[rid]
        self.rows[stored.id] = (owner.key_id, owner.team_id, expires, stored)

    async def get(self, owner: Owner, response_id: str) -> StoredResponse | None:
        row = self.rows.get(response_id)
        if row is None or not owner.may_read(row[0], row[1]) or row[2] <= datetime.now(UTC):
            return None
        return row[3]

    async def delete(self, owner: Owner, response_id: str) -> bool:
        if await self.get(owner, response_id) is None:
            return False
        del self.rows[response_id]
        return True


def _tagged(tags: Any, tag: tuple[str, Any]) -> bool:
    name, value = tag
    return isinstance(tags, dict) and name in tags and tags[name] == value


async def erase_stored_responses(
    engine: AsyncEngine,
    *,
    user: str | None = None,
    key_id: str | None = None,
    tag: tuple[str, Any] | None = None,
    page: int = 2000,
) -> int:
    """Delete the stored responses of one person — made for the end user ``user``, by the key
    ``key_id``, or by requests with the metadata ``tag`` (name, value) — input, output and
    all. Returns how many were deleted."""
    table = stored_responses_table
    c = table.c
    if user is not None or key_id is not None:
        where = c.end_user == user if user is not None else c.owner == key_id
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                done = await conn.execute(delete(table).where(where))
        return done.rowcount or 0
    if tag is None:
        raise ValueError("erase by exactly one of user, key_id or tag")
    # Tags are free-form JSON that no index covers: read them in pages.
    removed = 0
    after = ""
    while True:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(c.id, c.tags)
                    .where(c.id > after, c.tags.is_not(None))
                    .order_by(c.id)
                    .limit(page)
                )
            ).all()
        ids = [r.id for r in rows if _tagged(r.tags, tag)]
        if ids:
            async with engine.connect() as conn:
                conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
                async with conn.begin():
                    done = await conn.execute(delete(table).where(c.id.in_(ids)))
            removed += done.rowcount or 0
        if len(rows) < page:
            return removed
        after = rows[-1].id


async def prune_stored_responses(engine: AsyncEngine, now: datetime, batch: int = 5000) -> int:
    """Delete the stored responses expired by ``now`` (``ledger.responses_retention_days``
    after they were made), ``batch`` rows a transaction, oldest first. Returns how many."""
    table = stored_responses_table
    removed = 0
    while True:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                oldest = (
                    select(table.c.id)
                    .where(table.c.expires_at <= now)
                    .order_by(table.c.expires_at)
                    .limit(batch)
                    .scalar_subquery()
                )
                done = await conn.execute(delete(table).where(table.c.id.in_(oldest)))
        count = done.rowcount or 0
        removed += count
        if count < batch:
            return removed
        await asyncio.sleep(0)  # let requests in between batches


def retention(days: float, now: datetime | None = None) -> tuple[datetime, datetime]:
    """(created, expires) for a response stored now and kept ``days``."""
    created = now or datetime.now(UTC)
    return created, created + timedelta(days=days)
