"""Adjusting recorded costs: when a record was priced from a wrong figure, a new row of kind
``adjustment`` corrects it, and the record itself is never edited.

An adjustment carries the difference to the cost in force (the record's, plus earlier
adjustments') in ``cost_usd`` and that cost in ``adjusted_cost_usd`` (None: it was unknown), on
the record's own day, key, team, model and provider, so every report sums to the corrected
cost and counts a request whose cost became known as known.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.records import SpendRecord, as_utc, quantize_cost
from gateway.ledger.schema import spend_records
from gateway.ledger.store import write_batch


@dataclass(slots=True)
class Priced:
    """A record as it stands: its cost in force (None: unknown) after earlier adjustments."""

    record: SpendRecord
    cost: Decimal | None


@dataclass(frozen=True, slots=True)
class NewPrice:
    """What a record costs at today's prices, and which entry says so."""

    cost: Decimal
    family: str | None
    model: str | None
    source: str | None
    effective: str | None


async def records_to_reprice(
    engine: AsyncEngine, since: datetime, until: datetime, model: str | None = None
) -> list[Priced]:
    """The call records in ``[since, until)`` (of a public, answering or pricing ``model``),
    each with the cost its adjustments leave in force."""
    r = spend_records.c
    query = select(spend_records).where(
        r.started_at >= as_utc(since), r.started_at < as_utc(until), r.kind == "call"
    )
    if model is not None:
        query = query.where(
            or_(r.model == model, r.upstream_model == model, r.price_model == model)
        )
    async with engine.connect() as conn:
        records = [SpendRecord(**row._mapping) for row in await conn.execute(query)]
        deltas: dict[str, list[Decimal]] = {}
        ids = [rec.request_id for rec in records]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            adjustments = select(r.adjusts, r.cost_usd).where(
                r.kind == "adjustment", r.adjusts.in_(chunk)
            )
            for adjusts, cost in await conn.execute(adjustments):
                deltas.setdefault(adjusts, []).append(cost or Decimal(0))
    out = []
    for rec in records:
        changes = deltas.get(rec.request_id)
        if changes is None:
            out.append(Priced(rec, rec.cost_usd))
        else:
            out.append(Priced(rec, (rec.cost_usd or Decimal(0)) + sum(changes, Decimal(0))))
    return out


def adjustment(priced: Priced, new: NewPrice, now: datetime | None = None) -> SpendRecord | None:
    """The row that brings ``priced`` to ``new``; None when the cost in force is right."""
    target = quantize_cost(new.cost)
    current = quantize_cost(priced.cost)
    if target is None or target == current:
        return None
    original = priced.record
    return replace(
        original,
        request_id=f"{original.request_id}:adj:{uuid.uuid4().hex[:12]}",
        finished_at=now or datetime.now(UTC),  # when the adjustment was made
        latency_ms=0.0,
        ttft_ms=None,
        tags=dict(original.tags),
        prompt_tokens=0,
        cached_tokens=0,
        completion_tokens=0,
        reasoning_tokens=0,
        cost_usd=target - (current or Decimal(0)),
        cost_note="re-priced at "
        + (f"{new.family}/{new.model}" if new.family else "the current catalog")
        + (f" ({new.source}, {new.effective})" if new.source or new.effective else ""),
        price_family=new.family,
        price_model=new.model,
        price_source=new.source,
        price_effective=new.effective,
        kind="adjustment",
        adjusts=original.request_id,
        adjusted_cost_usd=current,
        content=None,  # the call's prompt and answer stay on the call's own record
        attempt_log=(),
    )


async def write_adjustments(engine: AsyncEngine, rows: Sequence[SpendRecord]) -> int:
    """Store adjustment rows and add them to the roll-ups; returns how many were written."""
    written = 0
    for start in range(0, len(rows), 500):
        written += await write_batch(engine, rows[start : start + 500])
    return written
