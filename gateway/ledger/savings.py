"""What the response cache saved: the hits in a period and what their answers cost when they
were produced. Read from the records themselves (hits are marked there); the daily roll-ups
hold spend only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.records import as_utc
from gateway.ledger.schema import spend_records


@dataclass(frozen=True, slots=True)
class CacheSavings:
    """Requests answered from the cache and the USD they would otherwise have cost (hits
    whose original cost was unknown count as hits, not as savings)."""

    cache_hits: int = 0
    saved_usd: Decimal = Decimal(0)


async def cache_savings(
    engine: AsyncEngine,
    since: datetime,
    until: datetime,
    key_id: str | None = None,
    team: str | None = None,
) -> CacheSavings:
    """The savings in ``[since, until)``, for one key or team if given."""
    r = spend_records.c
    query = select(func.count(), func.sum(r.saved_usd)).where(
        r.cache_hit.is_(True), r.started_at >= as_utc(since), r.started_at < as_utc(until)
    )
    if key_id is not None:
        query = query.where(r.key_id == key_id)
    if team is not None:
        query = query.where(r.team == team)
    async with engine.connect() as conn:
        hits, saved = (await conn.execute(query)).one()
    return CacheSavings(int(hits or 0), saved if isinstance(saved, Decimal) else Decimal(0))
