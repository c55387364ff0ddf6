"""The ledger's tables: one row per request, and a daily roll-up that long reports read.

``spend_records`` holds every request. Two roll-ups hold, per UTC day, the sums of the
records: ``spend_daily`` per (key, team, model, provider) and ``spend_daily_users`` per
(key, end user); both are kept up to date in the same transaction as each batch insert.
In a roll-up a missing key/team/user/provider is stored as ``''`` (a primary key cannot hold
NULL); reports turn it back into None.

The migrations in ``migrations/versions`` create exactly these tables; change both together.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

from gateway.ledger.records import COST_QUANTUM, as_utc, quantize_cost

UNITS_PER_USD = 10**10  # 1 unit = 1e-10 USD, the scale of every cost column


class Money(TypeDecorator[Decimal]):
    """Exact USD amounts: NUMERIC(p, 10) where the database has exact decimals; on SQLite,
    whose NUMERIC is a float, an INTEGER count of 1e-10 USD, so SUM() stays exact there too.
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 20) -> None:
        super().__init__(precision=precision, scale=10, asdecimal=True)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(self.impl_instance)

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> object:
        cost = quantize_cost(value)
        if cost is None or dialect.name != "sqlite":
            return cost
        return int(cost.scaleb(10))

    def process_result_value(self, value: object, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-10).quantize(COST_QUANTUM)  # type: ignore[call-overload]
        assert isinstance(value, Decimal)
        return value


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend (SQLite keeps naive
    UTC text, which sorts and compares correctly)."""

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


Tags = JSON().with_variant(JSONB(), "postgresql")
Content = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

spend_records = Table(
    "spend_records",
    metadata,
    Column("request_id", String, primary_key=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("key_id", String, nullable=True),
    Column("team", String, nullable=True),
    Column("end_user", String, nullable=True),
    Column("tags", Tags, nullable=False),
    Column("model", String, nullable=False),
    Column("provider", String, nullable=True),
    Column("deployment", String, nullable=True),
    Column("upstream_model", String, nullable=True),
    Column("region", String, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("fallback_used", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error_type", String, nullable=True),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_usd", Money(20), nullable=True),  # NULL: unknown price, never 0
    Column("usage_estimated", Boolean, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("operation", String(16), nullable=False),
    Column("surface", String(16), nullable=False, server_default="openai"),
    Column("usage_basis", String(16), nullable=False, server_default="reported"),
    Column("cost_note", String, nullable=True),  # why unknown or estimated
    # Provenance: the catalog entry that priced the record.
    Column("price_family", String, nullable=True),
    Column("price_model", String, nullable=True),
    Column("price_source", String, nullable=True),
    Column("price_effective", String(32), nullable=True),
    # Adjustments (re-pricing) are rows of their own, never edits of the record they adjust.
    Column("kind", String(16), nullable=False, server_default="call"),
    Column("adjusts", String, nullable=True),
    Column("adjusted_cost_usd", Money(20), nullable=True),
    # The response cache: a hit costs 0 and saves what its answer cost when it was produced.
    Column("cache_hit", Boolean, nullable=False, server_default=false()),
    Column("saved_usd", Money(20), nullable=True),
    # Prompt and answer of callers whose key or team has ``log_content: true``; else NULL.
    Column("content", Content, nullable=True),
)
# Time-range reads and keyset pagination walk (started_at, request_id), optionally per key.
Index(None, spend_records.c.started_at, spend_records.c.request_id)
Index(None, spend_records.c.key_id, spend_records.c.started_at, spend_records.c.request_id)
Index(None, spend_records.c.model, spend_records.c.started_at)
Index(None, spend_records.c.adjusts)

# Every upstream attempt of a request (``spend_records.request_id``), in order (``seq``): a
# deployment's own failures stay visible even when another deployment answered the request.
spend_attempts = Table(
    "spend_attempts",
    metadata,
    Column("request_id", String, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("deployment", String, nullable=False),
    Column("provider", String, nullable=True),
    Column("model", String, nullable=True),
    Column("status", Integer, nullable=True),  # NULL: no HTTP answer
    Column("error_type", String, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("billed", Boolean, nullable=False),
)
Index(None, spend_attempts.c.deployment, spend_attempts.c.started_at)
Index(None, spend_attempts.c.started_at)

# Budget alerts sent: one row per (scope, id, budget period, threshold), claimed before the
# webhook is called, so every replica together sends each alert once per period.
budget_alerts = Table(
    "budget_alerts",
    metadata,
    Column("scope", String(8), primary_key=True),  # key or team
    Column("scope_id", String, primary_key=True),
    Column("period_start", UTCDateTime(), primary_key=True),
    Column("threshold", Integer, primary_key=True),  # percent
    Column("name", String, nullable=False),
    Column("spent_usd", Money(20), nullable=False),
    Column("budget_usd", Money(20), nullable=False),
    Column("sent_at", UTCDateTime(), nullable=False),
    Column("delivered", Boolean, nullable=False),
)

COUNTERS = (
    "requests",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "unknown_cost_requests",
)


def _daily(name: str, dimensions: tuple[str, ...]) -> Table:
    """A roll-up: per UTC day and per combination of ``dimensions``, the sums of the records
    (``cost_usd`` sums the known costs; ``unknown_cost_requests`` counts the others)."""
    table = Table(
        name,
        metadata,
        Column("day", Date, primary_key=True),
        *(Column(d, String, primary_key=True) for d in dimensions),
        *(Column(c, BigInteger, nullable=False) for c in COUNTERS),
        Column("cost_usd", Money(28), nullable=False),
        sqlite_with_rowid=False,
    )
    Index(None, table.c.key_id, table.c.day)
    return table


# End users are kept in a roll-up of their own: callers name them freely, and their number
# would otherwise multiply the rows every other report has to read.
spend_daily = _daily("spend_daily", ("key_id", "team", "model", "provider"))
spend_daily_users = _daily("spend_daily_users", ("key_id", "end_user"))
ROLLUPS = (spend_daily, spend_daily_users)


def dimensions(rollup: Table) -> tuple[str, ...]:
    """The columns a roll-up groups by, after ``day``."""
    return tuple(c.name for c in rollup.primary_key.columns if c.name != "day")
