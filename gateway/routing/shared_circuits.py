"""Circuit-breaker state shared by gateway replicas through Redis.

Each replica counts failures on its own (a success must not cost a network round trip); what
is shared is the decision. A replica that opens a deployment's circuit writes two keys:
``open`` (expires when the cool-down ends) and ``tripped`` (stays until a probe succeeds).
Every replica refreshes a local snapshot of those keys in the background, so admission stays
a dictionary lookup. When ``open`` has expired but ``tripped`` remains, the circuit is
half-open for everyone, and the single probe is claimed with ``SET NX``: one replica wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.redis_client import connect

log = logging.getLogger("gateway.circuits")

SharedState = Literal["closed", "open", "half_open"]
TRIPPED_TTL_MS = 3_600_000  # a tripped marker no probe ever cleared is forgotten after 1 h


class RedisCircuits:
    """Shared open/half-open decisions; a Redis outage degrades to per-replica circuits."""

    def __init__(
        self, redis: Redis, *, prefix: str = "llm-gateway:", refresh_seconds: float = 0.5
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.refresh_seconds = refresh_seconds
        self._ids: set[str] = set()
        self._open_until: dict[str, float] = {}  # wall-clock seconds
        self._tripped: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "llm-gateway:") -> RedisCircuits:
        return cls(connect(url, max_connections=16), prefix=prefix)

    def track(self, deployment_ids: Iterable[str]) -> None:
        self._ids.update(deployment_ids)

    def _key(self, kind: str, deployment_id: str) -> str:
        return f"{self.prefix}circuit:{kind}:{deployment_id}"

    # -- reads (local snapshot) ----------------------------------------------------------
    def state(self, deployment_id: str) -> tuple[SharedState, float]:
        """The shared state and, when open, the seconds it stays open."""
        self._ensure_refreshing()
        remaining = self._open_until.get(deployment_id, 0.0) - time.time()
        if remaining > 0:
            return "open", remaining
        if deployment_id in self._tripped:
            return "half_open", 0.0
        return "closed", 0.0

    # -- writes --------------------------------------------------------------------------
    def publish_open(self, deployment_id: str, seconds: float) -> None:
        """Open the circuit for every replica (applied locally at once)."""
        until = time.time() + seconds
        self._open_until[deployment_id] = max(until, self._open_until.get(deployment_id, 0.0))
        self._tripped.add(deployment_id)
        self._spawn(self._write_open(deployment_id, until, seconds))

    def publish_closed(self, deployment_id: str) -> None:
        """A probe succeeded: close the circuit for every replica."""
        self._open_until.pop(deployment_id, None)
        self._tripped.discard(deployment_id)
        self._spawn(self._write_closed(deployment_id))

    async def claim_probe(self, deployment_id: str, seconds: float) -> bool:
        """Whether this replica won the single half-open probe (held for ``seconds``)."""
        try:
            won = await self.redis.set(
                self._key("probe", deployment_id), "1", nx=True, px=max(1, int(seconds * 1000))
            )
        except RedisError as exc:
            log.warning("redis unavailable for circuit probes, deciding locally: %s", exc)
            return True
        return bool(won)

    async def refresh(self) -> None:
        """Read every tracked deployment's keys into the local snapshot."""
        ids = sorted(self._ids)
        if not ids:
            return
        keys = [self._key("open", i) for i in ids] + [self._key("tripped", i) for i in ids]
        values = await self.redis.mget(keys)
        now_open: dict[str, float] = {}
        tripped: set[str] = set()
        for i, dep in enumerate(ids):
            opened, trip = values[i], values[len(ids) + i]
            if opened is not None:
                now_open[dep] = float(opened)
            if trip is not None:
                tripped.add(dep)
        self._open_until = now_open
        self._tripped = tripped

    async def flush(self) -> None:
        """Wait until the open/closed decisions published so far are written to Redis."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.redis.aclose()

    # -- background ----------------------------------------------------------------------
    def _ensure_refreshing(self) -> None:
        if self._task is None or self._task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._refresh_forever())
            except RuntimeError:  # no loop (sync inspection): the snapshot stays as it is
                return

    async def _refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except RedisError as exc:
                log.warning("redis unavailable for circuit state: %s", exc)
            await asyncio.sleep(self.refresh_seconds)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write_open(self, deployment_id: str, until: float, seconds: float) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(
                    self._key("open", deployment_id), repr(until), px=max(1, int(seconds * 1000))
                )
                pipe.set(self._key("tripped", deployment_id), "1", px=TRIPPED_TTL_MS)
                # The probe claim is left to expire: replicas with a stale snapshot that
                # still think the circuit half-open must not win a second probe.
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not share an open circuit through redis: %s", exc)

    async def _write_closed(self, deployment_id: str) -> None:
        try:
            await self.redis.delete(
                self._key("open", deployment_id),
                self._key("tripped", deployment_id),
                self._key("probe", deployment_id),
            )
        except RedisError as exc:
            log.warning("could not share a closed circuit through redis: %s", exc)
