"""Connecting to the ledger's database: SQLite (aiosqlite) by default, PostgreSQL (asyncpg)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

DEFAULT_URL = "sqlite+aiosqlite:///./llm-gateway.db"
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
# Execution option that makes a SQLite transaction take the write lock at BEGIN.
SQLITE_IMMEDIATE = "ledger_sqlite_immediate"
MIGRATION_LOCK = 0x6C6564676572  # PostgreSQL advisory lock id ("ledger")
WAL_RETRY_WAITS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)  # seconds, ~3 s in all


def ledger_url(url: str) -> URL:
    """``url`` with its async driver (``postgresql://`` → ``postgresql+asyncpg://``,
    ``sqlite:///`` → ``sqlite+aiosqlite:///``); ValueError for any other database."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError; say what is expected
        raise ValueError(f"not a database URL ({exc.__class__.__name__})") from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database {parsed.drivername!r}; use sqlite+aiosqlite:///PATH "
            "or postgresql+asyncpg://USER@HOST:PORT/DATABASE"
        )
    return parsed.set(drivername=driver)


def create_ledger_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An async engine for the ledger. SQLite gets WAL and synchronous=NORMAL on each
    connection, and real transactions (so DDL is transactional and a writer can take the
    write lock up front); PostgreSQL gets a pre-ping so a restarted server is survived."""
    parsed = ledger_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(parsed, **kwargs)


def _sqlite_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy, not the driver, decide when a transaction begins (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        _wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _wal(cursor: Any) -> None:
    """Put the database in WAL mode (once per file; later connections find it so). Switching
    needs the file to itself, and SQLite answers "database is locked" at once, without its busy
    wait, while another process opens it: replicas starting together on a new file take turns."""
    cursor.execute("PRAGMA journal_mode")
    if str(cursor.fetchone()[0]).lower() == "wal":
        return
    for wait in WAL_RETRY_WAITS:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # the driver's OperationalError
            if "locked" not in str(exc):
                raise
            time.sleep(wait)  # start-up only: a new database, another process switching it
    cursor.execute("PRAGMA journal_mode=WAL")


def _sqlite_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(SQLITE_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def lock_migrations(connection: Connection) -> None:
    """Make concurrent migrators (replicas starting together) take turns, until the end of
    this transaction. SQLite needs nothing more: its BEGIN IMMEDIATE already did this."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK})
