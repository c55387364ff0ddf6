"""``Ledger``: one gateway process's spend ledger — its database, schema, writer and reports."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import LedgerConfig
from gateway.errors import GatewayError
from gateway.ledger.db import create_ledger_engine, ledger_url
from gateway.ledger.filters import RecordFilter, recent_records
from gateway.ledger.last_used import last_used
from gateway.ledger.migrate import upgrade
from gateway.ledger.records import SpendRecord
from gateway.ledger.reports import (
    GroupBy,
    RecordPage,
    SpendRow,
    scope_spend,
    spend_records,
    spend_report,
)
from gateway.ledger.savings import CacheSavings, cache_savings
from gateway.ledger.writer import LedgerWriter

# How long a report waits for this process's writer to store what it holds, so it includes
# the requests just answered; past that (database slow or down) it reads what is there.
CATCH_UP_SECONDS = 1.0


def ledger_disabled() -> GatewayError:
    """The answer when spend is asked for and the ledger is off (404)."""
    return GatewayError(
        "the spend ledger is disabled (ledger.enabled: false), so there is no spend "
        "to report; enable it in the config to record requests from then on",
        status=404,
        type="invalid_request_error",
        code="ledger_disabled",
    )


class Ledger:
    """Built from the ``ledger:`` config section; ``start`` migrates the schema and starts the
    writer, ``submit`` records a request without waiting, ``aclose`` writes what is held."""

    def __init__(self, config: LedgerConfig, *, engine: AsyncEngine | None = None) -> None:
        self.config = config
        self._url = ledger_url(config.url).render_as_string(hide_password=False)
        self.engine = engine or create_ledger_engine(self._url)
        self.writer = LedgerWriter(
            self.engine,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
            queue_size=config.queue_size,
            overflow_size=config.overflow_size,
            shutdown_timeout=config.shutdown_timeout,
        )

    async def start(self) -> None:
        """Bring the schema up to date (if ``migrate``) and start writing in the background.
        Raises if the database cannot be reached or migrated: better not to start at all than
        to serve requests whose spend cannot be recorded."""
        if self.config.migrate:
            await upgrade(self._url)
        self.writer.start()

    def submit(self, record: SpendRecord) -> None:
        """Record one finished request (O(1); never blocks or raises)."""
        self.writer.submit(record)

    async def spend_report(
        self,
        group_by: GroupBy,
        since: datetime,
        until: datetime,
        key_id: str | None = None,
        *,
        team: str | None = None,
    ) -> list[SpendRow]:
        return await spend_report(self.engine, group_by, since, until, key_id, team=team)

    async def spend_records(
        self,
        since: datetime,
        until: datetime,
        key_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        filters: RecordFilter | None = None,
    ) -> RecordPage:
        return await spend_records(self.engine, since, until, key_id, limit, cursor, filters)

    async def recent_records(
        self,
        since: datetime,
        until: datetime,
        filters: RecordFilter,
        limit: int = 50,
        before: tuple[datetime, str] | None = None,
    ) -> list[SpendRecord]:
        """The newest calls that pass ``filters``, newest first, with their attempts."""
        return await recent_records(self.engine, since, until, filters, limit, before)

    async def cache_savings(
        self,
        since: datetime,
        until: datetime,
        key_id: str | None = None,
        *,
        team: str | None = None,
    ) -> CacheSavings:
        """What the response cache saved in ``[since, until)`` (for one key or team)."""
        return await cache_savings(self.engine, since, until, key_id, team)

    async def last_used(self, key_ids: Collection[str]) -> dict[str, datetime]:
        """When each of ``key_ids`` was last used (its newest call); unused keys left out."""
        return await last_used(self.engine, key_ids)

    async def scope_spend(
        self, kind: Literal["key", "team"], ident: str, since: datetime
    ) -> Decimal:
        """What a key or team (by id) has spent since ``since``, by the ledger."""
        until = datetime.now(UTC) + timedelta(minutes=1)
        return await scope_spend(self.engine, kind, ident, since, until)

    async def caught_up(self, seconds: float = CATCH_UP_SECONDS) -> None:
        """Wait (at most ``seconds``) until this process's writer has stored what it
        holds, so a report includes the requests just answered. Other replicas' records
        appear within their ``flush_interval``."""
        try:
            async with asyncio.timeout(seconds):
                await self.writer.flush()
        except (TimeoutError, RuntimeError):
            pass  # database slow or down, or the writer stopped: report what is stored

    def status(self) -> dict[str, Any]:
        """The writer's state, for metrics and health: backlog, losses, last error, latency."""
        w = self.writer
        return {
            "running": w.running,
            "backlog": w.backlog,
            "written": w.written,
            "duplicates": w.duplicates,
            "dropped": w.dropped,
            "rejected": w.rejected,
            "salvaged": w.salvaged,
            "stalled_seconds": round(w.stalled_seconds, 3),
            "failing": w.failing,
            "last_error": w.last_error,
            "last_write_seconds": w.last_write_seconds,
        }

    async def aclose(self) -> None:
        """Write what is held (within ``shutdown_timeout``), then close the connections."""
        try:
            await self.writer.aclose()
        finally:
            await self.engine.dispose()
