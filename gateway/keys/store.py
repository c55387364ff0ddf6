"""Virtual keys and teams, stored in the ledger's database; key secrets only as hashes.

What may be stored is decided in ``gateway.keys.admin``; this module only stores it.

A key is ``sk-gw-`` plus 43 random URL-safe characters (256 bits): its plaintext is returned
once, at creation or rotation; the database keeps its SHA-256 (a slow hash adds nothing for
secrets this random) and a 12-character prefix for listings.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Select,
    String,
    Table,
    UniqueConstraint,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import InvalidRequestError, NotFoundError
from gateway.ledger.db import SQLITE_IMMEDIATE
from gateway.ledger.schema import metadata
from gateway.limits.base import Period, ScopeLimits

log = logging.getLogger("gateway.keys")

KEY_PREFIX = "sk-gw-"
_JSON = JSON().with_variant(JSONB(), "postgresql")


def _limit_columns() -> list[Column[Any]]:
    return [
        Column("allowed_models", _JSON, nullable=False),
        Column("regions", _JSON, nullable=True),
        Column("rpm", Integer),
        Column("tpm", Integer),
        Column("max_parallel", Integer),
        Column("budget_usd", String),
        Column("budget_period", String(16), nullable=False),
        Column("metadata", _JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    ]


# In the ledger's MetaData: one description of the database, which migration v0002 creates.
teams_table = Table(
    "teams",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    *_limit_columns(),
    UniqueConstraint("name", name="uq_teams_name"),
)
keys_table = Table(
    "api_keys",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("prefix", String, nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("team_id", String, ForeignKey("teams.id", name="fk_api_keys_team_id")),
    Column("admin", Boolean, nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    *_limit_columns(),
    UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    Index("ix_api_keys_team_id", "team_id"),
)


def store_errors() -> tuple[type[Exception], ...]:
    """What a failing key store (or the limits it is read with) raises: its database's errors
    and, once the redis client is loaded (only with Redis configured), Redis's."""
    module = sys.modules.get("redis.exceptions")
    redis_errors = (module.RedisError,) if module is not None else ()
    return (SQLAlchemyError, OSError, *redis_errors)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@dataclass(slots=True)
