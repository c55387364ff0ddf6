"""Retention: each kind of data the gateway keeps is deleted after its own period, off the
request path.

- spend records (``ledger.retention_days``): the per-request rows of whole UTC days older than
  the period are deleted; the daily roll-ups stay, so reports, budgets and invoices over old
  periods still add up (a report reads whole days from the roll-ups);
- stored Responses API answers (``ledger.responses_retention_days``, default 30): each row
  once its own ``expires_at`` has passed (it is not read any more from then on);
- the audit trail (``ledger.audit_retention_days``, default: kept for ever): oldest entries
  first; the oldest entry kept then anchors the chain.

Deletes run in small batches, each its own short transaction (by primary key, oldest first,
through the ``started_at`` index), in a background task every ``ledger.retention_interval``
seconds: no long lock, no request waits on it. Every worker may run it; a batch another
worker already deleted is simply empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import LedgerConfig
from gateway.governance.audit import AuditTrail
from gateway.ledger.db import SQLITE_IMMEDIATE
from gateway.ledger.responses import prune_stored_responses
from gateway.ledger.schema import spend_records
from gateway.ledger.writer import describe

log = logging.getLogger("gateway.governance.retention")


def day_cutoff(days: int, now: datetime | None = None) -> datetime:
    """The start (UTC midnight) of the oldest whole day kept: ``days`` days back from today."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return datetime.combine(today - timedelta(days=days), time(), tzinfo=UTC)


async def prune_spend_records(engine: AsyncEngine, before: datetime, batch: int = 5000) -> int:
    """Delete the spend records that started before ``before``, oldest first, ``batch`` rows a
    transaction; the roll-ups are left as they are. Returns how many were deleted."""
    table = spend_records
    removed = 0
    while True:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                oldest = (
                    select(table.c.request_id)
                    .where(table.c.started_at < before)
                    .order_by(table.c.started_at)
                    .limit(batch)
                    .scalar_subquery()
                )
                done = await conn.execute(delete(table).where(table.c.request_id.in_(oldest)))
        count = done.rowcount or 0
        removed += count
        if count < batch:
            return removed
        await asyncio.sleep(0)  # let requests in between batches


@dataclass(slots=True)
class Pruned:
    spend_records: int = 0
    audit_entries: int = 0
    stored_responses: int = 0


class RetentionTask:
    """Applies the ledger's retention settings now (``run_once``) or periodically (``start``)."""

    def __init__(self, engine: AsyncEngine, config: LedgerConfig) -> None:
        self.engine = engine
        self.config = config
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def configured(self) -> bool:
        # Stored responses always expire (``responses_retention_days`` has a default).
        return True

    async def run_once(self, now: datetime | None = None) -> Pruned:
        c = self.config
        out = Pruned()
        if c.retention_days is not None:
            cutoff = day_cutoff(c.retention_days, now)
            out.spend_records = await prune_spend_records(self.engine, cutoff, c.retention_batch)
        if c.audit_retention_days is not None:
            cutoff = (now or datetime.now(UTC)) - timedelta(days=c.audit_retention_days)
            out.audit_entries = await AuditTrail(self.engine).prune(cutoff, c.retention_batch)
        out.stored_responses = await prune_stored_responses(
            self.engine, now or datetime.now(UTC), c.retention_batch
        )
        if out.spend_records or out.audit_entries or out.stored_responses:
            log.info(
                "retention: deleted %d spend records, %d audit entries and %d stored responses",
                out.spend_records,
                out.audit_entries,
                out.stored_responses,
            )
        return out

    def start(self) -> None:
        if self.configured and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # the database away: try again next round
                log.warning("retention: this round failed: %s", describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.retention_interval)

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
