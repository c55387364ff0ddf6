"""The admin API: virtual keys and teams over HTTP, for the master key or an admin key.

``/admin/keys`` and ``/admin/teams`` create, list, read and change the keys and teams kept in
the ledger's database. A key's plaintext appears in exactly two answers, its creation and its
rotation; listings show its prefix. Every change clears this process's key cache, so it holds
here at once and on the other replicas within ``auth.key_cache_seconds``. Money is a decimal
string, times are ISO 8601.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.responses import Response

from gateway.costs import usd_str
from gateway.engine import Engine
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway.keys import LIMIT_FIELDS, KeyStore, Limited, Team, VirtualKey
from gateway.ledger import GroupBy
from gateway.ledger.writer import describe
from gateway.limits import budget_period, period_start
from gateway.server.app import JSON_TYPE, Gatekeeper, error_response, validation_message

log = logging.getLogger("gateway.server.admin")
Handler = Callable[[Request, KeyStore], Awaitable[Response]]
M = TypeVar("M", bound=BaseModel)
Label = Annotated[str, Field(min_length=1, max_length=200)]


class TeamChange(BaseModel):
    """A PATCH body for a team: the fields sent are changed, the others kept. ``null`` lifts
    a limit (``rpm``, ``budget_usd``, …) or, for ``regions``, allows every region."""

    model_config = ConfigDict(extra="forbid")

    name: Label | None = None
    allowed_models: list[Label] = Field(default_factory=list)  # globs; empty: every model
    regions: list[Label] | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_parallel: int | None = Field(default=None, ge=1)
    budget_usd: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_period: Literal["daily", "weekly", "monthly", "total"] = "monthly"
    metadata: dict[str, Any] = Field(default_factory=dict)


class TeamSpec(TeamChange):
    """The body of ``POST /admin/teams``."""

    name: Label


class KeyChange(TeamChange):
    """A PATCH body for a key. ``team`` is a team's id or name (``null``: no team);
    ``expires_at`` (ISO 8601, UTC unless it says otherwise) or ``expires_in_days``."""

    team: Label | None = None
    admin: bool = False
    expires_at: datetime | None = None
    expires_in_days: float | None = Field(default=None, gt=0, le=36_500)


class KeySpec(KeyChange):
    """The body of ``POST /admin/keys``."""

    name: Label


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
        app.add_route(path, routes.guarded(handler), methods=[method])


class KeyAdmin:
    """What the admin API does to keys and teams, apart from HTTP: the routes below and the
    dashboard (``gateway.ui``) both call these, so both check and change things one way.
    Each change clears this process's key cache."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def new_key(self, store: KeyStore, spec: KeySpec) -> tuple[VirtualKey, str]:
        """A new key and its plaintext (to be shown once)."""
        attrs = await self._key_attrs(store, spec, partial=False)
        expires = attrs.get("expires_at")
        if expires is not None and expires <= datetime.now(UTC):
            raise InvalidRequestError(
                f"expires_at {expires.isoformat()} is in the past; a new key must expire "
                "later than now",
                param="expires_at",
            )
        key, plaintext = await store.create_key(**attrs)
        self.engine.auth.forget()
        return key, plaintext

    async def change_key(self, store: KeyStore, key_id: str, change: KeyChange) -> VirtualKey:
        """Change what ``change`` sets (a PATCH)."""
        await store.get_key(key_id)  # 404 before anything else
        key = await store.update_key(key_id, **await self._key_attrs(store, change, partial=True))
        self.engine.auth.forget()
        return key

    async def revoke(self, store: KeyStore, key_id: str) -> VirtualKey:
        key = await store.revoke_key(key_id)
        self.engine.auth.forget()
        return key

    async def rotate(self, store: KeyStore, key_id: str) -> tuple[VirtualKey, str]:
        key, plaintext = await store.rotate_key(key_id)
        self.engine.auth.forget()
        return key, plaintext

    async def new_team(self, store: KeyStore, spec: TeamSpec) -> Team:
        return await store.create_team(**_limit_attrs(spec, partial=False))

    async def change_team(self, store: KeyStore, ident: str, change: TeamChange) -> Team:
        """Change what ``change`` sets on the team with this id or name."""
        team = await _team(store, ident, param=None)
        attrs = _limit_attrs(change, partial=True)
        name = attrs.get("name")
        if name is not None and name != team.name:
            try:
                other = await store.get_team(name)
            except NotFoundError:
                other = None
            if other is not None:
                raise InvalidRequestError(f"a team named '{name}' exists", param="name")
        team = await store.update_team(team.id, **attrs)
        self.engine.auth.forget()
        return team

    async def _key_attrs(
        self, store: KeyStore, body: KeyChange, *, partial: bool
    ) -> dict[str, Any]:
        """The KeyStore attributes a key body asks for (a PATCH: only those it sent)."""
        attrs = _limit_attrs(body, partial=partial)
        sent = body.model_fields_set if partial else set(type(body).model_fields)
        if "team" in sent:
            attrs["team_id"] = (await _team(store, body.team)).id if body.team else None
        if "admin" in sent:
            attrs["admin"] = body.admin
        if {"expires_at", "expires_in_days"} <= body.model_fields_set:
            raise InvalidRequestError(
                "send expires_at or expires_in_days, not both", param="expires_in_days"
            )
        if body.expires_in_days is not None:
            attrs["expires_at"] = datetime.now(UTC) + timedelta(days=body.expires_in_days)
        elif "expires_at" in sent or "expires_in_days" in sent:
            at = body.expires_at
            attrs["expires_at"] = at if at is None or at.tzinfo else at.replace(tzinfo=UTC)
        return attrs

    async def spend(self, item: Limited, kind: str) -> dict[str, Any]:
        """What the key or team spent in its current budget period, and what is left.

        With a budget, the limits backend's count (what admission enforces, shared by every
        replica with Redis); without one, the ledger's — reading the backend for an
        unbudgeted scope would seed a count nothing keeps up to date."""
        now = datetime.now(UTC)
        period, resets = budget_period(item.budget_period, now)
        since = period_start(period)
        if item.budget_usd is not None:
            spent = await self.engine.limits.spent(item.scope_limits(kind))
        else:
            spent = await self._ledger_spend(kind, item.id, since, now)
        budget = item.budget_usd
        return {
            "period": item.budget_period,
            "since": since.isoformat(),
            "resets_at": resets.isoformat() if resets else None,
            "spent_usd": usd_str(spent),
            "budget_usd": None if budget is None else usd_str(budget),
            "remaining_usd": None if budget is None else usd_str(max(budget - spent, Decimal(0))),
        }

    async def _ledger_spend(self, kind: str, ident: str, since: datetime, now: datetime) -> Decimal:
        ledger = self.engine.ledger
        if ledger is None:
            return Decimal(0)
        until = now + timedelta(minutes=1)
        group: GroupBy = "key" if kind == "key" else "team"
        rows = await ledger.spend_report(
            group, since, until, key_id=ident if kind == "key" else None
        )
        return sum((r.cost_usd for r in rows if r.group == ident), Decimal(0))


