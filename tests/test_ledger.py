"""The spend ledger on SQLite and on a real PostgreSQL: migrations, the batching writer (also
through database outages and a full queue), exact costs, idempotency, reports and pages."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import gateway.batch.store  # (its tables join the ledger's metadata)
import gateway.governance.audit  # its table joins the ledger's metadata
import gateway.keys
import gateway.ledger.responses  # noqa: F401  (its table joins the ledger's metadata)
from gateway.config import LedgerConfig, load_config
from gateway.errors import ConfigError
from gateway.ledger.db import create_ledger_engine, ledger_url
from gateway.ledger.ledger import Ledger
from gateway.ledger.migrate import HEAD, current_revision, head_revision, upgrade
from gateway.ledger.records import SpendRecord, token_counts
from gateway.ledger.reports import (
    MAX_PAGE,
    SpendRow,
    export_records_csv,
    plan_range,
    report_csv,
    spend_records,
    spend_report,
)
from gateway.ledger.schema import ROLLUPS, metadata, spend_daily
from gateway.ledger.schema import spend_records as records_table
from gateway.ledger.store import rebuild_daily, record_row, write_batch
from gateway.ledger.writer import LedgerWriter
from tests.conftest import service_missing
from tests.ledger_helpers import (
    DAY0,
    POSTGRES_ADMIN_DSN,
    TcpProxy,
    expected_report,
    make_records,
    postgres,
    scratch_database_name,
    with_database,
)

EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
GROUPINGS = ["key", "team", "user", "model", "provider", "day"]


# -- databases ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_db() -> Iterator[str]:
    """A scratch database on the test PostgreSQL (GATEWAY_TEST_POSTGRES_URL, default
    postgres@127.0.0.1:5432), created for this session and dropped after it."""
    name = scratch_database_name()
    try:
        postgres(POSTGRES_ADMIN_DSN, f'CREATE DATABASE "{name}"')
    except Exception as exc:
        where = make_url(POSTGRES_ADMIN_DSN).render_as_string(hide_password=True)
        service_missing(f"PostgreSQL is not usable at {where}: {exc!r}")
    yield with_database(POSTGRES_ADMIN_DSN, name)
    postgres(POSTGRES_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_db")
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    postgres(dsn, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """The database, migrated."""
    await upgrade(db_url)
    engine = create_ledger_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def writers() -> AsyncIterator[Callable[..., LedgerWriter]]:
    """Make started writers (fast retries) that are closed after the test."""
    made: list[LedgerWriter] = []

    def make(engine: AsyncEngine, *, start: bool = True, **options: Any) -> LedgerWriter:
        writer = LedgerWriter(engine, **{"retry_initial": 0.02, "retry_max": 0.2, **options})
        if start:
            writer.start()
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.shutdown_timeout = 2.0
        await writer.aclose()


class SqliteLock:
    """Another process holding SQLite's write lock: every write waits its busy timeout, then
    fails with 'database is locked'."""

    def __init__(self, url: str) -> None:
        self.path = make_url(url).database
        self.url = url + "?timeout=0.05"
        self._conn: sqlite3.Connection | None = None

    async def down(self) -> None:
        self._conn = sqlite3.connect(str(self.path), isolation_level=None)
        self._conn.execute("BEGIN EXCLUSIVE")

    async def up(self) -> None:
        assert self._conn is not None
        self._conn.execute("COMMIT")
        self._conn.close()


class PostgresOutage:
    """PostgreSQL reached through a proxy that can cut and reset connections."""

    def __init__(self, url: str, proxy: TcpProxy) -> None:
        self.proxy = proxy
        parsed = make_url(url).set(host="127.0.0.1", port=proxy.port)
        self.url = parsed.render_as_string(hide_password=False)

    async def down(self) -> None:
        await self.proxy.down()

    async def up(self) -> None:
        await self.proxy.up()


@pytest.fixture
async def outage(db_url: str, engine: AsyncEngine) -> AsyncIterator[SqliteLock | PostgresOutage]:
    """A way to take the (migrated) database away from a writer and to bring it back."""
    if db_url.startswith("sqlite"):
        yield SqliteLock(db_url)
        return
    parsed = make_url(db_url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    yield PostgresOutage(db_url, proxy)
    await proxy.close()


async def stored(engine: AsyncEngine) -> list[SpendRecord]:
    page = await spend_records(engine, *EVER, limit=MAX_PAGE)
    assert page.next_cursor is None
    return sorted(page.records, key=lambda r: r.request_id)


async def scalar(engine: AsyncEngine, query: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(query)).scalar_one()


async def count(engine: AsyncEngine, query: Any) -> int:
    return int(await scalar(engine, query))


async def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- schema ------------------------------------------------------------------------------
async def test_upgrade_from_empty_creates_every_table_and_index(db_url):
    assert await current_revision(db_url) is None
    await upgrade(db_url)
    assert await current_revision(db_url) == head_revision()

    engine = create_ledger_engine(db_url)

    def look(conn: Connection) -> tuple[Any, ...]:
        db = inspect(conn)
        indexes = {
            table: {ix["name"]: ix["column_names"] for ix in db.get_indexes(table)}
            for table in ("spend_records", "spend_daily", "spend_daily_users", "spend_attempts")
        }
        keys = {t: db.get_pk_constraint(t)["constrained_columns"] for t in indexes}
        columns = {c["name"]: c for c in db.get_columns("spend_records")}
        drift = compare_metadata(MigrationContext.configure(conn), metadata)
        return set(db.get_table_names()), indexes, keys, columns, drift

    async with engine.connect() as conn:
        tables, indexes, keys, columns, drift = await conn.run_sync(look)
    await engine.dispose()

    assert tables == {
        "alembic_version",
        "spend_records",
        "spend_daily",
        "spend_daily_users",
        "api_keys",
        "teams",
        "ui_sessions",
        "audit_log",
        "batch_files",
        "batches",
        "stored_responses",
        "spend_attempts",
        "budget_alerts",
    }
    assert indexes["spend_attempts"] == {
        "ix_spend_attempts_deployment_started_at": ["deployment", "started_at"],
        "ix_spend_attempts_started_at": ["started_at"],
    }
    assert keys["spend_attempts"] == ["request_id", "seq"]
    assert indexes["spend_records"] == {
        "ix_spend_records_started_at_request_id": ["started_at", "request_id"],
        "ix_spend_records_key_id_started_at_request_id": ["key_id", "started_at", "request_id"],
        "ix_spend_records_model_started_at": ["model", "started_at"],
        "ix_spend_records_adjusts": ["adjusts"],
    }
    assert indexes["spend_daily"] == {"ix_spend_daily_key_id_day": ["key_id", "day"]}
    assert indexes["spend_daily_users"] == {"ix_spend_daily_users_key_id_day": ["key_id", "day"]}
    assert keys["spend_records"] == ["request_id"]
    assert keys["spend_daily"] == ["day", "key_id", "team", "model", "provider"]
    assert keys["spend_daily_users"] == ["day", "key_id", "end_user"]
    assert columns["cost_usd"]["nullable"] is True
    cost_type = str(columns["cost_usd"]["type"])
    assert cost_type == ("BIGINT" if db_url.startswith("sqlite") else "NUMERIC(20, 10)")
    assert drift == []  # the migrations build exactly the tables of gateway/ledger/schema.py


async def test_upgrade_run_by_several_replicas_at_once_migrates_once(db_url):
    await asyncio.gather(*(upgrade(db_url) for _ in range(3)))
    await upgrade(db_url)
    assert await current_revision(db_url) == head_revision()


async def test_upgrade_files_records_written_before_surfaces_under_openai(db_url):
    await upgrade(db_url, "0002")
    engine = create_ledger_engine(db_url)
    before = make_records(2)
    async with engine.begin() as conn:
        for rec in before:
            row = record_row(rec)
            for later in (
                "surface",
                *COLUMNS_0004,
                *COLUMNS_0007,
                *COLUMNS_0009,
            ):  # those 0003+ add
                del row[later]
            await conn.execute(records_table.insert().values(row))
    await upgrade(db_url)
    after = make_records(1, prefix="new")
    after[0].surface = "mistral"
    await write_batch(engine, after)
    try:
        got = {r.request_id: r.surface for r in await stored(engine)}
    finally:
        await engine.dispose()
    assert got == {"req-000000": "openai", "req-000001": "openai", "new-000000": "mistral"}


async def test_upgrade_to_0004_keeps_records_as_calls_and_marks_their_estimates(db_url):
    await upgrade(db_url, "0003")
    engine = create_ledger_engine(db_url)
    before = make_records(2)
    before[0].usage_estimated, before[1].usage_estimated = True, False
    async with engine.begin() as conn:
        for rec in before:
            row = record_row(rec)
            for later in (*COLUMNS_0004, *COLUMNS_0007, *COLUMNS_0009):
                del row[later]
            await conn.execute(records_table.insert().values(row))
    await upgrade(db_url)
    try:
        got = {r.request_id: (r.kind, r.usage_basis, r.price_model) for r in await stored(engine)}
    finally:
        await engine.dispose()
    assert got == {
        "req-000000": ("call", "estimated", None),
        "req-000001": ("call", "reported", None),
    }


COLUMNS_0009 = ("content",)
COLUMNS_0004 = (
    "usage_basis",
    "cost_note",
    "price_family",
    "price_model",
    "price_source",
    "price_effective",
    "kind",
    "adjusts",
    "adjusted_cost_usd",
)
COLUMNS_0007 = ("cache_hit", "saved_usd")


async def test_upgrade_to_0007_marks_earlier_records_as_no_cache_hits(db_url):
    await upgrade(db_url, "0005")
    engine = create_ledger_engine(db_url)
    async with engine.begin() as conn:
        row = record_row(make_records(1)[0])
        for later in (*COLUMNS_0007, *COLUMNS_0009):  # the columns 0007 and later add
            del row[later]
        await conn.execute(records_table.insert().values(row))
    await upgrade(db_url)
    hit = make_records(1, prefix="hit")[0]
    hit.cache_hit, hit.saved_usd, hit.cost_usd = True, Decimal("0.0012345678"), Decimal(0)
    await write_batch(engine, [hit])
    try:
        got = {r.request_id: (r.cache_hit, r.saved_usd) for r in await stored(engine)}
    finally:
        await engine.dispose()
    assert got == {"req-000000": (False, None), "hit-000000": (True, Decimal("0.0012345678"))}


def test_head_known_without_alembic_is_the_newest_shipped_migration():
    assert head_revision() == HEAD


def test_starting_on_a_database_at_head_does_not_load_alembic(tmp_path):
    # Alembic and Mako are ~11 MiB a worker; they load only when there is a migration to run.
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    code = (
        "import asyncio, sys\n"
        "from gateway.ledger.migrate import upgrade\n"
        f"asyncio.run(upgrade({url!r}))\n"
        "print('alembic' in sys.modules)\n"
    )

    def alembic_loaded() -> str:
        run = [sys.executable, "-c", code]
        return subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()

    assert alembic_loaded() == "True"  # an empty database: the migrations run
    assert alembic_loaded() == "False"  # at head: nothing to run, nothing loaded


# -- writing -------------------------------------------------------------------------------
async def test_submitted_records_are_stored_exactly_with_their_decimal_costs(engine, writers):
    records = make_records(1234)
    records[0].cost_usd = Decimal("0.0000000001")
    records[1].cost_usd = Decimal("900000000.0123456789")  # near SQLite's limit ($922M)
    records[2].cost_usd = Decimal("0")
    writer = writers(engine, batch_size=100)
    for record in records:
        writer.submit(record)
    await writer.flush()

    assert await stored(engine) == records
    assert writer.written == 1234
    assert writer.backlog == 0
    assert (writer.dropped, writer.rejected) == (0, 0)
    assert writer.last_write_seconds is not None
    total = await scalar(engine, select(func.sum(records_table.c.cost_usd)))
    assert total == sum(r.cost_usd for r in records if r.cost_usd is not None)


async def test_costs_are_kept_to_1e_10_usd_rounding_half_even(engine):
    costs = ["0.00000000005", "0.00000000015", "1.23456789012345"]
    records = make_records(3)
    for record, cost in zip(records, costs, strict=True):
        record.cost_usd = Decimal(cost)
    await write_batch(engine, records)
    assert [r.cost_usd for r in await stored(engine)] == [
        Decimal("0"),
        Decimal("0.0000000002"),
        Decimal("1.2345678901"),
    ]


async def test_unknown_cost_stays_null_and_is_counted_apart(engine, writers):
    known, unknown, free = make_records(3)
    known.cost_usd, unknown.cost_usd, free.cost_usd = Decimal("0.25"), None, Decimal(0)
    writer = writers(engine)
    for record in (known, unknown, free):
        writer.submit(record)
    await writer.flush()

    nulls = select(func.count()).where(records_table.c.cost_usd.is_(None))
    assert await count(engine, nulls) == 1
    assert {r.request_id: r.cost_usd for r in await stored(engine)} == {
        known.request_id: Decimal("0.25"),
        unknown.request_id: None,
        free.request_id: Decimal(0),
    }
    rows = await spend_report(engine, "day", *EVER)
    assert sum(row.requests for row in rows) == 3
    assert sum(row.cost_usd for row in rows) == Decimal("0.25")
    assert sum(row.unknown_cost_requests for row in rows) == 1


async def test_a_request_id_is_stored_once_however_often_it_is_submitted(engine, writers):
    first = make_records(5)
    again = make_records(1, seed=99)[0]
    again.request_id = first[0].request_id  # same request, different (later) facts
    writer = writers(engine)
    for record in [*first, first[0]]:  # twice in one batch …
        writer.submit(record)
    await writer.flush()
    writer.submit(again)  # … and once more in a later one
    await writer.flush()

    assert await stored(engine) == first
    assert writer.written == 5
    assert writer.duplicates == 2
    daily = select(func.sum(spend_daily.c.requests))
    assert await count(engine, daily) == 5


async def test_a_retried_batch_is_not_counted_twice(engine):
    records = make_records(50)
    assert await write_batch(engine, records) == 50
    before = await spend_report(engine, "model", *EVER)
    # The first commit succeeded but its answer was lost: the writer sends the batch again.
    assert await write_batch(engine, records) == 0
    assert await count(engine, select(func.count()).select_from(records_table)) == 50
    assert await spend_report(engine, "model", *EVER) == before


async def test_a_record_the_database_refuses_is_isolated_and_stored_without_its_tags(
    engine, writers, caplog
):
    caplog.set_level(logging.WARNING, logger="gateway.ledger")
    records = make_records(40)
    bad = records[17]
    bad.tags = {"not json": object()}
    writer = writers(engine, batch_size=40)
    for record in records:
        writer.submit(record)
    await writer.flush()

    kept = {r.request_id: r for r in await stored(engine)}
    assert set(kept) == {r.request_id for r in records}
    assert set(kept[bad.request_id].tags) == {"ledger_note"}
    assert (writer.written, writer.salvaged, writer.rejected, writer.backlog) == (40, 1, 0, 0)
    assert bad.request_id in caplog.text


async def test_writer_survives_a_database_outage_and_writes_everything_after(
    engine, outage, writers, caplog
):
    caplog.set_level(logging.WARNING, logger="gateway.ledger")
    writer = writers(create_ledger_engine(outage.url), batch_size=50, flush_interval=0.02)
    early = make_records(100, prefix="early")
    for record in early:
        writer.submit(record)
    await writer.flush()

    await outage.down()
    during = make_records(300, prefix="during", seed=2)
    for record in during:
        writer.submit(record)
    await eventually(lambda: writer.failing)
    await asyncio.sleep(0.5)  # several failed tries
    assert writer.backlog == 300
    assert writer.last_error is not None
    assert "failed" in caplog.text

    await outage.up()
    async with asyncio.timeout(20):
        await writer.flush()
    assert not writer.failing
    assert await stored(engine) == sorted(early + during, key=lambda r: r.request_id)
    assert (writer.written, writer.dropped, writer.duplicates) == (400, 0, 0)
    await writer.aclose()
    await writer.engine.dispose()


async def test_a_full_queue_never_blocks_submit_and_drops_loudly(engine, outage, writers, caplog):
    caplog.set_level(logging.ERROR, logger="gateway.ledger")
    writer = writers(
        create_ledger_engine(outage.url), batch_size=10, queue_size=50, overflow_size=25
    )
    await outage.down()
    records = make_records(1000)
    started = time.perf_counter()
    for record in records:
        writer.submit(record)
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0  # 1000 submits while the database is down: none waited for it
    assert writer.dropped == 925
    assert writer.backlog == 75
    assert "dropped" in caplog.text

    await outage.up()
    async with asyncio.timeout(20):
        await writer.flush()
    assert [r.request_id for r in await stored(engine)] == [r.request_id for r in records[:75]]
    await writer.aclose()
    await writer.engine.dispose()


async def test_aclose_writes_everything_held(engine, writers):
    writer = writers(engine, batch_size=10_000, flush_interval=60)
    records = make_records(777)
    for record in records:
        writer.submit(record)
    await asyncio.sleep(0.05)
    assert writer.backlog == 777  # still waiting for a full batch …

    await writer.aclose()  # … which shutdown does not wait for
    assert writer.backlog == 0
    assert len(await stored(engine)) == 777
    writer.submit(make_records(1, prefix="late")[0])
    assert writer.dropped == 1


async def test_aclose_gives_up_after_its_timeout_and_counts_the_loss(
    engine, outage, writers, caplog
):
    caplog.set_level(logging.ERROR, logger="gateway.ledger")
    writer = writers(create_ledger_engine(outage.url), shutdown_timeout=0.5)
    await outage.down()
    for record in make_records(30):
        writer.submit(record)
    started = time.monotonic()
    await writer.aclose()
    assert time.monotonic() - started < 3
    assert (writer.dropped, writer.backlog) == (30, 0)
    assert "30 spend records lost" in caplog.text
    await outage.up()
    await writer.engine.dispose()


# -- reports -------------------------------------------------------------------------------
def as_dict(rows: list[SpendRow]) -> dict[str | None, SpendRow]:
    by_group = {row.group: row for row in rows}
    assert len(by_group) == len(rows)
    return by_group


RANGES = {
    # cuts through its first and last day: roll-up for the two days between, records at the ends
    "partial-days": (DAY0 + timedelta(hours=7, seconds=13.5), DAY0 + timedelta(days=3, hours=16)),
    "whole-days": (DAY0 + timedelta(days=1), DAY0 + timedelta(days=3)),
    "within-a-day": (DAY0 + timedelta(days=2, hours=1), DAY0 + timedelta(days=2, hours=5)),
    "across-one-midnight": (DAY0 + timedelta(hours=20), DAY0 + timedelta(days=1, hours=4)),
}


@pytest.mark.parametrize("group_by", GROUPINGS)
async def test_report_equals_the_sums_of_its_records(engine, group_by):
    records = make_records(1500)
    for start in range(0, 1500, 400):
        await write_batch(engine, records[start : start + 400])
    since, until = RANGES["partial-days"]
    plan = plan_range(since, until)
    assert plan.days is not None and len(plan.partial) == 2  # both sources are used

    for since, until in RANGES.values():
        for key_id in (None, "key-b"):
            rows = await spend_report(engine, group_by, since, until, key_id=key_id)
            assert as_dict(rows) == expected_report(records, group_by, since, until, key_id)
    everything = await spend_report(engine, group_by, *EVER)
    assert sum(row.requests for row in everything) == 1500
    assert sum(row.cost_usd for row in everything) == sum(
        r.cost_usd for r in records if r.cost_usd is not None
    )


async def test_report_rows_by_day_are_in_date_order_and_others_by_cost(engine):
    await write_batch(engine, make_records(300))
    days = [row.group for row in await spend_report(engine, "day", *EVER)]
    assert days == ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
    costs = [row.cost_usd for row in await spend_report(engine, "model", *EVER)]
    assert costs == sorted(costs, reverse=True)


async def test_rebuilt_rollups_equal_the_ones_kept_while_writing(engine):
    for start in range(0, 600, 100):
        await write_batch(engine, make_records(600)[start : start + 100])

    async def rollups() -> list[list[Any]]:
        async with engine.connect() as conn:
            return [
                list(await conn.execute(select(t).order_by(*t.primary_key.columns)))
                for t in ROLLUPS
            ]

    kept = await rollups()
    assert all(kept)
    await rebuild_daily(engine, DAY0.date(), (DAY0 + timedelta(days=3)).date())
    assert await rollups() == kept


async def test_pages_walk_every_record_exactly_once(engine):
    records = make_records(250)
    for i, record in enumerate(records[:60]):  # ties on started_at: request_id decides
        record.started_at = DAY0 + timedelta(hours=30, seconds=i % 3)
    await write_batch(engine, records)
    since, until = RANGES["partial-days"]
    for key_id in (None, "key-a"):
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await spend_records(engine, since, until, key_id, limit=17, cursor=cursor)
            seen += [r.request_id for r in page.records]
            pages += 1
            cursor = page.next_cursor
            if cursor is None:
                break
        expected = sorted(
            (r for r in records if since <= r.started_at < until)
            if key_id is None
            else (r for r in records if since <= r.started_at < until and r.key_id == key_id),
            key=lambda r: (r.started_at, r.request_id),
        )
        assert seen == [r.request_id for r in expected]
        assert pages == len(expected) // 17 + 1
    with pytest.raises(ValueError, match="invalid cursor"):
        await spend_records(engine, since, until, cursor="not-a-cursor")


async def test_csv_exports_reports_and_records_safely(engine):
    records = make_records(120)
    await write_batch(engine, records)
    text_out = report_csv(await spend_report(engine, "user", *EVER), "user")
    rows = list(csv.DictReader(io.StringIO(text_out)))
    assert list(rows[0])[:2] == ["user", "requests"]
    users = {row["user"] for row in rows}
    assert "'=HYPERLINK(1)" in users  # a spreadsheet shows it, never runs it
    assert sum(Decimal(row["cost_usd"]) for row in rows) == sum(
        r.cost_usd for r in records if r.cost_usd is not None
    )

    out = io.StringIO()
    assert await export_records_csv(engine, out, *EVER, page_size=50) == 120
    exported = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(exported) == 120
    assert {row["request_id"] for row in exported} == {r.request_id for r in records}


# -- the Ledger, config ----------------------------------------------------------------------
async def test_ledger_from_config_migrates_records_and_reports(db_url):
    ledger = Ledger(LedgerConfig(url=db_url, flush_interval=0.01))
    await ledger.start()
    records = make_records(40)
    for record in records:
        ledger.submit(record)
    await ledger.writer.flush()
    rows = await ledger.spend_report("team", *EVER)
    assert as_dict(rows) == expected_report(records, "team", *EVER)
    page = await ledger.spend_records(*EVER, limit=10)
    assert len(page.records) == 10 and page.next_cursor
    status = ledger.status()
    assert (status["written"], status["backlog"], status["dropped"]) == (40, 0, 0)
    await ledger.aclose()
    assert not ledger.status()["running"]


def test_ledger_config_defaults_to_a_sqlite_file_in_the_working_directory():
    ledger = load_config({}).ledger
    assert ledger.enabled and ledger.url == "sqlite+aiosqlite:///./llm-gateway.db"
    assert (ledger.batch_size, ledger.flush_interval, ledger.queue_size) == (100, 0.2, 10_000)


def test_ledger_url_takes_plain_database_urls():
    assert str(ledger_url("postgresql://u@db/spend")) == "postgresql+asyncpg://u@db/spend"
    assert str(ledger_url("postgres://u@db/spend")) == "postgresql+asyncpg://u@db/spend"
    assert str(ledger_url("sqlite:///x.db")) == "sqlite+aiosqlite:///x.db"
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        ledger_url("mysql://u@db/spend")


def test_a_wrong_ledger_url_is_explained_without_echoing_it():
    with pytest.raises(ConfigError) as caught:
        load_config({"ledger": {"url": "mysql://spend:hunter2@db/spend"}})
    assert "ledger.url: " in str(caught.value)
    assert "postgresql+asyncpg://" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_token_counts_read_the_openai_usage_shape():
    usage = {
        "prompt_tokens": 120,
        "completion_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    assert token_counts(usage) == (120, 100, 30, 12)
    assert token_counts(None) == (0, 0, 0, 0)
    assert token_counts({"prompt_tokens": 8, "total_tokens": 8}) == (8, 0, 0, 0)


async def test_records_are_read_back_as_aware_utc_datetimes(engine):
    record = make_records(1)[0]
    record.started_at = datetime(2026, 3, 1, 23, 30, tzinfo=UTC) + timedelta(microseconds=7)
    await write_batch(engine, [record])
    [back] = await stored(engine)
    assert back.started_at == record.started_at and back.started_at.tzinfo is UTC
    async with engine.connect() as conn:
        day = (await conn.execute(select(spend_daily.c.day))).scalar_one()
    assert day.isoformat() == "2026-03-01"
