"""Who is calling: the master key, or a virtual key (and its team), as a ``Principal``.

Key lookups are cached per process for ``auth.key_cache_seconds`` (default 5 s), so a
revocation, expiry or limit change made through any replica takes effect everywhere within
that time, and a hot key costs one dictionary lookup, not a database query.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.errors import AuthenticationError, DependencyUnavailableError, PermissionDeniedError
from gateway.keys.store import KeyStore, VirtualKey, hash_key, store_errors
from gateway.ledger.writer import describe
from gateway.limits.base import ScopeLimits

NEGATIVE_CACHE_SECONDS = 1.0  # unknown keys: short, so a key just created works at once
log = logging.getLogger("gateway.auth")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, with everything admission and routing need to know about it."""

    key_id: str | None  # None: the master key (or no auth configured)
    name: str
    team_id: str | None = None
    team: str | None = None
    admin: bool = False
    allowed_models: tuple[tuple[str, ...], ...] = ()  # key's and team's globs; all must allow
    regions: frozenset[str] | None = None  # None: any region
    limits: tuple[ScopeLimits, ...] = ()
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def is_master(self) -> bool:
        return self.key_id is None

    def may_use(self, model: str) -> bool:
        return all(
            any(fnmatch.fnmatchcase(model, g) for g in globs)
            for globs in self.allowed_models
            if globs
        )

    def check_model(self, model: str, available: Iterable[str]) -> None:
        """Raise 403 naming the allowed models when ``model`` is not among them."""
        if self.may_use(model):
            return
        allowed = [m for m in available if self.may_use(m)]
        raise PermissionDeniedError(
            f"this key may not use model '{model}'; allowed: "
            f"{', '.join(allowed) or 'none of the configured models'}",
            param="model",
            code="model_not_allowed",
        )

    def authorize(
        self,
        model: str,
        fallbacks: list[str],
        regions: frozenset[str] | None,
        available: Iterable[str],
    ) -> tuple[list[str], frozenset[str] | None]:
        """What this caller may route a request for ``model`` to: the fallbacks it may use
        and the regions it may reach (``regions``: what the request asked, None for any);
        403 if it may not use ``model`` at all. The one place that decides it."""
        if self.is_master:
            return fallbacks, regions
        self.check_model(model, available)
        allowed = [m for m in fallbacks if self.may_use(m)]
        if self.regions is not None:
            regions = self.regions if regions is None else regions & self.regions
        return allowed, regions


MASTER = Principal(key_id=None, name="master", admin=True)


class Authenticator:
    """Turns a bearer token into a Principal (or raises 401)."""

    def __init__(
        self, master_key: str | None, store: KeyStore | None, cache_seconds: float = 5.0
    ) -> None:
        self.master_key = master_key.encode() if master_key else None
        self.store = store
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None, str | None]] = {}
        self._pending: dict[str, asyncio.Future[tuple[float, Principal | None, str | None]]] = {}

    @property
    def required(self) -> bool:
        """Keys are required once a master key is configured (virtual keys need one too)."""
        return self.master_key is not None

    async def authenticate(self, token: str | None) -> Principal:
        if not self.required:
            return MASTER
        if not token:
            raise AuthenticationError(
                "missing API key: send it as 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        if self.master_key is not None and hmac.compare_digest(token.encode(), self.master_key):
            return MASTER
        digest = hash_key(token)
        cached = self._cache.get(digest)
        if cached is None or cached[0] < time.monotonic():
            # One lookup per key at a time: when a busy key's entry expires, the requests
            # arriving meanwhile wait for that lookup instead of each querying the database.
            lookup = self._pending.get(digest)
            if lookup is None:
                lookup = asyncio.ensure_future(self._fetch(digest, token))
                self._pending[digest] = lookup
                lookup.add_done_callback(lambda _: self._pending.pop(digest, None))
            cached = await asyncio.shield(lookup)
        _, principal, refusal = cached
        if principal is None:
            raise AuthenticationError(refusal or "invalid API key: check the key you were given")
        return principal

    async def _fetch(self, digest: str, token: str) -> tuple[float, Principal | None, str | None]:
        try:
            principal, refusal = await self._lookup(token)
        except store_errors() as exc:
            # Not cached: the next request asks the database again.
            log.warning("auth: the key database could not be reached: %s", describe(exc))
            raise DependencyUnavailableError(
                "the key database could not be reached to check this API key; retry in a moment",
                retry_after=2,
            ) from None
        ttl = self.cache_seconds if principal is not None or refusal else NEGATIVE_CACHE_SECONDS
        cached = (time.monotonic() + ttl, principal, refusal)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[digest] = cached
        return cached

    async def _lookup(self, token: str) -> tuple[Principal | None, str | None]:
        if self.store is None:
            return None, None
        key = await self.store.find_key(token)
        if key is None:
            return None, None
        why = key.unusable_because(datetime.now(UTC))
        if why is not None:
            return None, f"this API key {why}; ask for a new one"
        return await self._principal(key), None

    async def _principal(self, key: VirtualKey) -> Principal:
        assert self.store is not None
        limits = [key.scope_limits("key")]
        globs = [tuple(key.allowed_models)]
        regions = set(key.regions) if key.regions is not None else None
        team_name = None
        tags = dict(key.metadata)
        if key.team_id:
            team = await self.store.get_team(key.team_id)
            team_name = team.name
            limits.append(team.scope_limits("team"))
            globs.append(tuple(team.allowed_models))
            if team.regions is not None:
                regions = set(team.regions) if regions is None else regions & set(team.regions)
            tags = {**team.metadata, **tags}
        return Principal(
            key_id=key.id,
            name=key.name,
            team_id=key.team_id,
            team=team_name,
            admin=key.admin,
            allowed_models=tuple(globs),
            regions=None if regions is None else frozenset(regions),
            limits=tuple(s for s in limits if s.limited),
            tags=tags,
        )

    def forget(self) -> None:
        """Drop cached lookups (this process only), e.g. right after an admin change."""
        self._cache.clear()