class AdminRoutes(KeyAdmin):
    """The handlers. ``guarded`` does what they share: admin check, key store, errors."""

    def __init__(self, engine: Engine, gate: Gatekeeper) -> None:
        super().__init__(engine)
        self.gate = gate

    def guarded(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            try:
                store = await self._admit(request)
                return await handler(request, store)
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
            except _store_errors() as exc:
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

    async def _admit(self, request: Request) -> KeyStore:
        """The key store, if the caller is an admin (401, 403) and keys are on (503)."""
        if not self.engine.auth.required:
            raise _unavailable(
                "virtual keys need auth.master_key: without it the gateway checks no key, so "
                "there is nothing to administer; set auth.master_key (or GATEWAY_MASTER_KEY)",
                "auth_disabled",
            )
        principal = await self.gate.authenticate(request)
        if not principal.admin:
            raise PermissionDeniedError(
                "the admin API needs the master key or a key created with admin: true; "
                "this key is not an admin key",
                code="admin_required",
            )
        if self.engine.keys is None:
            raise _unavailable(
                "keys and teams live in the ledger's database, and the ledger is disabled "
                "(ledger.enabled: false); enable it to manage keys",
                "key_store_disabled",
            )
        return self.engine.keys

    # -- keys ----------------------------------------------------------------------------
    async def create_key(self, request: Request, store: KeyStore) -> Response:
        key, plaintext = await self.new_key(store, await self._body(request, KeySpec))
        return _json({**key_json(key), "key": plaintext}, status=201)

    async def list_keys(self, request: Request, store: KeyStore) -> Response:
        _only_params(request, "team")
        team = request.query_params.get("team")
        team_id = (await _team(store, team)).id if team else None
        keys = await store.list_keys(team_id)
        return _json({"object": "list", "data": [key_json(k) for k in keys]})

    async def show_key(self, request: Request, store: KeyStore) -> Response:
        key = await store.get_key(request.path_params["key_id"])
        return _json({**key_json(key), "spend": await self.spend(key, "key")})

    async def update_key(self, request: Request, store: KeyStore) -> Response:
        change = await self._body(request, KeyChange)
        key = await self.change_key(store, request.path_params["key_id"], change)
        return _json(key_json(key))

    async def revoke_key(self, request: Request, store: KeyStore) -> Response:
        return _json(key_json(await self.revoke(store, request.path_params["key_id"])))

    async def rotate_key(self, request: Request, store: KeyStore) -> Response:
        key, plaintext = await self.rotate(store, request.path_params["key_id"])
        return _json({**key_json(key), "key": plaintext})

    # -- teams ---------------------------------------------------------------------------
    async def create_team(self, request: Request, store: KeyStore) -> Response:
        team = await self.new_team(store, await self._body(request, TeamSpec))
        return _json(team_json(team), status=201)

    async def list_teams(self, request: Request, store: KeyStore) -> Response:
        _only_params(request)
        return _json({"object": "list", "data": [team_json(t) for t in await store.list_teams()]})

    async def show_team(self, request: Request, store: KeyStore) -> Response:
        team = await _team(store, request.path_params["team_id"], param=None)
        return _json({**team_json(team), "spend": await self.spend(team, "team")})

    async def update_team(self, request: Request, store: KeyStore) -> Response:
        team = await _team(store, request.path_params["team_id"], param=None)  # 404 first
        change = await self._body(request, TeamChange)
        return _json(team_json(await self.change_team(store, team.id, change)))

    # -- helpers -------------------------------------------------------------------------
    async def _body(self, request: Request, model: type[M]) -> M:
        raw = await self.gate.body(request)
        try:
            data = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"request body is not valid JSON ({exc.msg} at position {exc.pos})"
            ) from exc
        if not isinstance(data, dict):
            raise InvalidRequestError("request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise InvalidRequestError(message, param=param) from exc


def key_json(key: VirtualKey) -> dict[str, Any]:
    """A key's public view: its prefix, never its hash or plaintext."""
    return {"object": "key", **key.public()}


def team_json(team: Team) -> dict[str, Any]:
    return {"object": "team", **team.public()}


def _limit_attrs(body: TeamChange, *, partial: bool) -> dict[str, Any]:
    sent = body.model_fields_set if partial else set(type(body).model_fields)
    attrs = {name: getattr(body, name) for name in sent & LIMIT_FIELDS}
    if "name" in attrs and attrs["name"] is None:
        raise InvalidRequestError("name cannot be null", param="name")
    return attrs


async def _team(store: KeyStore, ident: str, param: str | None = "team") -> Team:
    try:
        return await store.get_team(ident)
    except NotFoundError as exc:
        exc.param = param
        raise


def _only_params(request: Request, *known: str) -> None:
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        expected = f"it takes {', '.join(known)}" if known else "it takes none"
        raise InvalidRequestError(
            f"unknown query parameter {unknown[0]!r}; {expected}", param=unknown[0]
        )


def _unavailable(message: str, code: str) -> GatewayError:
    return GatewayError(message, status=503, type="api_error", code=code)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON_TYPE)


def _store_errors() -> tuple[type[Exception], ...]:
    """What a failing key store raises. Redis's errors count only once the redis client is
    loaded (it is imported only with Redis configured); without it, none can occur."""
    module = sys.modules.get("redis.exceptions")
    redis_errors = (module.RedisError,) if module is not None else ()
    return (SQLAlchemyError, OSError, *redis_errors)
