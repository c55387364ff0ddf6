"""Retention on SQLite and PostgreSQL: old spend records go in small batches while the daily
roll-ups — and so every report over old periods — stay; old audit entries go oldest first;
and the server runs it in the background."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from gateway.config import LedgerConfig
from gateway.governance.retention import RetentionTask, day_cutoff, prune_spend_records
from gateway.ledger.db import create_ledger_engine
from gateway.ledger.migrate import upgrade
from gateway.ledger.reports import spend_report
from gateway.ledger.responses import (
    DatabaseResponseStore,
    Owner,
    StoredResponse,
    stored_responses_table,
)
from gateway.ledger.schema import spend_daily, spend_records
from gateway.ledger.store import write_batch
from gateway.server import create_app
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, gateway_config
from tests.ledger_helpers import DAY0, make_records, scratch_postgres

EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    with scratch_postgres() as pg:
        yield pg


@pytest.fixture
async def engine(url: str) -> AsyncIterator[Any]:
    await upgrade(url)
    eng = create_ledger_engine(url)
    yield eng
    await eng.dispose()


async def count(engine: Any, table: Any = spend_records) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


def totals(rows: Any) -> dict[str, Any]:
    return {r.group: (r.requests, r.cost_usd, r.prompt_tokens) for r in rows}


async def test_old_records_go_in_batches_and_reports_over_old_days_stay_right(engine):
    records = make_records(300, start=DAY0, span=timedelta(days=4))
    await write_batch(engine, records)
    before = {g: totals(await spend_report(engine, g, *EVER)) for g in ("key", "model", "user")}
    daily = await count(engine, spend_daily)

    now = DAY0 + timedelta(days=3, hours=12)
    cutoff = day_cutoff(2, now)
    assert cutoff == DAY0 + timedelta(days=1)
    old = sum(1 for r in records if r.started_at < cutoff)
    assert 0 < old < len(records)
    task = RetentionTask(engine, LedgerConfig(retention_days=2, retention_batch=7))
    pruned = await task.run_once(now)

    assert pruned.spend_records == old
    assert await count(engine) == len(records) - old
    async with engine.connect() as conn:
        oldest = (await conn.execute(select(func.min(spend_records.c.started_at)))).scalar_one()
    assert oldest.replace(tzinfo=UTC) >= cutoff
    assert await count(engine, spend_daily) == daily  # the roll-ups are untouched
    after = {g: totals(await spend_report(engine, g, *EVER)) for g in ("key", "model", "user")}
    assert after == before
    assert (await task.run_once(now)).spend_records == 0  # nothing left to do


async def test_prune_deletes_only_before_the_cutoff(engine):
    records = make_records(40, start=DAY0, span=timedelta(days=2))
    await write_batch(engine, records)
    cutoff = DAY0 + timedelta(days=1)
    assert await prune_spend_records(engine, cutoff, batch=1000) == sum(
        1 for r in records if r.started_at < cutoff
    )
    assert await count(engine) == sum(1 for r in records if r.started_at >= cutoff)


def test_the_server_prunes_in_the_background(
    openai_upstream: OpenAIEmulator, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    url = f"sqlite+aiosqlite:///{db}"
    old = make_records(25, start=datetime.now(UTC) - timedelta(days=40), span=timedelta(days=2))

    async def seed() -> None:
        await upgrade(url)
        eng = create_ledger_engine(url)
        await write_batch(eng, old)
        await eng.dispose()

    asyncio.run(seed())
    config = gateway_config(openai_upstream.url, db)
    config["ledger"].update(retention_days=30, retention_interval=0.05)
    with ServerThread(create_app(config)) as server:
        response = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {MASTER_KEY}"},
            timeout=10,
        )
        assert response.status_code == 200
        deadline = time.monotonic() + 10

        async def remaining() -> int:
            eng = create_ledger_engine(url)
            try:
                return await count(eng)
            finally:
                await eng.dispose()

        left = asyncio.run(remaining())
        while left != 1 and time.monotonic() < deadline:  # only today's request is kept
            time.sleep(0.05)
            left = asyncio.run(remaining())
    assert left == 1


async def store_responses(engine: Any, expiring: list[datetime]) -> None:
    store = DatabaseResponseStore(engine)
    for n, expires in enumerate(expiring):
        item = {"type": "message", "role": "user", "content": f"text {n}"}
        stored = StoredResponse(f"resp_{n:04d}", None, [item], {"id": f"resp_{n:04d}"})
        await store.save(Owner("key-1"), stored, expires - timedelta(days=30), expires)


async def test_expired_stored_responses_go_in_batches(engine):
    now = DAY0 + timedelta(days=40)
    expiring = [now - timedelta(hours=n + 1) for n in range(30)]
    expiring += [now + timedelta(hours=n + 1) for n in range(5)]
    await store_responses(engine, expiring)

    task = RetentionTask(engine, LedgerConfig(retention_batch=7))
    pruned = await task.run_once(now)

    assert pruned.stored_responses == 30
    assert await count(engine, stored_responses_table) == 5
    async with engine.connect() as conn:
        soonest = (
            await conn.execute(select(func.min(stored_responses_table.c.expires_at)))
        ).scalar_one()
    assert soonest.replace(tzinfo=UTC) > now
    assert (await task.run_once(now)).stored_responses == 0  # nothing left to do


def test_the_server_deletes_expired_stored_responses_in_the_background(
    openai_upstream: OpenAIEmulator, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    url = f"sqlite+aiosqlite:///{db}"
    now = datetime.now(UTC)

    async def on_disk(action: Any) -> Any:
        eng = create_ledger_engine(url)
        try:
            return await action(eng)
        finally:
            await eng.dispose()

    async def seed(eng: Any) -> None:
        await store_responses(eng, [now - timedelta(days=1)] * 20 + [now + timedelta(days=1)])

    async def remaining(eng: Any) -> int:
        return await count(eng, stored_responses_table)

    asyncio.run(upgrade(url))
    asyncio.run(on_disk(seed))
    config = gateway_config(openai_upstream.url, db)
    config["ledger"].update(retention_interval=0.05)  # no other retention setting
    # No request is made: nothing on the request path deletes them, only the background task.
    with ServerThread(create_app(config)):
        deadline = time.monotonic() + 10
        left = asyncio.run(on_disk(remaining))
        while left != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            left = asyncio.run(on_disk(remaining))
    assert left == 1
