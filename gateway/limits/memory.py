"""Limits for one gateway process, in memory (the embedded default).

The RPM and TPM windows are sliding-window counters (the previous minute's count, weighted
by how much of it still overlaps the last 60 s, plus the current minute's), the same
algorithm the Redis backend runs in Lua. Admission checks every scope before it reserves
anything, with no ``await`` in between, so it is atomic on the event loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from gateway.limits.base import (
    WINDOW,
    Admission,
    Period,
    ScopeLimits,
    SeedSpend,
    budget_error,
    budget_period,
    rate_error,
    reset_text,
    to_units,
    to_usd,
)


class SlidingWindow:
    """Counts per 60-second window; ``count`` estimates the last 60 seconds."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def count(self, now: float) -> float:
        window = int(now // WINDOW)
        elapsed = (now % WINDOW) / WINDOW
        return self.counts.get(window - 1, 0) * (1 - elapsed) + self.counts.get(window, 0)

    def add(self, now: float, amount: int) -> int:
        window = int(now // WINDOW)
        self.counts[window] = self.counts.get(window, 0) + amount
        for old in [w for w in self.counts if w < window - 1]:
            del self.counts[old]
        return window

    def retry_after(self, now: float, limit: int, amount: int) -> float:
        """Seconds until ``amount`` more fits under ``limit``."""
        window = int(now // WINDOW)
        current = self.counts.get(window, 0)
        previous = self.counts.get(window - 1, 0)
        if current + amount > limit or previous == 0:
            return WINDOW - (now % WINDOW)
        needed = 1 - (limit - current - amount) / previous
        return max(0.0, (needed - (now % WINDOW) / WINDOW) * WINDOW)


class MemoryLimits:
    """Per-process limits and budgets."""

    def __init__(
        self, *, clock: Callable[[], float] = time.time, seed: SeedSpend | None = None
    ) -> None:
        self.clock = clock
        self.seed = seed
        self._requests: dict[str, SlidingWindow] = {}
        self._tokens: dict[str, SlidingWindow] = {}
        self._parallel: dict[str, set[str]] = {}
        self._spent: dict[tuple[str, str], int] = {}
        self._reserved: dict[tuple[str, str], dict[str, int]] = {}
        self._period_ids: dict[Period, tuple[float, str]] = {}  # period → (valid until, id)

    def _period_id(self, period: Period, now: float) -> str:
        """The current budget period's id, computed again only once that period is over."""
        known = self._period_ids.get(period)
        if known is not None and now < known[0]:
            return known[1]
        ident, resets = budget_period(period, datetime.fromtimestamp(now, UTC))
        self._period_ids[period] = (math.inf if resets is None else resets.timestamp(), ident)
        return ident

    async def _ensure_seeded(self, scope: str, period: str) -> None:
        if (scope, period) not in self._spent:
            amount = await self.seed(scope, period) if self.seed else Decimal(0)
            self._spent.setdefault((scope, period), to_units(amount))

    async def admit(
        self, request_id: str, scopes: tuple[ScopeLimits, ...], *, tokens: int, cost: Decimal
    ) -> Admission:
        wall = time.time()
        periods = {
            s.scope: self._period_id(s.budget_period, wall)
            for s in scopes
            if s.budget_usd is not None
        }
        for scope, period in periods.items():
            if (scope, period) not in self._spent:
                await self._ensure_seeded(scope, period)
        now = self.clock()
        ask = to_units(cost)
        headers: dict[str, str] = {}
        # Check every scope first: nothing is reserved unless all of them admit.
        for s in scopes:
            reqs = self._requests.setdefault(s.scope, SlidingWindow())
            toks = self._tokens.setdefault(s.scope, SlidingWindow())
            if s.rpm is not None:
                used = reqs.count(now)
                self._headers(headers, "requests", s.rpm, used + 1, now)
                if used + 1 > s.rpm:
                    raise rate_error(
                        s, "requests per minute", s.rpm, reqs.retry_after(now, s.rpm, 1), headers
                    )
            if s.tpm is not None:
                used = toks.count(now)
                self._headers(headers, "tokens", s.tpm, used + tokens, now)
                if used + tokens > s.tpm:
                    raise rate_error(
                        s, "tokens per minute", s.tpm, toks.retry_after(now, s.tpm, tokens), headers
                    )
            if (
                s.max_parallel is not None
                and len(self._parallel.get(s.scope, ())) >= s.max_parallel
            ):
                raise rate_error(s, "requests in parallel", s.max_parallel, 1.0, headers)
            if s.budget_usd is not None:
                key = (s.scope, periods[s.scope])
                spent = self._spent[key]
                reserved = sum(self._reserved.get(key, {}).values())
                if spent + reserved + ask > to_units(s.budget_usd):
                    raise budget_error(s, spent, reserved, ask, datetime.fromtimestamp(wall, UTC))
        window = int(now // WINDOW)
        for s in scopes:
            self._requests[s.scope].add(now, 1)
            self._tokens[s.scope].add(now, tokens)
            if s.max_parallel is not None:
                self._parallel.setdefault(s.scope, set()).add(request_id)
            if s.budget_usd is not None:
                self._reserved.setdefault((s.scope, periods[s.scope]), {})[request_id] = ask
        return Admission(request_id, scopes, tokens, ask, window, periods, headers)

    def _headers(
        self, headers: dict[str, str], kind: str, limit: int, used: float, now: float
    ) -> None:
        remaining = max(0, int(limit - used))
        previous = headers.get(f"x-ratelimit-remaining-{kind}")
        if previous is not None and int(previous) <= remaining:
            return  # report the tightest scope
        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        headers[f"x-ratelimit-reset-{kind}"] = reset_text(WINDOW - (now % WINDOW))

    async def settle(self, admission: Admission, *, tokens: int, cost: Decimal | None) -> None:
        if admission.done:
            return
        admission.done = True
        for s in admission.scopes:
            # setdefault: a batch job's reservation may be settled by a later process
            window = self._tokens.setdefault(s.scope, SlidingWindow())
            window.counts[admission.window] = (
                window.counts.get(admission.window, 0) + tokens - admission.tokens
            )
            self._end(s, admission, admission.cost_units if cost is None else to_units(cost))

    async def release(self, admission: Admission) -> None:
        if admission.done:
            return
        admission.done = True
        for s in admission.scopes:
            window = self._tokens[s.scope]
            window.counts[admission.window] = (
                window.counts.get(admission.window, 0) - admission.tokens
            )
            self._end(s, admission, 0)

    def _end(self, s: ScopeLimits, admission: Admission, spent_units: int) -> None:
        self._parallel.get(s.scope, set()).discard(admission.request_id)
        period = admission.periods.get(s.scope)
        if period is not None:
            self._reserved.get((s.scope, period), {}).pop(admission.request_id, None)
            key = (s.scope, period)
            self._spent[key] = self._spent.get(key, 0) + spent_units

    async def spent(self, scope: ScopeLimits) -> Decimal:
        period = budget_period(scope.budget_period, datetime.now(UTC))[0]
        await self._ensure_seeded(scope.scope, period)
        return to_usd(self._spent[(scope.scope, period)])

    async def aclose(self) -> None:
        return None
