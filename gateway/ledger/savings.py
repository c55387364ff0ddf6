"""What the response cache and batch jobs saved: the hits in a period and what their answers
cost when they were produced; the batch lines, their cost and what they would have cost at
live prices. Read from the records themselves (hits and batch lines are marked there); the
daily roll-ups hold spend only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.records import as_utc
from gateway.ledger.schema import spend_records


@dataclass(frozen=True, slots=True)
class CacheSavings:
    """Requests answered from the cache and the USD they would otherwise have cost (hits
    whose original cost was unknown count as hits, not as savings); batch lines, what they
    cost, and what they saved against live prices."""

    cache_hits: int = 0
    saved_usd: Decimal = Decimal(0)
    batch_requests: int = 0
    batch_cost_usd: Decimal = Decimal(0)
    batch_saved_usd: Decimal = Decimal(0)


async def cache_savings(
    engine: AsyncEngine,
    since: datetime,
    until: datetime,
    key_id: str | None = None,
    team: str | None = None,
) -> CacheSavings:
    """The savings in ``[since, until)``, for one key or team if given."""
    r = spend_records.c
    call = r.kind == "call"  # an adjustment re-prices a record: its cost counts, not its row
    hit = r.cache_hit.is_(True) & call
    batch = r.operation == "batch"
    query = select(
        func.count().filter(hit),
        func.sum(case((hit, r.saved_usd))),
        func.count().filter(batch & call),
        func.sum(case((batch, r.cost_usd))),
        func.sum(case((batch & call, r.saved_usd))),
    ).where(
        r.cache_hit.is_(True) | batch, r.started_at >= as_utc(since), r.started_at < as_utc(until)
    )
    if key_id is not None:
        query = query.where(r.key_id == key_id)
    if team is not None:
        query = query.where(r.team == team)
    async with engine.connect() as conn:
        hits, saved, lines, cost, batch_saved = (await conn.execute(query)).one()
    return CacheSavings(int(hits or 0), _usd(saved), int(lines or 0), _usd(cost), _usd(batch_saved))


def _usd(value: object) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(0)
