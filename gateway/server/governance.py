"""Data governance over HTTP, for the master key: the audit trail (``GET /admin/audit``) and
erasure by person (``POST /admin/erasure``, see ``gateway.governance.erasure``).

``GET /admin/audit`` lists entries in chain order with filters (``since``/``until`` ISO 8601,
``actor``, ``action`` — ``key`` matches every ``key.*`` —, ``target``), pages with ``after``
(the last id seen; the answer's ``next_after``) and ``limit`` (1-1000, default 100), and
answers CSV with ``format=csv``. ``GET /admin/audit/verify`` walks the chain.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from gateway.engine import Engine
from gateway.errors import GatewayError, InvalidRequestError, PermissionDeniedError
from gateway.governance.audit import AuditTrail, trail_of, write_audit_csv
from gateway.governance.erasure import erase
from gateway.governance.retention import RetentionTask
from gateway.ledger.ledger import ledger_disabled
from gateway.server.http import Gatekeeper, error_response, json_body

log = logging.getLogger("gateway.governance")

Handler = Callable[[Request, AuditTrail], Awaitable[Response]]
AUDIT_PARAMS = ("since", "until", "actor", "action", "target", "after", "limit", "format")


def retention_task(engine: Engine) -> RetentionTask | None:
    """The background retention rounds, started whenever there is a ledger (stored responses
    always expire; other kinds of data when the ledger has a retention setting)."""
    if engine.ledger is None:
        return None
    task = RetentionTask(engine.ledger.engine, engine.config.ledger)
    if not task.configured:
        return None
    task.start()
    return task


def add_governance_routes(app: FastAPI, engine: Engine, gate: Gatekeeper) -> None:
    """Register ``/admin/audit`` and ``/admin/audit/verify``."""
    routes = GovernanceRoutes(engine, gate)
    app.add_route("/admin/audit", routes.guarded(routes.audit), methods=["GET"])
    app.add_route("/admin/audit/verify", routes.guarded(routes.verify), methods=["GET"])
    app.add_route("/admin/erasure", routes.guarded(routes.erasure), methods=["POST"])


class GovernanceRoutes:
    def __init__(self, engine: Engine, gate: Gatekeeper) -> None:
        self.engine = engine
        self.gate = gate

    def guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            try:
                principal = await self.gate.authenticate(request)
                if not principal.is_master or not self.engine.auth.required:
                    raise PermissionDeniedError(
                        "the audit trail is for the master key only", code="master_key_required"
                    )
                trail = trail_of(self.engine.ledger)
                if trail is None:
                    raise ledger_disabled()
                return await handler(request, trail)
            except GatewayError as exc:
                return error_response(exc)

        return route

    async def audit(self, request: Request, trail: AuditTrail) -> Response:
        query = request.query_params
        unknown = [name for name in query if name not in AUDIT_PARAMS]
        if unknown:
            raise InvalidRequestError(
                f"unknown query parameter {unknown[0]!r}; it takes {', '.join(AUDIT_PARAMS)}",
                param=unknown[0],
            )
        fmt = query.get("format", "json")
        if fmt not in ("json", "csv"):
            raise InvalidRequestError("format is json or csv", param="format")
        limit = _int(query.get("limit"), "limit", 100)
        if not 1 <= limit <= 1000:
            raise InvalidRequestError("limit is from 1 to 1000", param="limit")
        entries = await trail.entries(
            since=_time(query.get("since"), "since"),
            until=_time(query.get("until"), "until"),
            actor=query.get("actor"),
            action=query.get("action"),
            target=query.get("target"),
            after_id=_int(query.get("after"), "after", 0),
            limit=limit,
        )
        next_after = entries[-1].id if len(entries) == limit else None
        if fmt == "csv":
            out = io.StringIO()
            write_audit_csv(entries, out)
            headers = {"content-disposition": 'attachment; filename="audit.csv"'}
            if next_after is not None:
                headers["x-next-after"] = str(next_after)
            return Response(out.getvalue(), media_type="text/csv", headers=headers)
        body: dict[str, Any] = {
            "object": "list",
            "data": [e.public() for e in entries],
            "next_after": next_after,
        }
        return json_body(body)

    async def verify(self, request: Request, trail: AuditTrail) -> Response:
        result = await trail.verify()
        body = {
            "ok": result.ok,
            "checked": result.checked,
            "first_id": result.first_id,
            "broken_id": result.broken_id,
            "problem": result.problem,
        }
        return json_body(body, status=200 if result.ok else 409)

    async def erasure(self, request: Request, trail: AuditTrail) -> Response:
        body = await self.gate.json(request)
        user, key_id, tag = _erasure_subject(body)
        ledger = self.engine.ledger
        assert ledger is not None  # guarded: the trail lives in the ledger's database
        await ledger.caught_up()  # this process's records of the person are stored first
        address = request.client.host if request.client else None
        target = key_id if key_id is not None else (f"tag:{tag[0]}" if tag else None)
        try:
            report = await erase(ledger.engine, user=user, key_id=key_id, tag=tag)
        except Exception:
            await trail.record("master", "erasure", target, "failed", address, {})
            raise
        answer = report.public()
        answer["cache_entries_flushed"] = await self._flush_cache()
        detail = dict(answer)
        detail.pop("content")
        # Never the person's id itself: the trail would keep what was erased.
        await trail.record("master", "erasure", target, "ok", address, detail)
        return json_body(answer)

    async def _flush_cache(self) -> int | None:
        """The response cache keeps answers by a hash of the request within a tenant, so the
        person's entries cannot be picked out: an erasure empties it (it is only a saving;
        answers are produced afresh). None: no cache; a store that cannot be reached is
        logged and reported as None too, its entries expiring with their TTL."""
        cache = self.engine.cache
        if cache is None:
            return None
        try:
            return await cache.clear()
        except Exception as exc:
            log.warning("erasure: the response cache could not be emptied: %s", exc)
            return None


def _erasure_subject(body: dict[str, Any]) -> tuple[str | None, str | None, tuple[str, Any] | None]:
    known = ("user", "key_id", "tag")
    unknown = [k for k in body if k not in known]
    if unknown:
        raise InvalidRequestError(
            f"unknown field {unknown[0]!r}; erasure takes one of user, key_id, tag",
            param=unknown[0],
        )
    given = [k for k in known if body.get(k) not in (None, "", {})]
    if len(given) != 1:
        raise InvalidRequestError(
            'name exactly one person: {"user": "<end-user id>"}, {"key_id": "<key id>"} or '
            '{"tag": {"<metadata name>": <value>}}'
        )
    field = given[0]
    value = body[field]
    if field == "tag":
        if not isinstance(value, dict) or len(value) != 1:
            raise InvalidRequestError("tag is one metadata name and its value", param="tag")
        ((name, tagged),) = value.items()
        return None, None, (str(name), tagged)
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field} is a string", param=field)
    return (value, None, None) if field == "user" else (None, value, None)


def _int(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"{name} must be a whole number", param=name) from None


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(
            f"{name} must be an ISO 8601 time, e.g. 2026-01-31T00:00:00Z", param=name
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at
