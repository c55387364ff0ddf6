"""Writing records: one transaction inserts a batch and adds it to the daily roll-ups.

Idempotent on ``request_id``: a record already stored (a batch retried after a commit whose
answer was lost) is skipped by ``ON CONFLICT DO NOTHING``, and only the rows the insert
*returned* are added to the roll-ups, so no table counts a request twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Date, case, cast, delete, func, literal, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.ledger.db import SQLITE_IMMEDIATE
from gateway.ledger.records import ERROR_STATUS, SpendRecord, quantize_cost
from gateway.ledger.schema import COUNTERS, ROLLUPS, dimensions, spend_attempts, spend_records
from gateway.ledger.storable import storable, storable_text

# ``attempt_log`` is stored as rows of ``spend_attempts``, not as a column.
RECORD_FIELDS = tuple(f.name for f in fields(SpendRecord) if f.name != "attempt_log")


@dataclass(slots=True)
class DailyTotals:
    """The sums one roll-up row adds for its (day, key, team, user, model, provider)."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    unknown_cost_requests: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, record: SpendRecord) -> None:
        if record.is_adjustment:  # a cost correction: no request, no tokens
            self.cost_usd += quantize_cost(record.cost_usd) or Decimal(0)
            self.unknown_cost_requests -= record.adjusted_cost_usd is None
            return
        self.requests += 1
        self.errors += record.is_error
        self.prompt_tokens += record.prompt_tokens
        self.cached_tokens += record.cached_tokens
        self.completion_tokens += record.completion_tokens
        self.reasoning_tokens += record.reasoning_tokens
        cost = quantize_cost(record.cost_usd)
        if cost is None:
            self.unknown_cost_requests += 1
        else:
            self.cost_usd += cost


def rollup_key(record: SpendRecord, dims: tuple[str, ...]) -> tuple[Any, ...]:
    return (record.day, *(getattr(record, d) or "" for d in dims))


def record_row(record: SpendRecord) -> dict[str, Any]:
    """The ``spend_records`` row of a record."""
    row = {name: getattr(record, name) for name in RECORD_FIELDS}
    row["tags"] = dict(record.tags)
    return row


def _insert(conn: AsyncConnection) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_*`` and ``excluded``."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert


async def write_batch(engine: AsyncEngine, records: Sequence[SpendRecord]) -> int:
    """Store ``records`` (made storable) and their roll-up in one transaction; return how
    many were new."""
    unique: dict[str, SpendRecord] = {}
    for record in records:
        unique.setdefault(record.request_id, storable(record))
    if not unique:
        return 0
    async with engine.connect() as conn:
        conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
        async with conn.begin():
            insert = _insert(conn)
            stmt = (
                insert(spend_records)
                .on_conflict_do_nothing(index_elements=[spend_records.c.request_id])
                .returning(spend_records.c.request_id)
            )
            result = await conn.execute(stmt, [record_row(r) for r in unique.values()])
            new = {row[0] for row in result}
            await add_to_daily(conn, (unique[rid] for rid in new))
            attempts = [row for rid in sorted(new) for row in attempt_rows(unique[rid])]
            if attempts:
                await conn.execute(spend_attempts.insert(), attempts)
    return len(new)


def attempt_rows(record: SpendRecord) -> list[dict[str, Any]]:
    """The ``spend_attempts`` rows of a record (only a new record's are stored, in the same
    transaction, so a retried batch never stores them twice)."""
    return [
        {
            "request_id": record.request_id,
            "seq": seq,
            "started_at": a.started_at,
            "deployment": storable_text(a.deployment),
            "provider": a.provider,
            "model": None if a.model is None else storable_text(a.model),
            "status": a.status,
            "error_type": None if a.error_type is None else storable_text(a.error_type),
            "latency_ms": a.latency_ms,
            "billed": a.billed,
        }
        for seq, a in enumerate(record.attempt_log)
    ]


