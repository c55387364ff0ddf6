"""When keys were last used: the newest record of each, read from the ledger when asked (one
grouped query on the key/time index), so a request writes nothing beyond its own record."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.records import as_utc
from gateway.ledger.schema import spend_records

CHUNK = 500  # ids per query: well under every database's limit on bound parameters


async def last_used(engine: AsyncEngine, key_ids: Collection[str]) -> dict[str, datetime]:
    """The start of each key's newest call; keys never used are left out."""
    r = spend_records.c
    ids = sorted(set(key_ids))
    out: dict[str, datetime] = {}
    async with engine.connect() as conn:
        for start in range(0, len(ids), CHUNK):
            query = (
                select(r.key_id, func.max(r.started_at))
                .where(r.key_id.in_(ids[start : start + CHUNK]), r.kind == "call")
                .group_by(r.key_id)
            )
            for key_id, newest in await conn.execute(query):
                if key_id is not None and newest is not None:
                    out[key_id] = as_utc(newest)
    return out
