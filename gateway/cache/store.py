"""Where cached answers are kept: in this process (LRU, bounded by bytes) or in Redis (shared
by every replica). Both expire entries after their TTL; values are opaque bytes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis


class CacheStore(Protocol):
    """A byte store with expiry."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def clear(self) -> int: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """Entries in this process, least recently used dropped first once ``max_bytes`` is
    exceeded; ``clock`` (monotonic seconds) decides expiry."""

    synchronous = True  # ``put_now`` stores before the answer goes out

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        self.put_now(key, value, ttl)

    def put_now(self, key: str, value: bytes, ttl: float) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, self.clock() + ttl)
        self.bytes += len(value)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.bytes -= len(value)

    async def clear(self) -> int:
        """Drop every entry; how many there were."""
        dropped = len(self._entries)
        self._entries.clear()
        self.bytes = 0
        return dropped

    async def aclose(self) -> None:
        await self.clear()


class RedisStore:
    """Entries in Redis under ``prefix``, with Redis's own expiry (every replica sees them)."""

    synchronous = False

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str) -> RedisStore:
        from gateway.redis_client import connect

        return cls(connect(url), prefix)

    async def get(self, key: str) -> bytes | None:
        value = await self.client.get(self.prefix + key)
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self.client.set(self.prefix + key, value, px=max(1, int(ttl * 1000)))

    def put_now(self, key: str, value: bytes, ttl: float) -> None:
        raise NotImplementedError("a Redis store is written asynchronously")

    async def clear(self) -> int:
        """Delete every entry under the prefix (every replica's); how many there were."""
        dropped = 0
        batch: list[str | bytes] = []
        async for key in self.client.scan_iter(match=self.prefix + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                dropped += int(await self.client.delete(*batch))
                batch = []
        if batch:
            dropped += int(await self.client.delete(*batch))
        return dropped

    async def aclose(self) -> None:
        await self.client.aclose()
