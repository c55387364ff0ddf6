"""``GuardedLimits``: what happens when the limits backend (Redis) cannot be reached.

Admission applies ``limits.on_backend_error``: ``closed`` refuses the call with a 503 naming
the backend; ``open`` admits it without a reservation (logged, counted); the default,
``closed_for_budgets``, refuses a call any of whose scopes has a budget and admits one whose
scopes only have rate or parallel limits. An admission whose answer was lost may have been
counted by Redis after all, so a refused call's reservation is released later, in the
background, until its TTL would have ended it anyway.

Settling never gives up silently: it is retried at once with a short backoff; if the backend
is still away, the settlement (the call's cost, the one its ledger record carries) joins a
queue that one background task retries with backoff until Redis takes it, and that the
gateway's shutdown drains for a bounded time. While the queue holds anything, admission
lands it first (or counts as the backend being away): a reservation that expired while its
settlement waited must not leave room for calls its spend has already used. A queued
release (a call that spent nothing) is dropped once its reservation has expired by itself.
Every failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from gateway.errors import DependencyUnavailableError
from gateway.limits.base import Admission, Limits, ScopeLimits, budget_period

log = logging.getLogger("gateway.limits")

OnBackendError = Literal["closed", "open", "closed_for_budgets"]
LOG_INTERVAL = 5.0  # seconds between two log lines about the same kind of failure


def backend_errors() -> tuple[type[Exception], ...]:
    """What an unreachable backend raises: socket errors and timeouts, Redis's errors (once
    its client is loaded), the ledger database's (a budget's first use reads its spend)."""
    errors: list[type[Exception]] = [OSError]
    for module, name in (("redis.exceptions", "RedisError"), ("sqlalchemy.exc", "SQLAlchemyError")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


@dataclass(slots=True)
class PendingEnd:
    """A settlement or release the backend has not taken yet."""

    admission: Admission
    tokens: int | None  # None: a release (nothing used)
    cost: Decimal | None
    expires: float  # monotonic time the reservation ends by itself (matters for a release)


@dataclass(slots=True)
class GuardStats:
    """Counts for metrics and logs."""

    admitted_open: int = 0  # admitted without a reservation, the backend being away
    refused: int = 0  # refused (503), the backend being away
    settle_failures: int = 0  # failed tries to settle or release
    settled_late: int = 0  # settlements that landed from the queue
    lost: int = 0  # settlements never landed (queue full, shutdown)


class GuardedLimits:
    """A limits backend whose failures are answered, never dropped: see the module doc."""

    def __init__(
        self,
        backend: Limits,
        *,
        dependency: str = "Redis",
        on_error: OnBackendError = "closed_for_budgets",
        reservation_ttl: float = 900.0,
        drain_seconds: float = 10.0,
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
        max_pending: int = 100_000,
    ) -> None:
        self.backend = backend
        self.dependency = dependency
        self.on_error = on_error
        self.reservation_ttl = reservation_ttl
        self.drain_seconds = drain_seconds
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_pending = max_pending
        self.stats = GuardStats()
        self._pending: OrderedDict[str, PendingEnd] = OrderedDict()
        self._retrier: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._landing = asyncio.Lock()  # one pass over the queue at a time
        self._logged: dict[str, float] = {}

    @property
    def pending(self) -> int:
        """Settlements and releases waiting for the backend."""
        return len(self._pending)

    # -- admission -----------------------------------------------------------------------
    async def admit(
        self, request_id: str, scopes: tuple[ScopeLimits, ...], *, tokens: int, cost: Decimal
    ) -> Admission:
        try:
            # Spend the backend missed lands before anything new is admitted against it: a
            # reservation may have expired meanwhile, its spend not yet counted.
            if self._pending and not await self._try_pending():
                raise ConnectionError("settlements queued earlier could not be landed")
            return await self.backend.admit(request_id, scopes, tokens=tokens, cost=cost)
        except backend_errors() as exc:
            return self._unreachable(request_id, scopes, exc)

    def _unreachable(
        self, request_id: str, scopes: tuple[ScopeLimits, ...], exc: Exception
    ) -> Admission:
        now = datetime.now(UTC)
        periods = {
            s.scope: budget_period(s.budget_period, now)[0]
            for s in scopes
            if s.budget_usd is not None
        }
        # Counts nothing: settling it adds the call's spend, releasing it frees whatever
        # the lost admission may have held.
        admission = Admission(request_id, scopes, 0, 0, 0, periods)
        refuse = self.on_error == "closed" or (
            self.on_error == "closed_for_budgets" and bool(periods)
        )
        names = ", ".join(s.scope for s in scopes)
        dependency = self.dependency
        if type(exc).__module__.startswith("sqlalchemy"):
            dependency = "the ledger database (a budget's spend so far is read from it)"
        if refuse:
            self.stats.refused += 1
            self._log(
                "refused",
                "limits: %s unreachable (%s); refusing calls of %s (on_backend_error: %s), "
                "%d refused so far",
                dependency,
                _describe(exc),
                names,
                self.on_error,
                self.stats.refused,
            )
            self._queue(PendingEnd(admission, None, None, self._expiry()))
            raise DependencyUnavailableError(
                f"the gateway cannot check this key's limits: {dependency} cannot be "
                "reached; retry in a moment",
                retry_after=2,
            ) from None
        self.stats.admitted_open += 1
        self._log(
            "admitted",
            "limits: %s unreachable (%s); admitting calls of %s without counting them "
            "(on_backend_error: %s), %d admitted so far",
            dependency,
            _describe(exc),
            names,
            self.on_error,
            self.stats.admitted_open,
        )
        return admission

    # -- the end of a call ---------------------------------------------------------------
    async def settle(self, admission: Admission, *, tokens: int, cost: Decimal | None) -> None:
        await self._end(PendingEnd(admission, tokens, cost, self._expiry()))

    async def release(self, admission: Admission) -> None:
        await self._end(PendingEnd(admission, None, None, self._expiry()))

    async def _end(self, item: PendingEnd) -> None:
        """Settle or release now, with a few quick retries; else queue it."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3),
                wait=wait_exponential(multiplier=self.retry_initial, max=0.5),
                retry=retry_if_exception_type(backend_errors()),
                before_sleep=lambda _: self._count_failure(),
                reraise=True,
            ):
                with attempt:
                    await self._apply(item)
        except backend_errors() as exc:
            self._count_failure()
            self._log(
                "settle",
                "limits: %s unreachable (%s); settlement of %s queued until it is back, %d waiting",
                self.dependency,
                _describe(exc),
                item.admission.request_id,
                len(self._pending) + 1,
            )
            self._queue(item)

    async def _apply(self, item: PendingEnd) -> None:
        if item.tokens is None:
            await self.backend.release(item.admission)
        else:
            await self.backend.settle(item.admission, tokens=item.tokens, cost=item.cost)

    def _count_failure(self) -> None:
        self.stats.settle_failures += 1

    def _expiry(self) -> float:
        return time.monotonic() + self.reservation_ttl

    # -- the queue -----------------------------------------------------------------------
    def _queue(self, item: PendingEnd) -> None:
        self._pending[item.admission.request_id] = item
        while len(self._pending) > self.max_pending:
            _, oldest = self._pending.popitem(last=False)
            self._lose(oldest, f"more than {self.max_pending} settlements waiting")
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.get_running_loop().create_task(
                self._retry_pending(), name="limits-settle-retry"
            )
        self._wake.set()

    async def _retry_pending(self) -> None:
        """Retry what is queued, oldest first, backing off while the backend is away."""
        delay = self.retry_initial
        while self._pending:
            if await self._try_pending():
                delay = self.retry_initial
                continue
            self._wake.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            delay = min(delay * 2, self.retry_max)

    async def _try_pending(self) -> bool:
        """One pass over the queue; raises (admission) or returns False (the retrier) as soon
        as the backend fails again."""
        async with self._landing:
            return await self._land_pending()

    async def _land_pending(self) -> bool:
        landed = 0
        for request_id, item in list(self._pending.items()):
            if item.tokens is None and time.monotonic() >= item.expires:
                self._pending.pop(request_id, None)  # Redis has let it go by itself
                continue
            try:
                await self._apply(item)
            except backend_errors():
                self._count_failure()
                return False
            self._pending.pop(request_id, None)
            if item.tokens is not None:
                landed += 1
        if landed:
            self.stats.settled_late += landed
            log.warning(
                "limits: %s is back; %d queued settlements landed (%d in all)",
                self.dependency,
                landed,
                self.stats.settled_late,
            )
        return True

    def _lose(self, item: PendingEnd, reason: str) -> None:
        if item.tokens is not None:
            self.stats.lost += 1
            log.error(
                "limits: settlement of %s lost (%s); %s's budget counts will be short of its "
                "spend until the period ends",
                item.admission.request_id,
                reason,
                self.dependency,
            )

    # -- pass-through and life -----------------------------------------------------------
    async def spent(self, scope: ScopeLimits) -> Decimal:
        return await self.backend.spent(scope)

    async def aclose(self) -> None:
        """Land what is queued (within ``drain_seconds``), then close the backend."""
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
        if self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.drain_seconds):
                    await self._retry_pending()
        for item in list(self._pending.values()):
            self._lose(item, f"{self.dependency} still unreachable at shutdown")
        self._pending.clear()
        await self.backend.aclose()

    def _log(self, kind: str, message: str, *args: object) -> None:
        """Warn about a kind of failure at most every LOG_INTERVAL seconds."""
        now = time.monotonic()
        if now - self._logged.get(kind, -LOG_INTERVAL) >= LOG_INTERVAL:
            self._logged[kind] = now
            log.warning(message, *args)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