async def add_to_daily(conn: AsyncConnection, records: Iterable[SpendRecord]) -> None:
    """Upsert the sums of ``records`` into each roll-up."""
    records = list(records)
    if not records:
        return
    for rollup in ROLLUPS:
        dims = dimensions(rollup)
        totals: dict[tuple[Any, ...], DailyTotals] = {}
        for record in records:
            totals.setdefault(rollup_key(record, dims), DailyTotals()).add(record)
        rows = []
        # Sorted, so concurrent writers lock roll-up rows in one order and cannot deadlock.
        for key in sorted(totals):
            sums = totals[key]
            row: dict[str, Any] = dict(zip(("day", *dims), key, strict=True))
            row.update({name: getattr(sums, name) for name in COUNTERS})
            row["cost_usd"] = sums.cost_usd
            rows.append(row)
        stmt = _insert(conn)(rollup)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(rollup.primary_key.columns),
            set_={name: rollup.c[name] + stmt.excluded[name] for name in (*COUNTERS, "cost_usd")},
        )
        await conn.execute(stmt, rows)


def record_sums() -> list[ColumnElement[Any]]:
    """SQL sums of raw records in the order of ``COUNTERS`` then ``cost_usd``. An adjustment
    adds its cost difference and, when it priced a record whose cost was unknown, takes that
    record out of ``unknown_cost_requests``; it is no request and has no tokens."""
    r = spend_records.c
    call = r.kind != "adjustment"
    return [
        func.sum(case((call, 1), else_=0)),
        func.sum(case((call & (r.status >= ERROR_STATUS), 1), else_=0)),
        func.sum(r.prompt_tokens),
        func.sum(r.cached_tokens),
        func.sum(r.completion_tokens),
        func.sum(r.reasoning_tokens),
        func.sum(
            case(
                (call & r.cost_usd.is_(None), 1),
                (~call & r.adjusted_cost_usd.is_(None), -1),
                else_=0,
            )
        ),
        func.coalesce(func.sum(r.cost_usd), 0),
    ]


def utc_day_expression(conn: AsyncConnection) -> ColumnElement[date]:
    """SQL for the UTC day of ``spend_records.started_at`` on this connection's database."""
    started = spend_records.c.started_at
    if conn.dialect.name == "postgresql":
        return cast(func.timezone("UTC", started), Date)
    return func.date(started, type_=Date)  # SQLite stores naive UTC text


async def rebuild_daily(engine: AsyncEngine, first_day: date, last_day: date) -> None:
    """Recompute the roll-ups of the days ``first_day``..``last_day`` (inclusive) from the
    records — after bulk loads, deletes for retention, or to repair them."""
    since = datetime.combine(first_day, time(), tzinfo=UTC)
    until = datetime.combine(last_day + timedelta(days=1), time(), tzinfo=UTC)
    r = spend_records.c
    async with engine.connect() as conn:
        conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                # Writers wait until the rebuilt days are committed: no batch is lost between
                # the delete and the insert, none is counted twice.
                names = ", ".join(rollup.name for rollup in ROLLUPS)
                await conn.execute(text(f"LOCK TABLE {names} IN SHARE ROW EXCLUSIVE MODE"))
            for rollup in ROLLUPS:
                await conn.execute(delete(rollup).where(rollup.c.day.between(first_day, last_day)))
                day = utc_day_expression(conn)
                dims: list[ColumnElement[Any]] = [
                    r.model if d == "model" else func.coalesce(r[d], literal(""))
                    for d in dimensions(rollup)
                ]
                query = (
                    select(
                        day,
                        *dims,
                        *record_sums(),
                    )
                    .where(r.started_at >= since, r.started_at < until)
                    .group_by(day, *dims)
                )
                columns = ["day", *dimensions(rollup), *COUNTERS, "cost_usd"]
                await conn.execute(
                    rollup.insert().from_select([rollup.c[c] for c in columns], query)
                )
