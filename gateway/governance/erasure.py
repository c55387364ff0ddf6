"""Erasure by person: the identifying data the ledger holds about someone is replaced, while
every amount stays, so budgets, reports and invoices still add up.

A person is found by their end-user id (the request's ``user`` / ``x-gateway-user``), by the
key they called with, or by a metadata tag on their requests. Each distinct end-user id found
is replaced by a fresh random pseudonym (``erased-…``) in the spend records and in the per-user
daily roll-up, and the records' metadata tags and kept prompts and answers are emptied. Token
counts, costs, times, models and keys stay. The pseudonym cannot be traced back to the id:
nothing keeps the mapping.

Prompts and answers are kept only for keys with ``log_content`` (the record's ``content``, and
the access log, which the log pipeline keeps) and as stored Responses API answers: the
records' copy is emptied here, and the person's stored responses (made for that end user, by
that key, or by requests with that tag) are deleted outright. Other stores — the response
cache — erase their own entries through their own hooks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from gateway.ledger.db import SQLITE_IMMEDIATE
from gateway.ledger.responses import erase_stored_responses
from gateway.ledger.schema import spend_daily_users, spend_records

By = Literal["user", "key_id", "tag"]
SCAN_PAGE = 2000


@dataclass(slots=True)
class ErasureReport:
    """What an erasure changed."""

    by: By
    records: int = 0  # spend records whose identifying fields were replaced
    end_users: int = 0  # distinct end-user ids pseudonymised
    daily_user_rows: int = 0  # rows of the per-user daily roll-up re-labelled
    tags_cleared: int = 0  # records whose metadata tags were emptied
    stored_responses: int = 0  # stored Responses API answers deleted
    pseudonyms: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "object": "erasure",
            "by": self.by,
            "records": self.records,
            "end_users": self.end_users,
            "daily_user_rows": self.daily_user_rows,
            "tags_cleared": self.tags_cleared,
            "stored_responses": self.stored_responses,
            "pseudonyms": self.pseudonyms,
            "content": "prompts and answers kept for content logging were emptied and the "
            "person's stored responses deleted",
        }


def pseudonym() -> str:
    return "erased-" + secrets.token_hex(8)


async def erase(
    engine: AsyncEngine,
    *,
    user: str | None = None,
    key_id: str | None = None,
    tag: tuple[str, Any] | None = None,
) -> ErasureReport:
    """Erase one person's identifying data, found by exactly one of ``user``, ``key_id`` or
    ``tag`` (a metadata name and value)."""
    given = [name for name, v in (("user", user), ("key_id", key_id), ("tag", tag)) if v]
    if len(given) != 1:
        raise ValueError("erase by exactly one of user, key_id or tag")
    by: By = given[0]  # type: ignore[assignment]
    report = ErasureReport(by)
    r = spend_records.c
    async with engine.connect() as conn:
        conn = await conn.execution_options(**{SQLITE_IMMEDIATE: True})
        async with conn.begin():
            if tag is not None:
                ids, users = await _tagged(conn, tag)
                where: ColumnElement[bool] = (
                    r.request_id.in_(ids) if ids else r.request_id.is_(None)
                )
            else:
                where = r.end_user == user if user is not None else r.key_id == key_id
                users = set(
                    (
                        await conn.execute(
                            select(r.end_user).where(where, r.end_user.is_not(None)).distinct()
                        )
                    ).scalars()
                )
            emptied = update(spend_records).where(where).values(tags={}, content=None)
            matched = await conn.execute(emptied)
            report.records = report.tags_cleared = matched.rowcount or 0
            d = spend_daily_users.c
            for name in sorted(users):
                alias = pseudonym()
                report.pseudonyms.append(alias)
                # The person's id goes everywhere it appears (by key: under that key), in
                # the records and in the per-user roll-up, also on days whose records
                # retention has already deleted.
                record_scope = r.end_user == name
                rollup_scope = d.end_user == name
                if key_id is not None:
                    record_scope = and_(record_scope, r.key_id == key_id)
                    rollup_scope = and_(rollup_scope, d.key_id == key_id)
                await conn.execute(update(spend_records).where(record_scope).values(end_user=alias))
                rolled = await conn.execute(
                    update(spend_daily_users).where(rollup_scope).values(end_user=alias)
                )
                report.daily_user_rows += rolled.rowcount or 0
            report.end_users = len(users)
    report.stored_responses = await erase_stored_responses(
        engine, user=user, key_id=key_id, tag=tag
    )
    return report


async def _tagged(conn: Any, tag: tuple[str, Any]) -> tuple[list[str], set[str]]:
    """The records whose metadata has ``tag`` (name, value), and their end users; read in
    pages, as tags are free-form JSON and no index covers them."""
    name, value = tag
    r = spend_records.c
    ids: list[str] = []
    users: set[str] = set()
    after = ""
    while True:
        rows = (
            await conn.execute(
                select(r.request_id, r.end_user, r.tags)
                .where(r.request_id > after)
                .order_by(r.request_id)
                .limit(SCAN_PAGE)
            )
        ).all()
        for row in rows:
            tags = row.tags
            if isinstance(tags, dict) and name in tags and tags[name] == value:
                ids.append(row.request_id)
                if row.end_user is not None:
                    users.add(row.end_user)
        if len(rows) < SCAN_PAGE:
            return ids, users
        after = rows[-1].request_id