class Limited:
    """What keys and teams share: model globs, regions, rate limits, a budget, tags."""

    id: str
    name: str
    allowed_models: list[str] = field(default_factory=list)  # globs; empty: every model
    regions: list[str] | None = None  # None: any region
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_usd: Decimal | None = None
    budget_period: Period = "monthly"
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def scope_limits(self, kind: str) -> ScopeLimits:
        return ScopeLimits(
            f"{kind}:{self.id}",
            self.rpm,
            self.tpm,
            self.max_parallel,
            self.budget_usd,
            self.budget_period,
        )

    def public(self) -> dict[str, Any]:
        """A JSON-ready view (money as decimal strings, times as ISO 8601)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "key_hash":
                continue
            value = getattr(self, f.name)
            if isinstance(value, Decimal):
                value = format(value, "f")
            elif isinstance(value, datetime):
                value = value.isoformat()
            out[f.name] = value
        return out


@dataclass(slots=True)
class Team(Limited):
    """A group of keys with limits and a budget of its own."""


@dataclass(slots=True)
class VirtualKey(Limited):
    """A key the gateway issued; ``key_hash`` is all that identifies its secret."""

    prefix: str = ""
    key_hash: str = ""
    team_id: str | None = None
    admin: bool = False
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def unusable_because(self, now: datetime) -> str | None:
        if self.revoked_at is not None:
            return f"was revoked on {self.revoked_at:%Y-%m-%d %H:%M} UTC"
        if self.expires_at is not None and _aware(self.expires_at) <= now:
            return f"expired on {self.expires_at:%Y-%m-%d %H:%M} UTC"
        return None


LIMIT_FIELDS = frozenset(
    {
        "name",
        "allowed_models",
        "regions",
        "rpm",
        "tpm",
        "max_parallel",
        "budget_usd",
        "budget_period",
        "metadata",
    }
)
KEY_FIELDS = LIMIT_FIELDS | {"team_id", "admin", "expires_at"}


class KeyStore:
    """CRUD for keys and teams on the ledger's database engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- keys ----------------------------------------------------------------------------
    async def create_key(self, **attrs: Any) -> tuple[VirtualKey, str]:
        """A new key and its plaintext (shown once)."""
        self._check(attrs, KEY_FIELDS)
        if attrs.get("team_id"):  # by id or name; the key must keep the id
            attrs["team_id"] = (await self.get_team(attrs["team_id"])).id
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key = VirtualKey(
            id=uuid.uuid4().hex,
            name=attrs.pop("name", "") or "",
            prefix=plaintext[:12],
            key_hash=hash_key(plaintext),
            **attrs,
        )
        async with self._writing() as conn:
            await conn.execute(keys_table.insert().values(**_row(key)))
        return key, plaintext

    async def get_key(self, key_id: str) -> VirtualKey:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(keys_table).where(keys_table.c.id == key_id))).first()
        if row is None:
            raise NotFoundError(f"no key with id '{key_id}'", code="key_not_found")
        return _key(row._mapping)

    async def find_key(self, plaintext: str) -> VirtualKey | None:
        digest = hash_key(plaintext)
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(keys_table).where(keys_table.c.key_hash == digest))
            ).first()
        return None if row is None else _key(row._mapping)

    async def list_keys(self, team_id: str | None = None) -> list[VirtualKey]:
        """The keys (of one team), oldest first. A row that cannot be read is left out and
        logged, so one damaged row never hides every other key."""
        query = select(keys_table).order_by(keys_table.c.created_at)
        if team_id is not None:
            query = query.where(keys_table.c.team_id == team_id)
        try:
            async with self.engine.connect() as conn:
                return [_key(r._mapping) for r in await conn.execute(query)]
        except (OperationalError, InterfaceError, OSError):
            raise  # the database, not a row
        except Exception:
            return await self._readable_keys(query)

    async def _readable_keys(self, query: Select[Any]) -> list[VirtualKey]:
        """The keys ``query`` selects, read one by one, leaving out (and logging) those whose
        row cannot be read."""
        async with self.engine.connect() as conn:
            ids = [r[0] for r in await conn.execute(query.with_only_columns(keys_table.c.id))]
        keys = []
        for key_id in ids:
            try:
                keys.append(await self.get_key(key_id))
            except (OperationalError, InterfaceError, OSError):
                raise
            except Exception as exc:
                log.error(
                    "key %s: its stored row cannot be read (%s); left out of the listing",
                    key_id,
                    type(exc).__name__,
                )
        return keys

    async def update_key(self, key_id: str, **attrs: Any) -> VirtualKey:
        self._check(attrs, KEY_FIELDS)
        if attrs.get("team_id"):  # by id or name; the key must keep the id
            attrs["team_id"] = (await self.get_team(attrs["team_id"])).id
        key = replace(await self.get_key(key_id), **attrs)
        await self._save(keys_table, key.id, _row(key))
        return key

    async def revoke_key(self, key_id: str) -> VirtualKey:
        key = await self.get_key(key_id)
        if key.revoked_at is None:
            key.revoked_at = datetime.now(UTC)
            await self._save(keys_table, key.id, {"revoked_at": key.revoked_at})
        return key

    async def rotate_key(self, key_id: str) -> tuple[VirtualKey, str]:
        """A new secret for the same key (same id, limits and spend); the old one stops."""
        key = await self.get_key(key_id)
        if key.revoked_at is not None:
            raise InvalidRequestError(f"key '{key_id}' is revoked; create a new one instead")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key.prefix, key.key_hash = plaintext[:12], hash_key(plaintext)
        await self._save(keys_table, key.id, {"prefix": key.prefix, "key_hash": key.key_hash})
        return key, plaintext

    # -- teams ---------------------------------------------------------------------------
    async def create_team(self, **attrs: Any) -> Team:
        self._check(attrs, LIMIT_FIELDS)
        team = Team(id=uuid.uuid4().hex, **attrs)
        async with self._writing() as conn:
            existing = (
                await conn.execute(select(teams_table.c.id).where(teams_table.c.name == team.name))
            ).first()
            if existing is not None:
                raise InvalidRequestError(f"a team named '{team.name}' exists", param="name")
            await conn.execute(teams_table.insert().values(**_row(team)))
        return team

    async def get_team(self, team_id: str) -> Team:
        """A team by id or by name."""
        query = select(teams_table).where(
            (teams_table.c.id == team_id) | (teams_table.c.name == team_id)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError(f"no team with id or name '{team_id}'", code="team_not_found")
        return Team(**_limited(row._mapping))

    async def list_teams(self) -> list[Team]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(teams_table).order_by(teams_table.c.name))
            return [Team(**_limited(r._mapping)) for r in rows]

    async def update_team(self, team_id: str, **attrs: Any) -> Team:
        self._check(attrs, LIMIT_FIELDS)
        team = replace(await self.get_team(team_id), **attrs)
        await self._save(teams_table, team.id, _row(team))
        return team

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _check(attrs: dict[str, Any], allowed: frozenset[str]) -> None:
        """Attributes the store has no column for are a programming error; what values are
        allowed is decided before a change reaches the store (``gateway.keys.admin``)."""
        unknown = sorted(set(attrs) - allowed)
        if unknown:
            raise InvalidRequestError(
                f"unknown attribute(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(sorted(allowed))}",
                param=unknown[0],
            )
        if attrs.get("budget_usd") is not None:
            attrs["budget_usd"] = Decimal(str(attrs["budget_usd"]))

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction that takes SQLite's write lock at BEGIN. Begun lazily, a
        transaction that reads and then writes fails at once ("database is locked") when the
        ledger's writer commits in between, instead of waiting its turn."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                yield conn

    async def _save(self, table: Table, row_id: str, values: dict[str, Any]) -> None:
        values = {k: v for k, v in values.items() if k != "id"}
        async with self._writing() as conn:
            await conn.execute(table.update().where(table.c.id == row_id).values(**values))


def _row(item: Limited) -> dict[str, Any]:
    row = {f.name: getattr(item, f.name) for f in fields(item)}
    row["budget_usd"] = None if item.budget_usd is None else format(item.budget_usd, "f")
    return row


def _limited(m: Any) -> dict[str, Any]:
    names = {f.name for f in fields(Limited)}
    out = {k: m[k] for k in names}
    out["budget_usd"] = None if m["budget_usd"] is None else Decimal(m["budget_usd"])
    out["created_at"] = _aware(m["created_at"])
    return out


def _key(m: Any) -> VirtualKey:
    extra = {k: m[k] for k in ("prefix", "key_hash", "team_id", "admin")}
    for name in ("expires_at", "revoked_at"):
        extra[name] = None if m[name] is None else _aware(m[name])
    return VirtualKey(**_limited(m), **extra)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
