"""Alembic environment for the spend ledger: async engines, SQLite and PostgreSQL.

Two ways in. ``gateway.ledger.migrate.upgrade(url)`` (the gateway at start-up) hands over a
connection already inside its transaction; the ``alembic`` command (see ../alembic.ini) gets
here with none, and this file opens one on the URL from ``-x url=…``, $GATEWAY_LEDGER_URL or
``sqlalchemy.url``. Either way all migrations run in one transaction that first takes a lock
(PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE), so replicas starting together
migrate once, one after the other.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from gateway.ledger.db import (
    DEFAULT_URL,
    SQLITE_IMMEDIATE,
    create_ledger_engine,
    ledger_url,
    lock_migrations,
)
from gateway.ledger.schema import metadata

config = context.config


def database_url() -> str:
    given = context.get_x_argument(as_dictionary=True).get("url")
    return (
        given
        or os.environ.get("GATEWAY_LEDGER_URL")
        or config.get_main_option("sqlalchemy.url")
        or DEFAULT_URL
    )


def run_on(connection: Connection) -> None:
    """Run the migrations on a connection that is inside its (locked) transaction."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    engine = create_ledger_engine(database_url(), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                await conn.run_sync(lock_migrations)
                await conn.run_sync(run_on)
    finally:
        await engine.dispose()


def run_offline() -> None:
    """``alembic upgrade head --sql``: print the DDL for the URL's database."""
    context.configure(
        url=ledger_url(database_url()),
        target_metadata=metadata,
        literal_binds=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (given := config.attributes.get("connection")) is not None:
    run_on(given)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(run_standalone())
