"""What the gateway knows about each deployment right now: load, latency, quota use and its
circuit breaker. Routing reads it to order a Plan; the attempt loop asks it for admission.

Circuit breaker: *closed* until failures pile up (``consecutive_failures`` in a row, or an
``error_ratio`` over ``window`` once ``min_requests`` were seen) or a 429 asks for a pause;
then *open* for ``cooldown`` (or the 429's Retry-After); then *half-open*: exactly one probe
request is let through, and its outcome closes or re-opens the circuit.
Only transient failures count; a 400 says nothing about a deployment's health.
With ``shared`` (Redis), open and half-open decisions are shared by every replica
(see ``gateway.routing.shared_circuits``); failures are still counted per replica.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from gateway.config import CircuitConfig
from gateway.errors import GatewayError, retry_after_seconds
from providers.base import Deployment

if TYPE_CHECKING:
    from gateway.routing.shared_circuits import RedisCircuits

CircuitState = Literal["closed", "open", "half_open"]
QUOTA_WINDOW = 60.0
# Event loops round timers (uvloop to whole milliseconds, sometimes early): a retry that slept
# exactly the pause its own 429 asked for must not find the circuit still open.
CLOCK_SLACK = 0.05
EWMA_ALPHA = 0.3


@dataclass(slots=True)
class DeploymentHealth:
    """Live facts about one deployment in this process."""

    in_flight: int = 0
    latency: float | None = None  # EWMA of seconds to a complete answer / first token
    state: CircuitState = "closed"
    open_until: float = 0.0
    consecutive_failures: int = 0
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    last_error: str | None = None
    window_start: float = 0.0
    window_requests: int = 0
    window_tokens: int = 0


@dataclass(slots=True)
class Ticket:
    """Admission of one attempt; hand it back to ``HealthBoard.finish``."""

    deployment: Deployment
    started: float
    probe: bool
    tokens: int


class HealthBoard:
    """Per-deployment health of this gateway process (in memory)."""

    def __init__(
        self,
        circuit: CircuitConfig,
        clock: Callable[[], float] = time.monotonic,
        shared: RedisCircuits | None = None,
    ) -> None:
        self.circuit = circuit
        self.clock = clock
        self.shared = shared if circuit.enabled else None
        self._health: dict[str, DeploymentHealth] = {}

    def get(self, deployment_id: str) -> DeploymentHealth:
        health = self._health.get(deployment_id)
        if health is None:
            health = self._health[deployment_id] = DeploymentHealth()
        return health

    def forget(self, deployment_ids: set[str]) -> None:
        """Drop what is known about deployments that no longer exist (after a reload)."""
        for deployment_id in deployment_ids:
            self._health.pop(deployment_id, None)

    # -- admission ---------------------------------------------------------------------
    def unavailable(self, dep: Deployment, tokens: int = 0) -> str | None:
        """Why ``dep`` cannot take a request now (circuit open, quota used), or None."""
        h = self.get(dep.id)
        now = self.clock()
        if h.state == "open" and now < h.open_until - CLOCK_SLACK:
            return f"circuit open for {h.open_until - now:.1f}s more"
        if h.state == "half_open":
            return "circuit half-open, probe in flight"
        if self.shared is not None:
            state, remaining = self.shared.state(dep.id)
            if state == "open":
                return f"circuit open for {remaining:.1f}s more (shared)"
        if dep.rpm is not None or dep.tpm is not None:
            self._roll_window(h, now)
            if dep.rpm is not None and h.window_requests >= dep.rpm:
                return f"at its quota of {dep.rpm} requests per minute"
            if dep.tpm is not None and h.window_tokens + tokens > dep.tpm:
                return f"at its quota of {dep.tpm} tokens per minute"
        return None

    async def admit(self, dep: Deployment, tokens: int = 0) -> Ticket | None:
        """Claim a slot on ``dep`` for one attempt, or None if it must be skipped."""
        if self.unavailable(dep, tokens) is not None:
            return None
        h = self.get(dep.id)
        probe = False
        probe_due = self.circuit.enabled and h.state == "open"  # cool-down over
        if self.shared is not None and self.shared.state(dep.id)[0] == "half_open":
            probe_due = True
        if probe_due:
            if self.shared is not None and not await self.shared.claim_probe(
                dep.id, self.circuit.cooldown
            ):
                return None  # another replica is probing
            h.state = "half_open"
            probe = True
        h.in_flight += 1
        h.window_requests += 1
        h.window_tokens += tokens
        return Ticket(dep, self.clock(), probe, tokens)

    def retry_in(self, deployments: list[Deployment]) -> float | None:
        """Seconds until the first of these open circuits allows a probe."""
        now = self.clock()
        waits = [
            self.get(d.id).open_until - now for d in deployments if self.get(d.id).state == "open"
        ]
        if self.shared is not None:
            shared = [self.shared.state(d.id) for d in deployments]
            waits += [remaining for state, remaining in shared if state == "open"]
        return max(0.0, min(waits)) if waits else None

    # -- outcomes ----------------------------------------------------------------------
    def add_tokens(self, deployment_id: str, tokens: int) -> None:
        """Correct the token quota count once the real usage is known."""
        self.get(deployment_id).window_tokens += tokens

    def finish(
        self,
        ticket: Ticket,
        error: GatewayError | None = None,
        *,
        tokens: int | None = None,
        latency: float | None = None,
    ) -> None:
        """Record how an admitted attempt ended; updates load, latency, quota and circuit."""
        h = self.get(ticket.deployment.id)
        now = self.clock()
        h.in_flight = max(0, h.in_flight - 1)
        if tokens is not None:
            h.window_tokens += tokens - ticket.tokens
        failed = error is not None and error.retryable
        if not failed:
            elapsed = latency if latency is not None else now - ticket.started
            h.latency = (
                elapsed
                if h.latency is None
                else (EWMA_ALPHA * elapsed + (1 - EWMA_ALPHA) * h.latency)
            )
        if not self.circuit.enabled:
            return
        if failed:
            assert error is not None
            h.last_error = error.code or str(error.status)
            self._failure(h, now, error, ticket.probe, ticket.deployment.id)
        else:
            self._success(h, now, ticket.deployment.id)

    def _success(self, h: DeploymentHealth, now: float, deployment_id: str) -> None:
        h.consecutive_failures = 0
        if h.state != "closed":
            h.state = "closed"
            h.outcomes.clear()
            if self.shared is not None:
                self.shared.publish_closed(deployment_id)
        self._remember(h, now, True)

    def _failure(
        self, h: DeploymentHealth, now: float, error: GatewayError, probe: bool, dep_id: str
    ) -> None:
        h.consecutive_failures += 1
        self._remember(h, now, False)
        pause = retry_after_seconds(error) if error.status == 429 else None
        seconds: float | None = None
        if probe or h.state == "half_open":
            seconds = max(self.circuit.cooldown, pause or 0.0)
        elif pause:
            seconds = pause
        elif h.consecutive_failures >= self.circuit.consecutive_failures:
            seconds = self.circuit.cooldown
        elif len(h.outcomes) >= self.circuit.min_requests:
            failures = sum(1 for _, ok in h.outcomes if not ok)
            if failures / len(h.outcomes) >= self.circuit.error_ratio:
                seconds = self.circuit.cooldown
        if seconds is not None:
            h.state = "open"
            h.open_until = max(h.open_until, now + seconds)
            if self.shared is not None:
                self.shared.publish_open(dep_id, seconds)

    def _remember(self, h: DeploymentHealth, now: float, ok: bool) -> None:
        h.outcomes.append((now, ok))
        horizon = now - self.circuit.window
        while h.outcomes and h.outcomes[0][0] < horizon:
            h.outcomes.popleft()

    @staticmethod
    def _roll_window(h: DeploymentHealth, now: float) -> None:
        if now - h.window_start >= QUOTA_WINDOW:
            h.window_start = now
            h.window_requests = 0
            h.window_tokens = 0
