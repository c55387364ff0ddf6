"""What was spent, over HTTP: ``GET /v1/spend`` (a report grouped by key, team, user, model,
provider or day) and ``GET /v1/spend/records`` (the records, page by page), as JSON or CSV.

Both read the ledger's database, so they answer for every replica that writes to it. Money is
a decimal string in JSON (never a float), as in the ``x-gateway-cost`` header.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import orjson
from fastapi import FastAPI, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response, StreamingResponse

from gateway.auth import Principal
from gateway.engine import Engine
from gateway.errors import GatewayError, InvalidRequestError, PermissionDeniedError
from gateway.facts import usd_str
from gateway.keys.names import group_names
from gateway.ledger.filters import RecordFilter, StatusFilter
from gateway.ledger.ledger import Ledger, ledger_disabled
from gateway.ledger.periods import FORMS, PeriodError, report_period
from gateway.ledger.records import SpendRecord
from gateway.ledger.reports import (
    CSV_TYPE,
    GROUPS,
    MAX_PAGE,
    GroupBy,
    SpendRow,
    decode_cursor,
    report_csv,
    write_records_csv,
)
from gateway.ledger.writer import describe
from gateway.server.http import JSON_TYPE, Gatekeeper, error_response

log = logging.getLogger("gateway.server.spend")
FORMATS = ("json", "csv")
DEFAULT_PAGE = 100
EXPORT_PAGE = 1000


def spend_scope(request: Request, principal: Principal) -> str | None:
    """The key id whose spend this caller may read; None means every key's.

    The one place that decides who reads what: the master key (or a gateway without auth) and
    admin keys read everything; any other key reads only its own spend, and the routes refuse
    a ``key_id`` naming another key.
    """
    if principal.is_master or principal.admin:
        return None
    return principal.key_id


def add_spend_routes(app: FastAPI, engine: Engine, gate: Gatekeeper) -> None:
    """Register ``/v1/spend`` and ``/v1/spend/records`` (and the same without ``/v1``)."""
    routes = SpendRoutes(engine, gate)
    for prefix in ("/v1", ""):
        app.add_route(f"{prefix}/spend", routes.report, methods=["GET"])
        app.add_route(f"{prefix}/spend/records", routes.records, methods=["GET"])


class SpendRoutes:
    """The two handlers: authenticate, read the query, read the ledger, answer."""

    def __init__(self, engine: Engine, gate: Gatekeeper) -> None:
        self.engine = engine
        self.gate = gate

    async def report(self, request: Request) -> Response:
        try:
            ledger, scope = await self._admit(request)
            query = SpendQuery(request, scope)
            group_by = cast(GroupBy, query.choice("group_by", GROUPS, "model"))
            since, until = query.period()
            key_id = query.key_id()
            csv = query.choice("format", FORMATS, "json") == "csv"
            query.done()
            await ledger.caught_up()
            rows = await ledger.spend_report(group_by, since, until, key_id)
            savings = await ledger.cache_savings(since, until, key_id)
            keys = self.engine.keys
            names = await group_names(keys, group_by) if keys is not None else None
        except GatewayError as exc:
            return error_response(exc)
        except (SQLAlchemyError, OSError) as exc:
            return error_response(unreadable(exc))
        if csv:
            return StreamingResponse(
                iter([report_csv(rows, group_by, names)]),
                media_type=CSV_TYPE,
                headers={"content-disposition": f'attachment; filename="spend-by-{group_by}.csv"'},
            )
        body = {
            "object": "spend.report",
            "group_by": group_by,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "data": [
                {
                    "group": row.group,
                    **({"name": names.get(row.group or "")} if names is not None else {}),
                    **sums_json(row),
                }
                for row in rows
            ],
            "total": sums_json(SpendRow.total(rows)),
            "savings": {
                "cache_hits": savings.cache_hits,
                "saved_usd": usd_str(savings.saved_usd),
                "batch_requests": savings.batch_requests,
                "batch_cost_usd": usd_str(savings.batch_cost_usd),
                "batch_saved_usd": usd_str(savings.batch_saved_usd),
            },
        }
        return Response(orjson.dumps(body), media_type=JSON_TYPE)

    async def records(self, request: Request) -> Response:
        try:
            ledger, scope = await self._admit(request)
            query = SpendQuery(request, scope)
            since, until = query.period()
            key_id = query.key_id()
            csv = query.choice("format", FORMATS, "json") == "csv"
            limit = query.integer("limit", DEFAULT_PAGE, 1, MAX_PAGE)
            cursor = query.cursor()
            filters = query.filters()
            if csv and (query.given("limit") or cursor is not None):
                raise InvalidRequestError(
                    "limit and cursor page the JSON list; format=csv exports every record "
                    "in [since, until) in one response",
                    param="limit" if query.given("limit") else "cursor",
                )
            query.done()
            await ledger.caught_up()
            page = await ledger.spend_records(
                since, until, key_id, EXPORT_PAGE if csv else limit, cursor, filters
            )
        except GatewayError as exc:
            return error_response(exc)
        except (SQLAlchemyError, OSError) as exc:
            return error_response(unreadable(exc))
        if csv:
            return StreamingResponse(
                export_csv(ledger, page.records, page.next_cursor, since, until, key_id, filters),
                media_type=CSV_TYPE,
                headers={"content-disposition": 'attachment; filename="spend-records.csv"'},
            )
        body = {
            "object": "list",
            "data": [record_json(record) for record in page.records],
            "next_cursor": page.next_cursor,
        }
        return Response(orjson.dumps(body), media_type=JSON_TYPE)

    async def _admit(self, request: Request) -> tuple[Ledger, str | None]:
        """The ledger and the key the caller may read (None: all); 401, 403 or 404 if not."""
        principal = await self.gate.authenticate(request)
        scope = spend_scope(request, principal)
        if self.engine.ledger is None:
            raise ledger_disabled()
        return self.engine.ledger, scope


class SpendQuery:
    """The query string of a spend request, read parameter by parameter. Each problem is a
    400 naming its parameter; ``done`` refuses parameters nobody read (a misspelt
    ``groupby=key`` must not silently report by model)."""

    def __init__(self, request: Request, scope: str | None) -> None:
        self.scope = scope
        self.params = request.query_params
        self.read: list[str] = []

    def get(self, name: str) -> str | None:
        self.read.append(name)
        values = self.params.getlist(name)
        if len(values) > 1:
            raise InvalidRequestError(
                f"{name} is given {len(values)} times; give it once", param=name
            )
        return values[0] if values and values[0] != "" else None

    def given(self, name: str) -> bool:
        return self.params.get(name, "") != ""

    def choice(self, name: str, allowed: Collection[str], default: str) -> str:
        value = self.get(name)
        if value is None:
            return default
        if value not in allowed:
            raise InvalidRequestError(
                f"{name} must be one of {', '.join(allowed)}, not {value!r}", param=name
            )
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        if not value.isdigit() or not low <= int(value) <= high:
            raise InvalidRequestError(
                f"{name} must be a whole number from {low} to {high}, not {value!r}", param=name
            )
        return int(value)

    def period(self) -> tuple[datetime, datetime]:
        """``since`` and ``until``: 7d / 24h / 30m before now, ISO dates or timestamps;
        by default the 30 days before now."""
        try:
            return report_period(self.get("since"), self.get("until"))
        except PeriodError as exc:
            raise InvalidRequestError(str(exc), param=exc.param) from None

    def key_id(self) -> str | None:
        """The key to report on: the caller's own when it may read only that (see
        ``spend_scope``), else ``key_id`` if given, else every key."""
        asked = self.get("key_id")
        if self.scope is None:
            return asked
        if asked is not None and asked != self.scope:
            raise PermissionDeniedError(
                "this key may read only its own spend; leave out key_id or give its own",
                param="key_id",
                code="key_id_not_allowed",
            )
        return self.scope

    def filters(self) -> RecordFilter:
        """``team``, ``model``, ``deployment``, ``status`` (ok, error or a status code) and
        ``cost_above`` (USD): the records to list."""
        given = self.get("status")
        status: StatusFilter | None = None
        if given in ("ok", "error"):
            status = "ok" if given == "ok" else "error"
        elif given is not None:
            if not given.isdigit() or not 100 <= int(given) <= 599:
                raise InvalidRequestError(
                    f"status must be ok, error or an HTTP status code, not {given!r}",
                    param="status",
                )
            status = int(given)
        cost_above = self.get("cost_above")
        try:
            above = None if cost_above is None else Decimal(cost_above)
        except ArithmeticError:
            above = None
        if cost_above is not None and (above is None or not above.is_finite()):
            raise InvalidRequestError(
                f"cost_above must be an amount in USD such as 0.01, not {cost_above!r}",
                param="cost_above",
            )
        return RecordFilter(
            team=self.get("team"),
            model=self.get("model"),
            deployment=self.get("deployment"),
            status=status,
            cost_above=above,
        )

    def cursor(self) -> str | None:
        cursor = self.get("cursor")
        if cursor is not None:
            try:
                decode_cursor(cursor)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), param="cursor") from None
        return cursor

    def done(self) -> None:
        unknown = [name for name in self.params if name not in self.read]
        if unknown:
            raise InvalidRequestError(
                f"unknown parameter {unknown[0]!r}; this endpoint takes "
                f"{', '.join(dict.fromkeys(self.read))} (since and until: {FORMS})",
                param=unknown[0],
            )


def unreadable(exc: BaseException) -> GatewayError:
    log.warning("spend: reading the ledger failed: %s", describe(exc))
    return GatewayError(
        f"the spend ledger's database could not be read ({describe(exc)}); retry later",
        status=503,
        type="api_error",
        code="ledger_unavailable",
    )


def sums_json(row: SpendRow) -> dict[str, Any]:
    return {
        "requests": row.requests,
        "errors": row.errors,
        "prompt_tokens": row.prompt_tokens,
        "cached_tokens": row.cached_tokens,
        "completion_tokens": row.completion_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        # null when every request's cost is unknown; else the known costs' sum, a lower bound
        # when unknown_cost_requests is not 0.
        "cost_usd": None if row.cost is None else usd_str(row.cost),
        "unknown_cost_requests": row.unknown_cost_requests,
    }


_RECORD_FIELDS = tuple(f.name for f in fields(SpendRecord) if f.name != "attempt_log")


def record_json(record: SpendRecord) -> dict[str, Any]:
    """A record as JSON: every field, timestamps in ISO-8601 UTC, ``cost_usd`` a decimal
    string or null (unknown)."""
    out = {name: getattr(record, name) for name in _RECORD_FIELDS}
    out["cost_usd"] = None if record.cost_usd is None else usd_str(record.cost_usd)
    if record.adjusted_cost_usd is not None:
        out["adjusted_cost_usd"] = usd_str(record.adjusted_cost_usd)
    if record.saved_usd is not None:
        out["saved_usd"] = usd_str(record.saved_usd)
    out["attempt_log"] = [
        {
            "deployment": a.deployment,
            "provider": a.provider,
            "model": a.model,
            "started_at": a.started_at,
            "latency_ms": a.latency_ms,
            "status": a.status,
            "error_type": a.error_type,
            "billed": a.billed,
        }
        for a in record.attempt_log
    ]
    return out


async def export_csv(
    ledger: Ledger,
    first: list[SpendRecord],
    cursor: str | None,
    since: datetime,
    until: datetime,
    key_id: str | None,
    filters: RecordFilter | None = None,
) -> AsyncIterator[str]:
    """The records as CSV, a page at a time. A page that cannot be read ends the response
    without its final chunk, so the client sees an incomplete download, not a short file."""
    records = first
    header = True
    while True:
        out = io.StringIO()
        write_records_csv(records, out, header=header)
        yield out.getvalue()
        if cursor is None:
            return
        header = False
        try:
            page = await ledger.spend_records(since, until, key_id, EXPORT_PAGE, cursor, filters)
        except Exception as exc:
            log.error("spend: CSV export cut short: %s", describe(exc))
            raise
        records, cursor = page.records, page.next_cursor
