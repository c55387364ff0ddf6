"""The audit trail: every administrative act, appended to a hash chain in the ledger's database.

Each entry says when, who (``master``, ``key:<id>`` with the key's name, ``signal``, ``cli``),
what (``key.create``, ``config.reload``, ``ui.login``, …), on what, with which outcome and from
which address, plus a JSON ``detail`` (the fields changed; a reload's diff, secrets masked).
It stores the hash of the entry before it and its own hash over both, so editing, removing or
reordering an entry breaks the chain, and ``verify`` says where. No secret or key plaintext is
ever written: callers pass ids and masked values only.

Appends are serialised across workers and replicas by the database (SQLite's write lock, a
PostgreSQL table lock held for the short insert transaction), so the chain stays linear.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import SecretStr
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.db import SQLITE_IMMEDIATE
from gateway.ledger.ledger import Ledger
from gateway.ledger.schema import metadata

log = logging.getLogger("gateway.governance.audit")

GENESIS = "0" * 64  # the "previous hash" of the very first entry

# In the ledger's MetaData; migration 0008 creates it.
audit_table = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String, nullable=False),
    Column("action", String, nullable=False),
    Column("target", String),
    Column("outcome", String, nullable=False),
    Column("source", String),
    Column("detail", Text, nullable=False),  # canonical JSON, hashed as stored
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_at", "at"),
)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    source: str | None
    detail: str  # JSON text
    prev_hash: str
    hash: str

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "source": self.source,
            "detail": orjson.loads(self.detail),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class Verification:
    """What ``verify`` found: ``ok``, how many entries it checked, the first broken one."""

    ok: bool
    checked: int
    first_id: int | None = None
    broken_id: int | None = None
    problem: str | None = None


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def entry_hash(
    prev_hash: str,
    entry_id: int,
    at: datetime,
    actor: str,
    action: str,
    target: str | None,
    outcome: str,
    source: str | None,
    detail: str,
) -> str:
    """SHA-256 over the previous hash and every field of the entry, its id and time included."""
    fields = [entry_id, _utc(at).isoformat(), actor, action, target, outcome, source, detail]
    payload = prev_hash.encode() + b"\n" + orjson.dumps(fields)
    return hashlib.sha256(payload).hexdigest()


def _row_entry(row: Any) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=_utc(row.at),
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        source=row.source,
        detail=row.detail,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


class AuditTrail:
    """Append to, read and verify the audit log in the ledger's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def append(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        outcome: str = "ok",
        source: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Add one entry at the end of the chain."""
        body = orjson.dumps(dict(detail or {}), option=orjson.OPT_SORT_KEYS).decode()
        table = audit_table
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
            async with conn.begin():
                if conn.dialect.name == "postgresql":
                    # One appender at a time, readers unaffected; released at commit.
                    await conn.execute(text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))
                last = (
                    await conn.execute(
                        select(table.c.id, table.c.hash).order_by(table.c.id.desc()).limit(1)
                    )
                ).first()
                entry_id = 1 if last is None else int(last.id) + 1
                prev = GENESIS if last is None else str(last.hash)
                at = datetime.now(UTC)
                digest = entry_hash(
                    prev, entry_id, at, actor, action, target, outcome, source, body
                )
                await conn.execute(
                    table.insert().values(
                        id=entry_id,
                        at=at,
                        actor=actor,
                        action=action,
                        target=target,
                        outcome=outcome,
                        source=source,
                        detail=body,
                        prev_hash=prev,
                        hash=digest,
                    )
                )
        return AuditEntry(entry_id, at, actor, action, target, outcome, source, body, prev, digest)

    async def record(
        self,
        actor: str,
        action: str,
        target: str | None = None,
        outcome: str = "ok",
        source: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """``append``, logging instead of raising: the act it records has already happened."""
        try:
            await self.append(actor, action, target, outcome, source, detail)
        except Exception:
            log.exception("audit: could not record %s on %s by %s", action, target, actor)

    async def entries(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries in chain order, filtered; ``after_id`` pages on from the last one seen."""
        table = audit_table
        query = select(table).where(table.c.id > after_id)
        if since is not None:
            query = query.where(table.c.at >= since)
        if until is not None:
            query = query.where(table.c.at < until)
        if actor is not None:
            query = query.where(table.c.actor == actor)
        if action is not None:
            # "key" matches key.create, key.revoke, …
            query = query.where(
                (table.c.action == action) | table.c.action.like(f"{_like(action)}.%", "\\")
            )
        if target is not None:
            query = query.where(table.c.target == target)
        query = query.order_by(table.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_row_entry(row) for row in rows]

    async def newest(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        """The newest entries first (those with an id below ``before``, if given)."""
        query = select(audit_table)
        if before is not None:
            query = query.where(audit_table.c.id < before)
        query = query.order_by(audit_table.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_row_entry(row) for row in rows]

    async def _all(self, batch: int = 1000) -> AsyncIterator[AuditEntry]:
        after = -1
        while True:
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(audit_table)
                        .where(audit_table.c.id > after)
                        .order_by(audit_table.c.id)
                        .limit(batch)
                    )
                ).all()
            for row in rows:
                yield _row_entry(row)
            if len(rows) < batch:
                return
            after = rows[-1].id

    async def verify(self) -> Verification:
        """Walk the chain: each entry's hash must match its fields and the hash before it, and
        ids must follow one another. The oldest entry kept anchors the chain (retention may
        have removed those before it)."""
        checked = 0
        first: int | None = None
        prev: AuditEntry | None = None
        async for entry in self._all():
            if prev is None:
                first = entry.id
            else:
                if entry.id != prev.id + 1:
                    return Verification(
                        False, checked, first, entry.id, f"entry {prev.id + 1} is missing"
                    )
                if entry.prev_hash != prev.hash:
                    return Verification(
                        False, checked, first, entry.id, "it does not follow the entry before it"
                    )
            expected = entry_hash(
                entry.prev_hash,
                entry.id,
                entry.at,
                entry.actor,
                entry.action,
                entry.target,
                entry.outcome,
                entry.source,
                entry.detail,
            )
            if expected != entry.hash:
                return Verification(
                    False, checked, first, entry.id, "its content does not match its hash"
                )
            checked += 1
            prev = entry
        return Verification(True, checked, first)

    async def prune(self, before: datetime, batch: int = 1000) -> int:
        """Delete entries older than ``before``, oldest first, in batches; the oldest entry
        kept then anchors the chain."""
        table = audit_table
        removed = 0
        while True:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
                async with conn.begin():
                    oldest = (
                        select(table.c.id)
                        .where(table.c.at < before)
                        .order_by(table.c.id)
                        .limit(batch)
                        .subquery()
                    )
                    top = (await conn.execute(select(func.max(oldest.c.id)))).scalar()
                    if top is None:
                        return removed
                    done = await conn.execute(delete(table).where(table.c.id <= top))
                    removed += done.rowcount or 0


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- what a config change looks like in the trail --------------------------------------------

