"""Key and team changes made outside the HTTP faces — ``llm-gateway keys`` and the library's
``client.keys`` — go on the audit trail too: a ``KeyAdmin`` that records each change it makes
(or is refused) with the actor it was made for (``cli``, ``library``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.errors import GatewayError
from gateway.governance.audit import AuditTrail
from gateway.keys import KeyAdmin, KeyChange, KeySpec, KeyStore, Team, TeamChange, TeamSpec
from gateway.keys.store import VirtualKey

T = TypeVar("T")


class AuditedKeyAdmin(KeyAdmin):
    def __init__(
        self, store: KeyStore, actor: str, on_change: Callable[[], None] = lambda: None
    ) -> None:
        super().__init__(store, on_change)
        self.actor = actor
        self.trail = AuditTrail(store.engine)

    async def _audited(
        self,
        action: str,
        target: str | None,
        fields: dict[str, Any] | None,
        work: Awaitable[T],
        made: Callable[[T], str] | None = None,
    ) -> T:
        try:
            result = await work
        except GatewayError as exc:
            outcome = f"refused {exc.status}" + (f" {exc.code}" if exc.code else "")
            names = {"fields": sorted(fields)} if fields else {}
            await self.trail.record(self.actor, action, target, outcome, None, names)
            raise
        if target is None and made is not None:
            target = made(result)
        await self.trail.record(self.actor, action, target, "ok", None, {"fields": fields or {}})
        return result

    async def new_key(self, spec: KeySpec) -> tuple[VirtualKey, str]:
        fields = spec.model_dump(mode="json", exclude_unset=True)
        work = super().new_key(spec)
        return await self._audited("key.create", None, fields, work, lambda made: made[0].id)

    async def change_key(self, key_id: str, change: KeyChange) -> VirtualKey:
        fields = change.model_dump(mode="json", exclude_unset=True)
        return await self._audited("key.update", key_id, fields, super().change_key(key_id, change))

    async def revoke(self, key_id: str) -> VirtualKey:
        return await self._audited("key.revoke", key_id, None, super().revoke(key_id))

    async def rotate(self, key_id: str) -> tuple[VirtualKey, str]:
        return await self._audited("key.rotate", key_id, None, super().rotate(key_id))

    async def new_team(self, spec: TeamSpec) -> Team:
        fields = spec.model_dump(mode="json", exclude_unset=True)
        work = super().new_team(spec)
        return await self._audited("team.create", None, fields, work, lambda team: team.id)

    async def change_team(self, ident: str, change: TeamChange) -> Team:
        fields = change.model_dump(mode="json", exclude_unset=True)
        return await self._audited("team.update", ident, fields, super().change_team(ident, change))
