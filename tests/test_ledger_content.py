"""Records the database refuses for their content never stop the ledger: text is made
storable before it is written (NUL and lone surrogates become U+FFFD), a batch refused for
its content is split until the bad record stands alone, which is stored salvaged or set
aside, and ``/health/ready`` fails while the writer holds records it cannot write."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.config import LedgerConfig
from gateway.ledger.db import create_ledger_engine
from gateway.ledger.ledger import Ledger
from gateway.ledger.migrate import upgrade
from gateway.ledger.records import SpendRecord
from gateway.ledger.storable import SALVAGE_TAG, storable
from gateway.ledger.writer import LedgerWriter
from gateway.server import create_app
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, gateway_config
from tests.ledger_helpers import make_records, scratch_postgres

MASTER = {"authorization": f"Bearer {MASTER_KEY}"}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres() as url:
        yield url


async def all_records(url: str, wait: float = 10.0, at_least: int = 1) -> list[SpendRecord]:
    """Every record in the ledger at ``url``, waiting (bounded) until ``at_least`` are there."""
    ledger = Ledger(LedgerConfig(url=url, migrate=False))
    try:
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            page = await ledger.spend_records(
                datetime.now(UTC) - timedelta(hours=1),
                datetime.now(UTC) + timedelta(hours=1),
                limit=10_000,
            )
            if len(page.records) >= at_least or asyncio.get_running_loop().time() > deadline:
                return page.records
            await asyncio.sleep(0.05)
    finally:
        await ledger.engine.dispose()


# -- through the proxy -----------------------------------------------------------------------


async def test_a_nul_in_user_or_metadata_is_stored_replaced_and_holds_up_no_record(
    postgres_url, openai_emu, tmp_path
):
    config = gateway_config(openai_emu.url, tmp_path / "unused.db")
    config["ledger"] = {"url": postgres_url, "flush_interval": 0.02, "batch_size": 10}
    with ServerThread(create_app(config)) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=MASTER, timeout=10) as client:
            nul = await client.post(
                "/v1/chat/completions",
                json={
                    "model": "gpt-4o",
                    "messages": HELLO,
                    "user": "alice\u0000",
                    "metadata": {"project\u0000": "x\u0000y"},
                },
            )
            assert nul.status_code == 200
            others = [
                await client.post(
                    "/v1/chat/completions", json={"model": "gpt-4o", "messages": HELLO}
                )
                for _ in range(5)
            ]
            assert {r.status_code for r in others} == {200}
            records = await all_records(postgres_url, at_least=6)
            ready = await client.get("/health/ready")
            detail = (await client.get("/health/ready")).json()["checks"]["ledger"]

    by_id = {r.request_id: r for r in records}
    assert set(by_id) == {r.headers["x-request-id"] for r in [nul, *others]}
    stored = by_id[nul.headers["x-request-id"]]
    assert stored.end_user == "alice\ufffd"
    assert stored.tags["project\ufffd"] == "x\ufffdy"
    assert ready.status_code == 200
    assert (detail["backlog"], detail["rejected"], detail["failing"]) == (0, 0, False)


def test_ready_fails_while_the_ledger_writer_cannot_write(openai_emu, tmp_path):
    """Another process holds SQLite's write lock: the database still answers a ping, but no
    record can be written; past ``ledger.stuck_after`` the replica is not ready, and is
    again once the records are written."""
    db = tmp_path / "ledger.db"
    config = gateway_config(openai_emu.url, db)
    config["ledger"].update({"stuck_after": 0.3, "url": f"sqlite+aiosqlite:///{db}?timeout=0.05"})
    with ServerThread(create_app(config)) as server:
        client = httpx.Client(base_url=server.url, headers=MASTER, timeout=10)
        assert client.get("/health/ready").status_code == 200
        lock = sqlite3.connect(str(db), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            answer = client.post(
                "/v1/chat/completions", json={"model": "gpt-4o", "messages": HELLO}
            )
            assert answer.status_code == 200
            ready = wait_for_status(client, 503)
            body = ready.json()
            assert body["failing"] == ["ledger"]
            assert "without writing any" in body["reasons"][0]
            assert body["checks"]["database"]["ok"] is True  # the ping alone would say ready
        finally:
            lock.execute("COMMIT")
            lock.close()
        ready = wait_for_status(client, 200)
        assert ready.json()["checks"]["ledger"]["backlog"] == 0


def wait_for_status(client: httpx.Client, status: int, seconds: float = 10.0) -> httpx.Response:
    """Poll ``/health/ready`` (bounded) until it answers ``status``."""
    deadline = time.monotonic() + seconds
    while True:
        response = client.get("/health/ready")
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        time.sleep(0.05)


# -- the writer on PostgreSQL ----------------------------------------------------------------


@pytest.fixture
async def pg_engine(postgres_url: str) -> AsyncIterator[Any]:
    await upgrade(postgres_url)
    engine = create_ledger_engine(postgres_url)
    yield engine
    await engine.dispose()


async def stored_ids(engine: Any, prefix: str) -> dict[str, SpendRecord]:
    from gateway.ledger.reports import spend_records

    page = await spend_records(
        engine,
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
        limit=10_000,
    )
    return {r.request_id: r for r in page.records if r.request_id.startswith(prefix)}


async def test_a_record_postgresql_refuses_for_its_content_is_set_aside_alone(pg_engine, caplog):
    """A cost past the column's range is a data error (SQLSTATE 22003), not an outage: the
    other 39 records of its batch are written at once, the bad one is counted and logged."""
    caplog.set_level(logging.WARNING, logger="gateway.ledger")
    records = make_records(40, prefix="overflow")
    bad = records[17]
    bad.cost_usd = Decimal("1e15")
    writer = LedgerWriter(pg_engine, batch_size=40, retry_initial=0.02, retry_max=0.1)
    writer.start()
    try:
        for record in records:
            writer.submit(record)
        async with asyncio.timeout(10):
            await writer.flush()
        assert set(await stored_ids(pg_engine, "overflow")) == {
            r.request_id for r in records if r is not bad
        }
        assert (writer.written, writer.rejected, writer.backlog) == (39, 1, 0)
        assert f"{bad.request_id} refused by the database and not stored (1 rejected" in (
            caplog.text
        )
    finally:
        await writer.aclose()


async def test_tags_the_database_cannot_take_are_replaced_by_a_note_and_the_record_kept(
    pg_engine, caplog
):
    caplog.set_level(logging.WARNING, logger="gateway.ledger")
    records = make_records(10, prefix="salvage")
    bad = records[4]
    bad.tags = {"when": datetime.now(UTC)}  # a library caller's metadata: not JSON
    writer = LedgerWriter(pg_engine, batch_size=10, retry_initial=0.02, retry_max=0.1)
    writer.start()
    try:
        for record in records:
            writer.submit(record)
        async with asyncio.timeout(10):
            await writer.flush()
        stored = await stored_ids(pg_engine, "salvage")
        assert len(stored) == 10
        assert set(stored[bad.request_id].tags) == {SALVAGE_TAG}
        assert stored[bad.request_id].cost_usd == bad.cost_usd
        assert (writer.written, writer.salvaged, writer.rejected) == (10, 1, 0)
        assert f"{bad.request_id} stored without its tags" in caplog.text
    finally:
        await writer.aclose()


async def test_lone_surrogates_and_nul_anywhere_in_a_record_are_stored_replaced(pg_engine):
    """The library takes any str, lone surrogates included (no JSON parser in between)."""
    record = make_records(1, prefix="surrogate")[0]
    record.end_user = "\ud800user\x00"
    record.team = "team\udfff"
    record.tags = {"k\ud83d": ["\x00", {"x": "\udc00"}], "n": float("nan")}
    writer = LedgerWriter(pg_engine, retry_initial=0.02, retry_max=0.1)
    writer.start()
    try:
        writer.submit(record)
        async with asyncio.timeout(10):
            await writer.flush()
    finally:
        await writer.aclose()
    stored = (await stored_ids(pg_engine, "surrogate"))[record.request_id]
    assert (stored.end_user, stored.team) == ("\ufffduser\ufffd", "team\ufffd")
    assert stored.tags == {"k\ufffd": ["\ufffd", {"x": "\ufffd"}], "n": "nan"}
    assert writer.rejected == writer.salvaged == 0


def test_a_storable_record_is_passed_through_unchanged():
    record = make_records(1)[0]
    assert storable(record) is record
