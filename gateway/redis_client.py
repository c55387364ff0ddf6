"""The one way the gateway opens Redis: a pool that waits for a free connection under load
(instead of failing a request) and bounded socket timeouts (a slow Redis cannot hang one)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def connect(url: str, *, max_connections: int = 64) -> Redis:
    """A client for ``url`` (redis://host:port/db)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5.0,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
    )
    return Redis(connection_pool=pool)
