"""Rate limits, parallelism caps and budgets, enforced by reservation before the upstream call.

``admit`` checks and reserves every scope of a request (its key and its team) in one atomic
step: a request slot in the RPM window, its estimated tokens in the TPM window, a parallel
slot, and its worst-case cost against the budget. ``settle`` replaces the estimates with what
the request really used; ``release`` returns a failed request's reservation. Two backends:
``MemoryLimits`` (one process) and ``RedisLimits`` (Lua scripts; one limit across replicas).
"""

from gateway.limits.base import (
    Admission,
    BudgetExceededError,
    Limits,
    ScopeLimits,
    budget_period,
    period_start,
)
from gateway.limits.memory import MemoryLimits

__all__ = [
    "Admission",
    "BudgetExceededError",
    "Limits",
    "MemoryLimits",
    "ScopeLimits",
    "budget_period",
    "period_start",
]
