"""Whether this process should get traffic: the checks behind ``/health/ready``.

Ready means: not draining, the ledger's database answers, Redis answers (when configured),
some model has a deployment whose circuit is not open, and the ledger writer is running,
writing (not holding records unwritten for ``ledger.stuck_after`` seconds) and not spilling
past its queue. A single model whose every circuit is open is a warning,
not a failure: see ``Readiness.report``. Probes come often and from many load
balancers at once, so a database or Redis ping is made at most once per ``cache_seconds``
(concurrent probes share the ping in flight) and bounded by ``ping_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import text

from gateway.engine import Engine
from gateway.ledger.writer import describe
from gateway.wire import JSON


@dataclass(slots=True)
class Ping:
    """The outcome of one reachability check, and when it was made."""

    at: float
    error: str | None
    seconds: float

    def detail(self) -> JSON:
        return {
            "ok": self.error is None,
            "latency_ms": round(self.seconds * 1000, 2),
            "error": self.error,
        }


class CachedPing:
    """A ping made at most once per ``ttl`` seconds; callers arriving meanwhile share it."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        *,
        ttl: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self.last: Ping | None = None
        self._running: asyncio.Task[Ping] | None = None

    async def check(self) -> Ping:
        last = self.last
        if last is not None and self.clock() - last.at < self.ttl:
            return last
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._measure())
        # A probe that gives up must not cancel the ping the others wait on.
        return await asyncio.shield(self._running)

    async def _measure(self) -> Ping:
        started = self.clock()
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                await self._ping()
        except TimeoutError:
            error = f"no answer within {self.timeout:g}s"
        except Exception as exc:
            error = describe(exc)
        self.last = Ping(self.clock(), error, self.clock() - started)
        return self.last


@dataclass(slots=True)
class ReadinessReport:
    """The verdict, the names of the failing checks, and (for the master key) the details."""

    ready: bool
    failing: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checks: JSON = field(default_factory=dict)

    def public_body(self) -> JSON:
        """What anyone may see: the verdict and which kinds of check fail, no names."""
        if self.ready:
            return {"status": "ready"}
        return {"status": "not ready", "failing": self.failing}

    def detailed_body(self) -> JSON:
        return {
            **self.public_body(),
            "reasons": self.reasons,
            "warnings": self.warnings,
            "checks": self.checks,
        }


class Readiness:
    """Runs the readiness checks for one engine; ``draining`` is set when shutdown begins."""

    def __init__(
        self, engine: Engine, *, cache_seconds: float = 1.0, ping_timeout: float = 2.0
    ) -> None:
        self.engine = engine
        self.draining = False
        ledger = engine.ledger
        self.database = (
            CachedPing(self._ping_database, ttl=cache_seconds, timeout=ping_timeout)
            if ledger is not None
            else None
        )
        self.redis = (
            CachedPing(self._ping_redis, ttl=cache_seconds, timeout=ping_timeout)
            if engine.shared_circuits is not None
            else None
        )

    async def report(self) -> ReadinessReport:
        report = ReadinessReport(ready=True)

        def fail(check: str, reason: str) -> None:
            report.ready = False
            if check not in report.failing:
                report.failing.append(check)
            report.reasons.append(reason)

        if self.draining:
            fail("draining", "shutting down: finishing requests in flight, taking no new ones")
        report.checks["draining"] = self.draining
        pings = {
            name: p
            for name, p in (("database", self.database), ("redis", self.redis))
            if p is not None
        }
        results = await asyncio.gather(*(p.check() for p in pings.values()))
        for name, ping in zip(pings, results, strict=True):
            report.checks[name] = ping.detail()
            if ping.error is not None:
                fail(name, f"{name} unreachable: {ping.error}")
        healthy, open_circuits = self.healthy_deployments()
        report.checks["models"] = healthy
        report.checks["open_circuits"] = open_circuits
        dark = [model for model, count in healthy.items() if count == 0]
        if dark and len(dark) == len(healthy):
            fail("models", "no model can be served: every deployment's circuit is open")
        else:
            # Not a reason to take this replica out: every replica sees the same upstreams
            # (and, with Redis, the same circuits), so all would go at once, models that
            # work included. The model's callers get a 503 naming the open circuits instead.
            report.warnings.extend(
                f"model '{model}': every deployment's circuit is open" for model in dark
            )
        if self.engine.ledger is not None:
            status = self.engine.ledger.status()
            report.checks["ledger"] = status
            queue_size = self.engine.ledger.config.queue_size
            if not status["running"]:
                fail("ledger", "the ledger writer is not running; spend records are not written")
            elif status["stalled_seconds"] >= self.engine.ledger.config.stuck_after:
                fail(
                    "ledger",
                    f"the ledger writer has held {status['backlog']} records for "
                    f"{status['stalled_seconds']:.0f}s without writing any "
                    f"(last error: {status['last_error'] or 'none'})",
                )
            elif status["backlog"] >= queue_size:
                fail(
                    "ledger",
                    f"the ledger writer holds {status['backlog']} records, more than its queue "
                    f"({queue_size}); the database is not keeping up "
                    f"(last error: {status['last_error'] or 'none'})",
                )
        return report

    def healthy_deployments(self) -> tuple[dict[str, int], dict[str, str | None]]:
        """Per public model, how many of its deployments have a circuit that is not open; and
        the open ones, each with the last error that counted against it."""
        router = self.engine.router
        health = router.health
        now = health.clock()
        counts: dict[str, int] = {}
        open_circuits: dict[str, str | None] = {}
        for model, deployments in router.deployments.items():
            count = 0
            for dep in deployments:
                h = health.get(dep.id)
                if (h.state == "open" and now < h.open_until) or (
                    health.shared is not None and health.shared.state(dep.id)[0] == "open"
                ):
                    open_circuits[dep.id] = h.last_error
                    continue
                count += 1
            counts[model] = count
        return counts, open_circuits

    async def _ping_database(self) -> None:
        assert self.engine.ledger is not None
        async with self.engine.ledger.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def _ping_redis(self) -> None:
        assert self.engine.shared_circuits is not None
        await self.engine.shared_circuits.redis.ping()
