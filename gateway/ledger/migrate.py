"""Bringing a ledger database to the current schema with the Alembic migrations shipped here.

Alembic (with Mako) is ~11 MiB of modules per process, and a gateway worker needs it only when
its database is behind: at start-up the revision is read with plain SQL first, and Alembic is
imported only if there is something to migrate.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from gateway.ledger.db import SQLITE_IMMEDIATE, create_ledger_engine, lock_migrations

if TYPE_CHECKING:
    from alembic.config import Config

HERE = Path(__file__).parent
# The newest shipped revision (tests check it against Alembic's own reading of the scripts).
HEAD = "0011"
# Alembic keeps its running migration in module globals: one at a time per event loop.
_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def alembic_config() -> Config:
    """The ledger's Alembic configuration (the same as ``alembic.ini`` beside this file)."""
    from alembic.config import Config

    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE / "migrations").replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    """The newest revision the shipped migrations know."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (creating it from empty if need be).

    Safe to call from every replica at start-up: the migrations run in one transaction
    behind a lock, so a second caller waits and then finds nothing to do.
    """
    turn = _turns.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    engine = create_ledger_engine(url, poolclass=NullPool)
    try:
        async with turn, engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                await conn.run_sync(lock_migrations)
                await conn.run_sync(_upgrade, revision)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = create_ledger_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


def _at_head(connection: Connection) -> bool:
    """Whether the database is at ``HEAD`` already, read without Alembic."""
    if not inspect(connection).has_table("alembic_version"):
        return False
    versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
    return list(versions) == [HEAD]


def _upgrade(connection: Connection, revision: str) -> None:
    if revision == "head" and _at_head(connection):
        return
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)
