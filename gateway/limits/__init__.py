"""Rate limits, parallelism caps and budgets, enforced by reservation before the upstream call.

``admit`` checks and reserves every scope of a request (its key and its team) in one atomic
step: a request slot in the RPM window, its estimated tokens in the TPM window, a parallel
slot, and its worst-case cost against the budget. ``settle`` replaces the estimates with what
the request really used; ``release`` returns a failed request's reservation. Two backends:
``MemoryLimits`` (one process) and ``RedisLimits`` (Lua scripts; one limit across replicas).
"""

from gateway.config import GatewayConfig
from gateway.errors import BudgetExceededError
from gateway.limits.base import (
    Admission,
    BudgetShortfall,
    Limits,
    ScopeLimits,
    SeedSpend,
    budget_period,
    period_start,
)
from gateway.limits.guard import GuardedLimits
from gateway.limits.memory import MemoryLimits

__all__ = [
    "Admission",
    "BudgetExceededError",
    "BudgetShortfall",
    "GuardedLimits",
    "Limits",
    "MemoryLimits",
    "ScopeLimits",
    "SeedSpend",
    "budget_period",
    "limits_for",
    "period_start",
]


def limits_for(config: GatewayConfig, seed: SeedSpend) -> Limits:
    """The backend ``config.limits`` asks for; ``seed`` tells a budget's starting spend. The
    Redis client is imported only when Redis counts the limits."""
    if config.limits.backend == "redis" and config.redis is not None:
        from gateway.limits.redis import RedisLimits

        limits = RedisLimits.from_url(
            config.redis.url, prefix=config.redis.key_prefix + "limits:", seed=seed
        )
        limits.reservation_ttl = config.limits.reservation_ttl
        return GuardedLimits(
            limits,
            dependency="Redis",
            on_error=config.limits.on_backend_error,
            reservation_ttl=config.limits.reservation_ttl,
            drain_seconds=config.ledger.shutdown_timeout,
        )
    return MemoryLimits(seed=seed)
