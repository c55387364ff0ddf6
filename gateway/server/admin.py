"""The admin API: virtual keys and teams over HTTP, for the master key or an admin key.

``/admin/keys`` and ``/admin/teams`` create, list, read and change the keys and teams kept in
the ledger's database, by the rules of ``gateway.keys.admin``. A key's plaintext appears in
exactly two answers, its creation and its rotation; listings show its prefix. Every change
clears this process's key cache, so it holds here at once and on the other replicas within
``auth.key_cache_seconds``. Money is a decimal string, times are ISO 8601.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.responses import Response

from gateway.auth import Principal
from gateway.engine import Engine
from gateway.errors import GatewayError, InvalidRequestError, PermissionDeniedError
from gateway.governance.audit import actor_of, trail_of
from gateway.keys import (
    KeyAdmin,
    KeyChange,
    KeySpec,
    Team,
    TeamChange,
    TeamSpec,
    VirtualKey,
    key_store_disabled,
)
from gateway.keys.admin import budget_status
from gateway.keys.store import store_errors
from gateway.ledger.writer import describe
from gateway.server.http import Gatekeeper, error_response, json_body

log = logging.getLogger("gateway.server.admin")
Handler = Callable[[Request, KeyAdmin], Awaitable[Response]]


def add_admin_routes(app: FastAPI, engine: Engine, gate: Gatekeeper) -> None:
    """Register the ``/admin/keys`` and ``/admin/teams`` routes."""
    routes = AdminRoutes(engine, gate)
    table: list[tuple[str, str, Handler]] = [
        ("/admin/keys", "POST", routes.create_key),
        ("/admin/keys", "GET", routes.list_keys),
        ("/admin/keys/{key_id}", "GET", routes.show_key),
        ("/admin/keys/{key_id}", "PATCH", routes.update_key),
        ("/admin/keys/{key_id}/revoke", "POST", routes.revoke_key),
        ("/admin/keys/{key_id}/rotate", "POST", routes.rotate_key),
        ("/admin/teams", "POST", routes.create_team),
        ("/admin/teams", "GET", routes.list_teams),
        ("/admin/teams/{team_id}", "GET", routes.show_team),
        ("/admin/teams/{team_id}", "PATCH", routes.update_team),
    ]
    for path, method, handler in table:
        action = AUDITED.get(handler.__name__) if method != "GET" else None
        app.add_route(path, routes.guarded(handler, action), methods=[method])


# The audit trail's name for each act that changes something (reads are not recorded).
AUDITED = {
    "create_key": "key.create",
    "update_key": "key.update",
    "revoke_key": "key.revoke",
    "rotate_key": "key.rotate",
    "create_team": "team.create",
    "update_team": "team.update",
}


class AdminRoutes:
    """The handlers. ``guarded`` does what they share: admin check, key store, errors."""

    def __init__(self, engine: Engine, gate: Gatekeeper) -> None:
        self.engine = engine
        self.gate = gate

    def guarded(
        self, handler: Handler, action: str | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            response = await attempt(request)
            principal: Principal | None = getattr(request.state, "admin_principal", None)
            if action is not None and principal is not None:
                await audit_admin_act(self.engine, request, principal, action, response)
            return response

        async def attempt(request: Request) -> Response:
            try:
                admin = await self._admit(request)
                return await handler(request, admin)
            except GatewayError as exc:
                return error_response(exc)
            except IntegrityError as exc:
                return error_response(
                    GatewayError(
                        f"the change conflicts with what is stored ({describe(exc)})",
                        status=409,
                        type="invalid_request_error",
                        code="conflict",
                    )
                )
            except store_errors() as exc:
                log.warning("admin: the key store failed: %s", describe(exc))
                return error_response(
                    GatewayError(
                        f"the key store's database could not be reached ({describe(exc)}); "
                        "retry later",
                        status=503,
                        type="api_error",
                        code="key_store_unavailable",
                    )
                )

        return route

    async def _admit(self, request: Request) -> KeyAdmin:
        """The key admin, if the caller is an admin (401, 403) and keys are on (503)."""
        if not self.engine.auth.required:
            raise GatewayError(
                "virtual keys need auth.master_key: without it the gateway checks no key, so "
                "there is nothing to administer; set auth.master_key (or GATEWAY_MASTER_KEY)",
                status=503,
                type="api_error",
                code="auth_disabled",
            )
        principal = await self.gate.authenticate(request)
        request.state.admin_principal = principal  # who acted, for the audit trail
        if not principal.admin:
            raise PermissionDeniedError(
                "the admin API needs the master key or a key created with admin: true; "
                "this key is not an admin key",
                code="admin_required",
            )
        if self.engine.keys is None:
            raise key_store_disabled()
        return KeyAdmin(self.engine.keys, self.engine.auth.forget)

    async def _status(self, item: VirtualKey | Team) -> dict[str, Any]:
        kind: Literal["key", "team"] = "key" if isinstance(item, VirtualKey) else "team"
        return await budget_status(item, kind, self.engine.limits, self.engine.ledger)

    # -- keys ----------------------------------------------------------------------------
    async def create_key(self, request: Request, admin: KeyAdmin) -> Response:
        key, plaintext = await admin.new_key(await self.gate.model(request, KeySpec, empty=b"{}"))
        return with_plaintext(key, plaintext, status=201)

    async def list_keys(self, request: Request, admin: KeyAdmin) -> Response:
        _only_params(request, "team")
        team = request.query_params.get("team")
        team_id = (await admin.team(team)).id if team else None
        keys = await admin.store.list_keys(team_id)
        used = await self._last_used([k.id for k in keys])
        data = [
            {**listed_key(k), "last_used_at": _iso(used.get(k.id)) if used is not None else None}
            for k in keys
        ]
        return json_body({"object": "list", "data": data})

    async def _last_used(self, key_ids: list[str]) -> dict[str, datetime] | None:
        """When each key was last used, by the ledger (its newest call); None without a
        ledger or if the ledger cannot be read (the listing itself does not depend on it)."""
        ledger = self.engine.ledger
        if ledger is None or not key_ids:
            return None
        try:
            await ledger.caught_up()
            return await ledger.last_used(key_ids)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("admin: when keys were last used could not be read: %s", describe(exc))
            return None

    async def show_key(self, request: Request, admin: KeyAdmin) -> Response:
        key = await admin.store.get_key(request.path_params["key_id"])
        return json_body({**key_json(key), "spend": await self._status(key)})

    async def update_key(self, request: Request, admin: KeyAdmin) -> Response:
        change = await self.gate.model(request, KeyChange, empty=b"{}")
        key = await admin.change_key(request.path_params["key_id"], change)
        return json_body(key_json(key))

    async def revoke_key(self, request: Request, admin: KeyAdmin) -> Response:
        return json_body(key_json(await admin.revoke(request.path_params["key_id"])))

    async def rotate_key(self, request: Request, admin: KeyAdmin) -> Response:
        key, plaintext = await admin.rotate(request.path_params["key_id"])
        return with_plaintext(key, plaintext)

    # -- teams ---------------------------------------------------------------------------
    async def create_team(self, request: Request, admin: KeyAdmin) -> Response:
        team = await admin.new_team(await self.gate.model(request, TeamSpec, empty=b"{}"))
        return json_body(team_json(team), status=201)

    async def list_teams(self, request: Request, admin: KeyAdmin) -> Response:
        _only_params(request)
        teams = await admin.store.list_teams()
        return json_body({"object": "list", "data": [team_json(t) for t in teams]})

    async def show_team(self, request: Request, admin: KeyAdmin) -> Response:
        team = await admin.team(request.path_params["team_id"], param=None)
        return json_body({**team_json(team), "spend": await self._status(team)})

    async def update_team(self, request: Request, admin: KeyAdmin) -> Response:
        team = await admin.team(request.path_params["team_id"], param=None)  # 404 first
        change = await self.gate.model(request, TeamChange, empty=b"{}")
        return json_body(team_json(await admin.change_team(team.id, change)))


async def audit_admin_act(
    engine: Engine, request: Request, principal: Principal, action: str, response: Response
) -> None:
    """Append one admin act to the audit trail: who, on what (the key or team id), the
    outcome, and the fields the request set (never a key's plaintext: requests hold none)."""
    trail = trail_of(engine.ledger)
    if trail is None:
        return
    target = request.path_params.get("key_id") or request.path_params.get("team_id")
    outcome = "ok"
    answer: Any = None
    with contextlib.suppress(orjson.JSONDecodeError):
        answer = orjson.loads(bytes(getattr(response, "body", b"") or b"null"))
    if response.status_code >= 400:
        error = answer.get("error") if isinstance(answer, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        outcome = f"refused {response.status_code}" + (f" {code}" if code else "")
    elif target is None and isinstance(answer, dict):
        target = answer.get("id")  # what was created
    detail: dict[str, Any] = {"actor_name": principal.name}
    try:
        body = orjson.loads(await request.body())
    except Exception:  # no body, not JSON, or streamed and already consumed
        body = None
    if isinstance(body, dict) and body:
        # Accepted fields are the spec's (no secret among them); of a refused body, which
        # may hold anything, only the names.
        detail["fields"] = body if outcome == "ok" else sorted(body)
    await trail.record(
        actor_of(principal.key_id),
        action,
        str(target) if target is not None else None,
        outcome,
        request.client.host if request.client else None,
        detail,
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def key_json(key: VirtualKey) -> dict[str, Any]:
    """A key's public view: its prefix, never its hash or plaintext."""
    return {"object": "key", **key.public()}


def with_plaintext(key: VirtualKey, plaintext: str, status: int = 200) -> Response:
    """A key just made (or rotated) with its plaintext, the only time it is shown: should
    its full view fail to render, the plaintext is still returned with the key's id."""
    try:
        return json_body({**key_json(key), "key": plaintext}, status=status)
    except Exception:
        log.exception("admin: key %s: its view cannot be rendered", key.id)
        return json_body({**_key_stub(key), "key": plaintext}, status=status)


def listed_key(key: VirtualKey) -> dict[str, Any]:
    """A key in a listing: its public view, or, if that cannot be rendered, its id, name and
    prefix flagged ``unreadable`` (one damaged key must not fail the listing)."""
    view = key_json(key)
    try:
        orjson.dumps(view)
    except TypeError:  # e.g. metadata nested past what JSON output allows
        log.error("admin: key %s cannot be shown in full; listed as unreadable", key.id)
        return _key_stub(key)
    return view


def _key_stub(key: VirtualKey) -> dict[str, Any]:
    return {
        "object": "key",
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "unreadable": True,
    }


def team_json(team: Team) -> dict[str, Any]:
    return {"object": "team", **team.public()}


def _only_params(request: Request, *known: str) -> None:
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        expected = f"it takes {', '.join(known)}" if known else "it takes none"
        raise InvalidRequestError(
            f"unknown query parameter {unknown[0]!r}; {expected}", param=unknown[0]
        )
