"""Running a Plan: try its deployments in order until one answers.

An attempt that fails with a retryable error (connection refused, timeout, 429, 5xx) moves on
to the next deployment in the Plan; any other error is the caller's answer at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.engine import CallInfo
    from gateway.routing import Plan
    from providers.base import Deployment

T = TypeVar("T")


async def run_plan(plan: Plan, attempt: Callable[[Deployment], Awaitable[T]], info: CallInfo) -> T:
    """Run ``attempt`` on each deployment of the plan until one succeeds."""
    last: GatewayError | None = None
    for deployment in plan.attempts:
        info.attempts += 1
        info.provider = deployment.provider_name
        info.deployment = deployment.id
        try:
            return await attempt(deployment)
        except GatewayError as exc:
            exc.attribute(deployment.provider_name, deployment.id)
            if not exc.retryable:
                raise
            last = exc
    if last is None:  # an empty plan cannot be built by the Router; kept for safety
        raise GatewayError(f"model '{plan.model}' has no deployment to try", status=503)
    if info.attempts > 1:
        last.message = f"all {info.attempts} attempts failed; last error: {last.message}"
    raise last
