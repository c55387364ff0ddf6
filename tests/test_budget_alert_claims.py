"""Budget alerts are claimed in the ledger before they are sent: once per key or team,
threshold and budget period, whichever replica sees it first (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.ledger.alerts import BudgetAlert, alerts_since, claim, mark_delivered
from gateway.ledger.db import create_ledger_engine
from gateway.ledger.migrate import upgrade
from tests.ledger_helpers import scratch_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    with scratch_postgres() as url:
        yield url


async def test_an_alert_is_claimed_once_per_period_across_replicas(ledger_url: str) -> None:
    await upgrade(ledger_url)
    engines = [create_ledger_engine(ledger_url) for _ in range(3)]  # three replicas
    try:
        day = datetime(2026, 12, 4, tzinfo=UTC)
        alert = BudgetAlert("key", "k1", "night-batch", day, 80, Decimal("8"), Decimal("10"))
        won = await asyncio.gather(*(claim(e, alert) for e in engines))
        assert sorted(won) == [False, False, True]
        next_day = BudgetAlert(
            "key", "k1", "night-batch", day + timedelta(days=1), 80, Decimal("8"), Decimal("10")
        )
        assert await claim(engines[0], next_day)  # a new period: announced again
        await mark_delivered(engines[0], alert)
        sent = await alerts_since(engines[0], day - timedelta(days=1))
        assert {(a.period_start, a.delivered) for a in sent} == {
            (day, True),
            (day + timedelta(days=1), False),
        }
    finally:
        for e in engines:
            await e.dispose()
