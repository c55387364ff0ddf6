"""What a scope may do, what an admission holds, and the answers for refusals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal, Protocol

from gateway.errors import BudgetExceededError, RateLimitError

Period = Literal["daily", "weekly", "monthly", "total"]
WINDOW = 60.0  # seconds of the RPM / TPM windows
# Money is counted in integer units of 1e-10 USD (the ledger's precision), so Redis can add it
# atomically and no float ever touches it.
UNITS_PER_USD = 10**10


# What a scope (``key:<id>``, ``team:<id>``) spent in a budget period (an id from
# ``budget_period``), asked once when a backend first meets that budget: the ledger knows.
SeedSpend = Callable[[str, str], Awaitable[Decimal]]


def to_units(usd: Decimal) -> int:
    return int((usd * UNITS_PER_USD).to_integral_value())


def to_usd(units: int) -> Decimal:
    return Decimal(units) / UNITS_PER_USD


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """The limits of one scope: a key (``key:<id>``) or a team (``team:<id>``)."""

    scope: str
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_usd: Decimal | None = None
    budget_period: Period = "monthly"

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.max_parallel, self.budget_usd))


def budget_period(period: Period, now: datetime) -> tuple[str, datetime | None]:
    """The id of the budget period containing ``now`` and when it resets (None: never)."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day.strftime("d%Y-%m-%d"), day + timedelta(days=1)
    if period == "weekly":
        monday = day - timedelta(days=day.weekday())
        return monday.strftime("w%Y-%m-%d"), monday + timedelta(days=7)
    if period == "monthly":
        first = day.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return first.strftime("m%Y-%m"), following
    return "total", None


def period_start(period_id: str) -> datetime:
    """When a budget period (an id from ``budget_period``) began; ``total``: the epoch."""
    if period_id.startswith(("d", "w")):
        return datetime.strptime(period_id[1:], "%Y-%m-%d").replace(tzinfo=UTC)
    if period_id.startswith("m"):
        return datetime.strptime(period_id[1:], "%Y-%m").replace(tzinfo=UTC)
    return datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Admission:
    """What one request holds in each scope, to settle or release later."""

    request_id: str
    scopes: tuple[ScopeLimits, ...]
    tokens: int
    cost_units: int
    window: int  # the TPM window the tokens were counted in
    periods: dict[str, str] = field(default_factory=dict)  # scope → budget period id
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-* for the answer
    done: bool = False


class BudgetShortfall(BudgetExceededError):
    """A budget refusal that says how much the scope has left (``remaining``, USD): what a
    smaller request could still reserve."""

    def __init__(self, message: str, *, remaining: Decimal) -> None:
        super().__init__(message)
        self.remaining = remaining


def budget_error(
    limits: ScopeLimits, spent_units: int, reserved_units: int, ask_units: int, now: datetime
) -> BudgetShortfall:
    _, resets = budget_period(limits.budget_period, now)
    when = f"resets {resets:%Y-%m-%d %H:%M} UTC" if resets else "does not reset (total budget)"
    reserved = (
        f" (+ ${to_usd(reserved_units):.4f} reserved by requests in flight)"
        if reserved_units
        else ""
    )
    budget_units = to_units(limits.budget_usd or Decimal(0))
    budget = limits.budget_usd or Decimal(0)
    shown = f"{budget:.2f}" if budget == round(budget, 2) else f"{budget.normalize():f}"
    return BudgetShortfall(
        f"budget exceeded for {limits.scope}: {limits.budget_period} budget "
        f"${shown}, spent ${to_usd(spent_units):.4f}{reserved}; this request "
        f"may cost up to ${to_usd(ask_units):.4f}. The budget {when}.",
        remaining=to_usd(max(0, budget_units - spent_units - reserved_units)),
    )


def rate_error(
    limits: ScopeLimits, what: str, limit: int, retry_after: float, headers: dict[str, str]
) -> RateLimitError:
    wait = max(1, int(retry_after + 0.999))
    return RateLimitError(
        f"rate limit reached for {limits.scope}: {limit} {what}; retry after {wait}s",
        headers={**headers, "retry-after": str(wait)},
    )


def reset_text(seconds: float) -> str:
    """OpenAI's reset format: ``1s``, ``6m0s``, ``120ms``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    minutes, secs = divmod(int(seconds + 0.999), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


class Limits(Protocol):
    """A limits backend."""

    async def admit(
        self, request_id: str, scopes: tuple[ScopeLimits, ...], *, tokens: int, cost: Decimal
    ) -> Admission:
        """Reserve, or raise RateLimitError / BudgetExceededError naming the scope."""
        ...

    async def settle(self, admission: Admission, *, tokens: int, cost: Decimal | None) -> None:
        """Replace the reservation by what was really used (unknown cost: the reservation
        stays spent, never zero)."""
        ...

    async def release(self, admission: Admission) -> None:
        """Give back a reservation whose request used nothing."""
        ...

    async def spent(self, scope: ScopeLimits) -> Decimal:
        """Money spent in the scope's current budget period."""
        ...

    async def aclose(self) -> None: ...