_SECRET_NAME = re.compile(r"key|secret|token|password|authorization|credential", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]*@", re.I)
MASK = "***"


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out)
    else:
        out[path] = value


def _masked(path: str, value: Any) -> Any:
    if value is None:
        return None
    last = path.rsplit(".", 1)[-1]
    if isinstance(value, SecretStr) or _SECRET_NAME.search(last) or ".headers." in f".{path}.":
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", value)
    if isinstance(value, list | tuple):
        return [_masked(path, v) for v in value]
    if isinstance(value, dict):
        return {k: _masked(f"{path}.{k}", v) for k, v in value.items()}
    if isinstance(value, bool | int | float):
        return value
    return str(value)  # Decimal, date, Path, …: as text


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed between two configs (``model_dump()``: secrets as ``SecretStr``, so a new
    secret counts as a change), by dotted path: ``{"path": {"old": …, "new": …}}``, with
    secrets, secret-looking names, headers and URL passwords masked."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(dict(old), "", before)
    _flatten(dict(new), "", after)
    changes: dict[str, Any] = {}
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a != b:
            changes[path] = {"old": _masked(path, a), "new": _masked(path, b)}
    return changes


# --- for the faces that record acts ---------------------------------------------------------


def trail_of(ledger: Ledger | None) -> AuditTrail | None:
    """The audit trail in ``ledger``'s database (None without a ledger: nowhere to keep it)."""
    return None if ledger is None else AuditTrail(ledger.engine)


def actor_of(key_id: str | None) -> str:
    """``master`` for the master key, else ``key:<id>`` (the key's name goes in the detail)."""
    return "master" if key_id is None else f"key:{key_id}"


CSV_COLUMNS = ("id", "at", "actor", "action", "target", "outcome", "source", "detail")
CSV_COLUMNS_CHAINED = (*CSV_COLUMNS, "prev_hash", "hash")


def write_audit_csv(entries: list[AuditEntry], out: Any, *, header: bool = True) -> None:
    """Entries as CSV rows (``detail`` as its JSON text, hashes included, so an auditor can
    check the chain from the export alone)."""
    import csv

    writer = csv.writer(out)
    if header:
        writer.writerow(CSV_COLUMNS_CHAINED)
    for e in entries:
        writer.writerow(
            [
                e.id,
                e.at.isoformat(),
                e.actor,
                e.action,
                e.target or "",
                e.outcome,
                e.source or "",
                e.detail,
                e.prev_hash,
                e.hash,
            ]
        )
