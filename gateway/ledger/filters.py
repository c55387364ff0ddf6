"""Which records a caller wants to see: the filters of ``GET /v1/spend/records``, the
dashboard's Logs page and ``llm-gateway logs``, and the attempts behind those records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import Select, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.records import ERROR_STATUS, AttemptEntry, SpendRecord, as_utc
from gateway.ledger.schema import spend_attempts
from gateway.ledger.schema import spend_records as records_table

StatusFilter = Literal["ok", "error"] | int


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Conditions a record must meet; None means any. ``deployment`` matches a record any
    of whose attempts went to it, not only the one that answered; ``status`` is ``ok``,
    ``error`` or one HTTP status; ``cost_above`` keeps known costs above the amount."""

    key_id: str | None = None
    team: str | None = None
    model: str | None = None
    deployment: str | None = None
    status: StatusFilter | None = None
    cost_above: Decimal | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        r = records_table.c
        if self.key_id is not None:
            query = query.where(r.key_id == self.key_id)
        if self.team is not None:
            query = query.where(r.team == self.team)
        if self.model is not None:
            query = query.where(r.model == self.model)
        if self.deployment is not None:
            a = spend_attempts.c
            tried = exists().where(a.request_id == r.request_id, a.deployment == self.deployment)
            query = query.where(or_(r.deployment == self.deployment, tried))
        if self.status == "ok":
            query = query.where(r.status < ERROR_STATUS)
        elif self.status == "error":
            query = query.where(r.status >= ERROR_STATUS)
        elif isinstance(self.status, int):
            query = query.where(r.status == self.status)
        if self.cost_above is not None:
            query = query.where(r.cost_usd > self.cost_above)
        return query


async def recent_records(
    engine: AsyncEngine,
    since: datetime,
    until: datetime,
    filters: RecordFilter = RecordFilter(),
    limit: int = 50,
    before: tuple[datetime, str] | None = None,
) -> list[SpendRecord]:
    """The newest calls in ``[since, until)`` that pass ``filters``, newest first, each with
    its attempts; ``before`` (started_at, request_id) continues after an earlier page."""
    r = records_table.c
    query = select(records_table).where(
        r.started_at >= as_utc(since), r.started_at < as_utc(until), r.kind == "call"
    )
    if before is not None:
        moment, request_id = before
        query = query.where(
            or_(
                r.started_at < as_utc(moment),
                (r.started_at == as_utc(moment)) & (r.request_id < request_id),
            )
        )
    query = filters.apply(query).order_by(r.started_at.desc(), r.request_id.desc()).limit(limit)
    async with engine.connect() as conn:
        records = [SpendRecord(**row._mapping) for row in await conn.execute(query)]
    return await with_attempts(engine, records)


async def with_attempts(engine: AsyncEngine, records: list[SpendRecord]) -> list[SpendRecord]:
    """``records`` with their ``attempt_log`` read from ``spend_attempts``."""
    found = await attempts_of(engine, (r.request_id for r in records))
    for record in records:
        record.attempt_log = tuple(found.get(record.request_id, ()))
    return records


async def attempts_of(
    engine: AsyncEngine, request_ids: Iterable[str]
) -> dict[str, list[AttemptEntry]]:
    """The stored attempts of each request, in order."""
    ids = list(dict.fromkeys(request_ids))
    out: dict[str, list[AttemptEntry]] = {}
    if not ids:
        return out
    a = spend_attempts.c
    query = select(spend_attempts).where(a.request_id.in_(ids)).order_by(a.request_id, a.seq)
    async with engine.connect() as conn:
        for row in await conn.execute(query):
            m = row._mapping
            out.setdefault(m["request_id"], []).append(
                AttemptEntry(
                    deployment=m["deployment"],
                    started_at=m["started_at"],
                    latency_ms=m["latency_ms"],
                    provider=m["provider"],
                    model=m["model"],
                    status=m["status"],
                    error_type=m["error_type"],
                    billed=m["billed"],
                )
            )
    return out
