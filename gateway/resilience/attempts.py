"""Running a Plan: retries on one deployment, then fail-over along the Plan.

Every transient failure (connection failures, timeouts, 408, 409, 429 except
``insufficient_quota``, 5xx) fails over; it is retried on the same deployment first only if
its class is in ``retries.retry_on`` (by default every class but ``timeout``: a route that
stayed silent is not waited on twice). A request sent on a pooled connection that broke at
once is sent again at once, as an attempt of its own. Between retries, tenacity waits as long
as the upstream asked (``retry-after-ms``, ``x-ms-retry-after-ms``, ``Retry-After``) or else
exponential backoff with full jitter. A requested wait longer than ``max_retry_after`` or than
the request has left is not slept: the loop fails over instead. Errors that are about the
request (400, 422, content filter) end the request at once; ``context_length_exceeded`` jumps
to the model's context-window fallbacks. Every attempt passes the deployment's circuit
breaker and quota (``HealthBoard``) and reports its outcome back. Once the request's deadline
(the caller's own, or ``timeouts.total``) has passed, no attempt starts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    DoSleep,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from gateway.config import ErrorClass, RetryConfig
from gateway.errors import (
    ContentFilterError,
    ContextLengthExceededError,
    GatewayError,
    RequestTimeoutError,
    StaleConnectionError,
    StreamInterruptedError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
    retry_after_seconds,
)
from gateway.routing import HealthBoard, Plan, Ticket
from providers.base import Deployment

T = TypeVar("T")


@dataclass(slots=True)
class AttemptRecord:
    """One upstream attempt, kept for headers, logs and the ledger."""

    deployment: str
    model: str
    started: float
    seconds: float
    status: int | None = None  # None: no HTTP answer (connection failure, timeout)
    error: str | None = None


@dataclass(slots=True)
class Attempts:
    """What running Plans did for one call: every upstream attempt, and who answered. The
    call keeps one (``Call.tries``); this stage writes nothing else of the call."""

    log: list[AttemptRecord] = field(default_factory=list)
    provider: str | None = None  # of the last attempt
    deployment: str | None = None  # of the last attempt
    served_by: Deployment | None = None  # the deployment whose answer was taken
    fallback_used: bool = False
    upstream_seconds: float = 0.0  # waiting on upstreams, for the gateway's overhead

    @property
    def count(self) -> int:
        return len(self.log)


class _Unavailable(Exception):
    """The deployment cannot be admitted now (open circuit, quota); the Plan moves on."""

    def __init__(self, deployment: Deployment, reason: str) -> None:
        super().__init__(reason)
        self.deployment = deployment
        self.reason = reason


def _error_of(state: RetryCallState) -> GatewayError | None:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    return exc if isinstance(exc, GatewayError) else None


class wait_for_upstream(wait_base):
    """The upstream's requested wait if it gave one, else full-jitter exponential backoff;
    never longer than what the request has left."""

    def __init__(self, retries: RetryConfig, deadline: float) -> None:
        self.backoff = wait_random_exponential(
            multiplier=retries.initial_backoff, max=retries.max_backoff
        )
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> float:
        error = _error_of(retry_state)
        if isinstance(error, StaleConnectionError):
            return 0.0
        asked = retry_after_seconds(error) if error is not None else None
        wait = asked if asked is not None else self.backoff(retry_state)
        return max(0.0, min(wait, self.deadline - time.monotonic()))


class stop_when_waiting_is_futile(stop_base):
    """Stop retrying this deployment when the wait it asks for is over the cap or past the
    request's deadline, when the request's attempt budget is spent, or when its circuit has
    just opened: failing over beats sleeping."""

    def __init__(
        self,
        retries: RetryConfig,
        deadline: float,
        tries: Attempts,
        health: HealthBoard,
        deployment: Deployment,
    ) -> None:
        self.retries = retries
        self.deadline = deadline
        self.tries = tries
        self.health = health
        self.deployment = deployment

    def __call__(self, retry_state: RetryCallState) -> bool:
        if self.tries.count >= self.retries.attempts_per_request:
            return True
        remaining = self.deadline - time.monotonic()
        error = _error_of(retry_state)
        asked = retry_after_seconds(error) if error is not None else None
        if asked is not None:
            # A 429's pause also opens the circuit for others; this retry waits it out.
            return asked > self.retries.max_retry_after or asked >= remaining
        return remaining <= 0 or self.health.unavailable(self.deployment) is not None


def error_class(exc: GatewayError) -> ErrorClass | None:
    """Which ``retry_on`` class a transient failure belongs to (None: not transient)."""
    if not exc.retryable:
        return None
    if isinstance(exc, UpstreamTimeoutError) or exc.status == 408:
        return "timeout"
    if isinstance(exc, (UpstreamConnectionError, StreamInterruptedError)):
        return "connection"
    if exc.status == 429:
        return "rate_limit"
    return "server_error"


def _retried_here(exc: BaseException, retries: RetryConfig) -> bool:
    """Whether ``exc`` is worth another try on the same deployment."""
    if isinstance(exc, StaleConnectionError):
        return True
    if not isinstance(exc, GatewayError):
        return False
    kind = error_class(exc)
    return kind is not None and kind in retries.retry_on


async def run_plan(
    plan: Plan,
    attempt: Callable[[Deployment, Ticket], Awaitable[T]],
    tries: Attempts,
    health: HealthBoard,
    *,
    deadline: float,
    fallback_on_content_filter: bool = False,
    settle_on_success: bool = True,
    tokens: int = 0,
) -> T:
    """Try the Plan's deployments in order (each with retries) until one succeeds.

    ``attempt`` gets the deployment and its admission ticket. With ``settle_on_success``
    false the caller owns a successful attempt's ticket (a stream settles it when it ends).
    """
    retries = plan.policy.retries
    queue = deque(plan.attempts)
    on_context_fallbacks = False
    last: GatewayError | None = None
    unavailable: list[_Unavailable] = []
    while queue and tries.count < retries.attempts_per_request:
        dep = queue.popleft()
        try:
            result = await _on_deployment(
                dep, attempt, tries, health, tokens, settle_on_success, retries, deadline
            )
            tries.fallback_used = plan.uses_fallback(dep)
            return result
        except _Unavailable as skipped:
            unavailable.append(skipped)
        except GatewayError as exc:
            last = exc
            if isinstance(exc, ContextLengthExceededError) or exc.code == "context_length_exceeded":
                if plan.context_attempts and not on_context_fallbacks:
                    queue = deque(plan.context_attempts)
                    on_context_fallbacks = True
                    continue
                raise
            if isinstance(exc, ContentFilterError) or exc.code == "content_filter":
                if fallback_on_content_filter:
                    continue
                raise
            if not exc.failover:
                raise
    if last is None:
        raise _all_unavailable(plan, unavailable, health)
    if tries.count > 1:
        last.message = f"all {tries.count} attempts failed; last error: {last.message}"
    raise last


async def _on_deployment(
    dep: Deployment,
    attempt: Callable[[Deployment, Ticket], Awaitable[T]],
    tries: Attempts,
    health: HealthBoard,
    tokens: int,
    settle_on_success: bool,
    retries: RetryConfig,
    deadline: float,
) -> T:
    """Try one deployment, retrying per policy. The first try runs bare (it usually
    succeeds; building tenacity's machinery costs ~35 us); only a transient failure brings
    in tenacity, seeded with that failure so its wait and stop rules apply to it."""
    try:
        return await _one_attempt(dep, attempt, tries, health, tokens, settle_on_success, deadline)
    except GatewayError as exc:
        if not _retried_here(exc, retries) or retries.attempts_per_deployment == 1:
            raise
        failure = sys.exc_info()
    retrying = AsyncRetrying(
        stop=stop_any(
            stop_after_attempt(retries.attempts_per_deployment),
            stop_when_waiting_is_futile(retries, deadline, tries, health, dep),
        ),
        wait=wait_for_upstream(retries, deadline),
        retry=retry_if_exception(lambda exc: _retried_here(exc, retries)),
        reraise=True,
        sleep=asyncio.sleep,
    )
    retrying.begin()
    state = RetryCallState(retrying, fn=None, args=(), kwargs={})
    state.set_exception(failure)  # type: ignore[arg-type]
    while True:
        action = await retrying.iter(state)  # raises the last error once it should stop
        if not isinstance(action, DoSleep):
            raise RuntimeError(f"unexpected retry action {action!r}")
        state.prepare_for_next_attempt()
        await asyncio.sleep(action)
        try:
            return await _one_attempt(
                dep, attempt, tries, health, tokens, settle_on_success, deadline
            )
        except GatewayError:
            state.set_exception(sys.exc_info())  # type: ignore[arg-type]


async def _one_attempt(
    dep: Deployment,
    attempt: Callable[[Deployment, Ticket], Awaitable[T]],
    tries: Attempts,
    health: HealthBoard,
    tokens: int,
    settle_on_success: bool,
    deadline: float,
) -> T:
    if time.monotonic() >= deadline:
        # The caller's patience is spent: another attempt could only answer nobody.
        raise RequestTimeoutError(
            "the request's time ran out before another attempt could start "
            "(x-gateway-timeout / gateway_timeout, or routing.timeouts.total)"
        )
    ticket = await health.admit(dep, tokens)
    if ticket is None:
        raise _Unavailable(dep, health.unavailable(dep, tokens) or "unavailable")
    tries.provider = dep.provider_name
    tries.deployment = dep.id
    started = time.monotonic()
    record = AttemptRecord(dep.id, dep.model, time.time(), 0.0)
    tries.log.append(record)
    try:
        result = await attempt(dep, ticket)
    except GatewayError as exc:
        exc.attribute(dep.provider_name, dep.id)
        record.seconds = time.monotonic() - started
        record.status = exc.status if exc.code not in _NO_HTTP_ANSWER else None
        record.error = exc.code or type(exc).__name__
        health.finish(ticket, exc)
        raise
    except BaseException:
        health.finish(ticket)  # cancelled (caller gone): says nothing about the deployment
        raise
    record.seconds = time.monotonic() - started
    record.status = 200
    tries.served_by = dep
    if settle_on_success:
        health.finish(ticket, latency=record.seconds)
    return result


_NO_HTTP_ANSWER = frozenset(
    {"upstream_unreachable", "stale_connection", "upstream_timeout", "stream_interrupted"}
)


def _all_unavailable(plan: Plan, skipped: list[_Unavailable], health: HealthBoard) -> GatewayError:
    reasons = "; ".join(f"{s.deployment.id}: {s.reason}" for s in skipped) or "none tried"
    wait = health.retry_in([s.deployment for s in skipped])
    headers = {"retry-after": str(max(1, round(wait)))} if wait is not None else {}
    return GatewayError(
        f"no deployment of model '{plan.model}' can take requests right now ({reasons}); "
        "retry later",
        status=503,
        type="service_unavailable",
        code="deployments_unavailable",
        headers=headers,
    )


async def within(deadline: float, work: Awaitable[T]) -> T:
    """``work``, or the request's 504 once its deadline (``time.monotonic``) has passed."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await work
    except TimeoutError as exc:
        raise RequestTimeoutError(
            "the request did not complete within its total time "
            "(routing.timeouts.total, or the request's gateway_timeout)"
        ) from exc
