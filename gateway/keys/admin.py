"""The one home of the rules for virtual keys and teams.

What may be created or changed is checked here, the same way whichever door a change comes
through: the admin API (``/admin/keys``, ``/admin/teams``), the dashboard's forms, the library's
``client.keys`` in-process, and the ``llm-gateway keys|teams`` commands. The pydantic models are
the rules (a name of 1 to 200 characters once trimmed, without control characters; metadata
without NUL; limits of at least 1, a finite budget of at least 0, a known budget period, an
expiry in the future when a key is created and at most 36,500 days away, a team that exists);
``KeyAdmin`` applies them to the store and tells the gateway's key cache.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from gateway.errors import GatewayError, InvalidRequestError, NotFoundError
from gateway.facts import usd_str
from gateway.keys.store import LIMIT_FIELDS, KeyStore, Limited, Team, VirtualKey
from gateway.ledger.ledger import Ledger
from gateway.limits import Limits, budget_period, period_start

MAX_EXPIRY_DAYS = 36_500


def _no_control_characters(value: str) -> str:
    # A NUL is refused by PostgreSQL and the rest make a name hard to show or type.
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (such as NUL or a line break)")
    return value


def _no_nul(value: Any) -> Any:
    """``value`` (metadata), if no text in it contains NUL (PostgreSQL cannot store one)."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if isinstance(value, dict):
        for k, v in value.items():
            _no_nul(k)
            _no_nul(v)
    elif isinstance(value, list):
        for item in value:
            _no_nul(item)
    return value


Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_control_characters),
]
BudgetPeriod = Literal["daily", "weekly", "monthly", "total"]


class TeamChange(BaseModel):
    """A change to a team (a PATCH): the fields given are changed, the others kept. ``None``
    lifts a limit (``rpm``, ``budget_usd``, …) or, for ``regions``, allows every region."""

    model_config = ConfigDict(extra="forbid")

    name: Label | None = None
    allowed_models: list[Label] = Field(default_factory=list)  # globs; empty: every model
    regions: list[Label] | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_parallel: int | None = Field(default=None, ge=1)
    budget_usd: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    budget_period: BudgetPeriod = "monthly"
    metadata: Annotated[dict[str, Any], AfterValidator(_no_nul)] = Field(default_factory=dict)


class TeamSpec(TeamChange):
    """A new team."""

    name: Label


class KeyChange(TeamChange):
    """A change to a key. ``team`` is a team's id or name (``None``: no team);
    ``expires_at`` (ISO 8601, UTC unless it says otherwise) or ``expires_in_days``."""

    team: Label | None = None
    admin: bool = False
    expires_at: datetime | None = None
    expires_in_days: float | None = Field(default=None, gt=0, le=MAX_EXPIRY_DAYS)


class KeySpec(KeyChange):
    """A new key."""

    name: Label


def key_store_disabled() -> GatewayError:
    """The answer when keys are asked for and the ledger, which holds them, is off (503)."""
    return GatewayError(
        "keys and teams live in the ledger's database, and the ledger is disabled "
        "(ledger.enabled: false); enable it to manage keys",
        status=503,
        type="api_error",
        code="key_store_disabled",
    )


class KeyAdmin:
    """Creates and changes keys and teams by the rules above. ``on_change`` runs after each
    change (a gateway drops its cached key lookups, so the change holds here at once)."""

    def __init__(self, store: KeyStore, on_change: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.on_change = on_change

    # -- keys ------------------------------------------------------------------------------
    async def new_key(self, spec: KeySpec) -> tuple[VirtualKey, str]:
        """A new key and its plaintext (to be shown once)."""
        attrs = await self._key_attrs(spec, partial=False)
        expires = attrs.get("expires_at")
        if expires is not None and expires <= datetime.now(UTC):
            raise InvalidRequestError(
                f"expires_at {expires.isoformat()} is in the past; a new key must expire "
                "later than now",
                param="expires_at",
            )
        key, plaintext = await self.store.create_key(**attrs)
        self.on_change()
        return key, plaintext

    async def change_key(self, key_id: str, change: KeyChange) -> VirtualKey:
        """Change what ``change`` sets (a PATCH); an expiry in the past expires the key now."""
        await self.store.get_key(key_id)  # 404 before anything else
        key = await self.store.update_key(key_id, **await self._key_attrs(change, partial=True))
        self.on_change()
        return key

    async def revoke(self, key_id: str) -> VirtualKey:
        key = await self.store.revoke_key(key_id)
        self.on_change()
        return key

    async def rotate(self, key_id: str) -> tuple[VirtualKey, str]:
        key, plaintext = await self.store.rotate_key(key_id)
        self.on_change()
        return key, plaintext

    # -- teams -----------------------------------------------------------------------------
    async def new_team(self, spec: TeamSpec) -> Team:
        team = await self.store.create_team(**_limit_attrs(spec, partial=False))
        self.on_change()
        return team

    async def change_team(self, ident: str, change: TeamChange) -> Team:
        """Change what ``change`` sets on the team with this id or name."""
        team = await self.team(ident, param=None)
        attrs = _limit_attrs(change, partial=True)
        name = attrs.get("name")
        if name is not None and name != team.name:
            await self._name_is_free(name)
        team = await self.store.update_team(team.id, **attrs)
        self.on_change()
        return team

    async def team(self, ident: str, param: str | None = "team") -> Team:
        """A team by id or name (404 naming ``param`` if there is none)."""
        try:
            return await self.store.get_team(ident)
        except NotFoundError as exc:
            exc.param = param
            raise

    # -- helpers ---------------------------------------------------------------------------
    async def _name_is_free(self, name: str) -> None:
        try:
            await self.store.get_team(name)
        except NotFoundError:
            return
        raise InvalidRequestError(f"a team named '{name}' exists", param="name")

    async def _key_attrs(self, body: KeyChange, *, partial: bool) -> dict[str, Any]:
        """The store attributes a key body asks for (a PATCH: only those it sent)."""
        attrs = _limit_attrs(body, partial=partial)
        sent = body.model_fields_set if partial else set(type(body).model_fields)
        if "team" in sent:
            attrs["team_id"] = (await self.team(body.team)).id if body.team else None
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


def _limit_attrs(body: TeamChange, *, partial: bool) -> dict[str, Any]:
    sent = body.model_fields_set if partial else set(type(body).model_fields)
    attrs = {name: getattr(body, name) for name in sent & LIMIT_FIELDS}
    if "name" in attrs and attrs["name"] is None:
        raise InvalidRequestError("name cannot be null", param="name")
    return attrs


async def budget_status(
    item: Limited, kind: Literal["key", "team"], limits: Limits, ledger: Ledger | None
) -> dict[str, Any]:
    """What a key or team spent in its current budget period, and what is left.

    With a budget, the limits backend's count (what admission enforces, shared by every
    replica with Redis); without one, the ledger's — reading the backend for an unbudgeted
    scope would seed a count nothing keeps up to date."""
    period, resets = budget_period(item.budget_period, datetime.now(UTC))
    since = period_start(period)
    if item.budget_usd is not None:
        spent = await limits.spent(item.scope_limits(kind))
    elif ledger is not None:
        spent = await ledger.scope_spend(kind, item.id, since)
    else:
        spent = Decimal(0)
    budget = item.budget_usd
    return {
        "period": item.budget_period,
        "since": since.isoformat(),
        "resets_at": resets.isoformat() if resets else None,
        "spent_usd": usd_str(spent),
        "budget_usd": None if budget is None else usd_str(budget),
        "remaining_usd": None if budget is None else usd_str(max(budget - spent, Decimal(0))),
    }
