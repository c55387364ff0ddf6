"""For the dependency-fault tests: a gateway served from a thread while the test's own event
loop runs the TCP proxies that stand between it and Redis or PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.server import create_app
from tests.harness import ServerThread
from tests.ledger_helpers import TcpProxy


def through(url: str, proxy: TcpProxy) -> str:
    """``url`` (redis:// or postgresql+asyncpg://) pointed at ``proxy`` instead."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


@asynccontextmanager
async def proxy_to(url: str) -> AsyncIterator[TcpProxy]:
    """A started proxy to the server ``url`` names, closed afterwards."""
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 0)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[str]:
    """A gateway for ``config`` (its root URL), started and stopped off this event loop, which
    must stay free to run the proxies the gateway talks through."""
    server = ServerThread(create_app(config))
    await asyncio.to_thread(server.__enter__)
    try:
        yield server.url
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


def redis_prefix() -> str:
    return f"test-deps-{uuid.uuid4().hex}:"
