"""Who is calling: the master key, or a virtual key (and its team), as a ``Principal``.

Key lookups are cached per process for ``auth.key_cache_seconds`` (default 5 s), so a
revocation, expiry or limit change made through any replica takes effect everywhere within
that time, and a hot key costs one dictionary lookup, not a database query.

Wrong keys are cheap to refuse: a key found unknown is remembered for a second, and each
client address may cause ``auth.failed_lookups_per_minute`` lookups of keys that turn out
unknown (a token bucket, per process); past that, a key this process has not seen valid is
refused with 429 and ``Retry-After`` without a database query, while keys it has seen valid
keep working from that address.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.errors import (
    AuthenticationError,
    DependencyUnavailableError,
    PermissionDeniedError,
    RateLimitError,
)
from gateway.keys.store import KeyStore, VirtualKey, hash_key, store_errors
from gateway.ledger.writer import describe
from gateway.limits.base import ScopeLimits

NEGATIVE_CACHE_SECONDS = 1.0  # unknown keys: short, so a key just created works at once
log = logging.getLogger("gateway.auth")


class FailedLookups:
    """A token bucket per client address: how many lookups of unknown keys it may cause,
    ``per_minute`` at most, refilled continuously. Bounded: it forgets everyone rather than
    grow past ``MAX_ADDRESSES``."""

    MAX_ADDRESSES = 100_000

    def __init__(self, per_minute: int) -> None:
        per_minute = max(1, per_minute)
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, as of)

    def wait(self, address: str) -> float:
        """Seconds until ``address`` may cause another lookup (0: now)."""
        tokens = self._tokens(address)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, address: str) -> None:
        if len(self._buckets) >= self.MAX_ADDRESSES:
            self._buckets.clear()
        self._buckets[address] = (max(0.0, self._tokens(address) - 1), time.monotonic())

    def _tokens(self, address: str) -> float:
        tokens, since = self._buckets.get(address, (self.capacity, time.monotonic()))
        return min(self.capacity, tokens + (time.monotonic() - since) * self.rate)


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
        regions: frozenset[str] | None,
        available: Iterable[str],
    ) -> tuple[Callable[[str], bool] | None, frozenset[str] | None]:
        """What this caller may route a request for ``model`` to, the one place that decides
        it: a test every model of its Plan must pass — fallbacks, context-window fallbacks
        and per-request fallbacks alike (None: any model) — and the regions it may reach
        (``regions``: what the request asked, None for any). 403 if it may not use ``model``
        itself; a fallback it may not use is left out of the Plan, not an error."""
        if self.is_master:
            return None, regions
        self.check_model(model, available)
        if self.regions is not None:
            regions = self.regions if regions is None else regions & self.regions
        return self.may_use, regions


MASTER = Principal(key_id=None, name="master", admin=True)


class Authenticator:
    """Turns a bearer token into a Principal (or raises 401)."""

    def __init__(
        self,
        master_key: str | None,
        store: KeyStore | None,
        cache_seconds: float = 5.0,
        failed_lookups_per_minute: int = 30,
    ) -> None:
        self.master_key = master_key.encode() if master_key else None
        self.store = store
        self.cache_seconds = cache_seconds
        self.failed_lookups = FailedLookups(failed_lookups_per_minute)
        self._cache: dict[str, tuple[float, Principal | None, str | None]] = {}
        self._pending: dict[str, asyncio.Future[tuple[float, Principal | None, str | None]]] = {}

    @property
    def required(self) -> bool:
        """Keys are required once a master key is configured (virtual keys need one too)."""
        return self.master_key is not None

    async def authenticate(self, token: str | None, *, address: str | None = None) -> Principal:
        """The caller of ``token``; ``address`` (the client's) has lookups of unknown keys
        throttled."""
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
            if address is not None and (cached is None or cached[1] is None):
                self._refuse_if_throttled(address)  # a key not seen valid: maybe a guess
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
            if address is not None and refusal is None:
                self.failed_lookups.failed(address)
            raise AuthenticationError(refusal or "invalid API key: check the key you were given")
        return principal

    def _refuse_if_throttled(self, address: str) -> None:
        wait = self.failed_lookups.wait(address)
        if wait > 0:
            raise RateLimitError(
                "too many requests with unknown API keys from this address; check the key "
                f"and retry in {math.ceil(wait)} s",
                code="too_many_failed_authentications",
                headers={"retry-after": str(math.ceil(wait))},
                retryable=False,
            )

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
