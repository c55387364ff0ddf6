"""Budget alerts the gateway sent: claimed in the database before they are sent, so every
replica together sends each one once per budget period."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.records import as_utc
from gateway.ledger.schema import budget_alerts


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A key or team (``scope``, ``scope_id``) past ``threshold`` percent of its budget in
    the period that began at ``period_start``."""

    scope: str
    scope_id: str
    name: str
    period_start: datetime
    threshold: int
    spent_usd: Decimal
    budget_usd: Decimal
    sent_at: datetime | None = None
    delivered: bool = False


async def claim(engine: AsyncEngine, alert: BudgetAlert) -> bool:
    """Record ``alert`` as sent; False if it was already (by this or another replica)."""
    row = {
        "scope": alert.scope,
        "scope_id": alert.scope_id,
        "period_start": as_utc(alert.period_start),
        "threshold": alert.threshold,
        "name": alert.name,
        "spent_usd": alert.spent_usd,
        "budget_usd": alert.budget_usd,
        "sent_at": datetime.now(UTC),
        "delivered": False,
    }
    async with engine.begin() as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(budget_alerts).values(row).on_conflict_do_nothing()
        result = await conn.execute(stmt.returning(budget_alerts.c.scope))
        return result.first() is not None


async def mark_delivered(engine: AsyncEngine, alert: BudgetAlert) -> None:
    """The webhook accepted ``alert``."""
    a = budget_alerts.c
    async with engine.begin() as conn:
        await conn.execute(
            update(budget_alerts)
            .where(
                a.scope == alert.scope,
                a.scope_id == alert.scope_id,
                a.period_start == as_utc(alert.period_start),
                a.threshold == alert.threshold,
            )
            .values(delivered=True)
        )


async def alerts_since(engine: AsyncEngine, since: datetime) -> list[BudgetAlert]:
    """The alerts sent since ``since``, newest first."""
    a = budget_alerts.c
    query = select(budget_alerts).where(a.sent_at >= as_utc(since)).order_by(a.sent_at.desc())
    async with engine.connect() as conn:
        return [BudgetAlert(**row._mapping) for row in await conn.execute(query)]
