"""The upstream HTTP seam: the only module that opens sockets to providers.

Provider adapters are sans-I/O: they turn a canonical request into an ``UpstreamRequest`` and
parse bytes back (the shapes are in ``gateway.wire``). Everything about the network — pooling,
keep-alive, timeouts, which HTTP library — lives behind ``Transport.send``, so it can be
measured and swapped in one place (aiohttp by default, for throughput; httpx for callers who
bring their own ``AsyncClient``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx

from gateway.errors import StaleConnectionError, UpstreamConnectionError, UpstreamTimeoutError
from gateway.wire import Timeouts, Transport, UpstreamRequest, UpstreamResponse

STREAM_READ_BYTES = 64 * 1024  # the most one read of a streamed body hands on

# --- aiohttp ------------------------------------------------------------------------------


class _Watched:
    """A streamed body the idle watch looks after: its reads so far, whether its reader is
    waiting for bytes now, and since when the watch has seen it waiting on the same count."""

    __slots__ = ("expired", "idle", "reads", "resp", "seen", "since", "waiting")

    def __init__(self, resp: aiohttp.ClientResponse, idle: float, now: float) -> None:
        self.resp = resp
        self.idle = idle
        self.reads = 0
        self.waiting = False
        self.seen = 0
        self.since = now
        self.expired = False


class IdleWatch:
    """One timer for every streamed body of a transport, instead of aiohttp's per-read one.

    aiohttp re-arms a timer on each read from a socket (``sock_read``): for a stream, one
    cancelled and one new timer per event. The watch instead wakes every ``idle / 10`` (within
    10 ms … 250 ms), notes which bodies have been read since, and closes a body whose reader
    has waited ``idle`` seconds for a byte, so its reader gets ``UpstreamTimeoutError``. A stall
    is thus noticed between ``idle`` and ``idle`` plus two wake-ups after the last byte. Time
    the reader spends elsewhere (a slow caller holding the stream) does not count, as with
    aiohttp's timer, which stops while reading is paused.
    """

    def __init__(self) -> None:
        self._bodies: set[_Watched] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, resp: aiohttp.ClientResponse, idle: float) -> _Watched:
        loop = asyncio.get_running_loop()
        watched = _Watched(resp, idle, loop.time())
        self._bodies.add(watched)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return watched

    def forget(self, watched: _Watched) -> None:
        self._bodies.discard(watched)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        bodies = self._bodies
        while bodies:
            shortest = min(w.idle for w in bodies)
            await asyncio.sleep(min(max(shortest / 10, 0.01), 0.25))
            now = loop.time()
            for w in list(bodies):
                if w.reads != w.seen or not w.waiting:
                    w.seen, w.since = w.reads, now
                elif now - w.since >= w.idle:
                    w.expired = True
                    bodies.discard(w)
                    w.resp.close()  # the pending read fails; iter_bytes says why

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._bodies.clear()


class _AiohttpResponse:
    __slots__ = ("_idle", "_resp", "_watch", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, watch: IdleWatch, idle: float) -> None:
        self._resp = resp
        self._watch = watch
        self._idle = idle
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError("upstream stopped sending the response body") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"upstream connection broke: {exc}") from exc
        finally:
            self._resp.release()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        resp = self._resp
        content = resp.content
        # From here the idle watch, not aiohttp's per-read timer, bounds the wait for bytes.
        connection = resp.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = None
        watched = self._watch.watch(resp, self._idle)
        read = content.read
        try:
            # At most STREAM_READ_BYTES a read (as soon as any have arrived): what one read
            # brings is held — decoded, translated and re-encoded — until the caller takes
            # it, so a bounded read bounds what a slow caller's stream holds.
            while True:
                watched.waiting = True
                chunk = await read(STREAM_READ_BYTES)
                watched.waiting = False
                if not chunk:
                    break
                watched.reads += 1
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError("upstream stream went idle") from exc
        except aiohttp.ClientError as exc:
            if watched.expired:
                raise UpstreamTimeoutError("upstream stream went idle") from exc
            # aiohttp raises a stored connection error before handing over the bytes it had
            # already received; those are part of the answer, so they go first.
            buffered = b"".join(getattr(content, "_buffer", ()))
            if buffered:
                yield buffered
            raise UpstreamConnectionError(f"upstream stream broke: {exc}") from exc
        finally:
            self._watch.forget(watched)
        if watched.expired:
            raise UpstreamTimeoutError("upstream stream went idle")

    async def close(self) -> None:
        self._resp.release()


# A reused keep-alive connection that breaks within this many seconds, before any byte of an
# answer, was most likely closed by the upstream while idle (its keep-alive timeout, e.g.
# uvicorn's 5 s), not by the request: the request is worth sending once more. A break any
# later is the upstream's answer to the request and is reported as such.
STALE_WITHIN = 0.1


async def _note_reuse(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
) -> None:
    ctx = context.trace_request_ctx
    if isinstance(ctx, dict):
        ctx["at"] = time.monotonic()


class AiohttpTransport:
    """Pooled keep-alive transport on aiohttp (the fastest measured; see docs/transport.md)."""

    def __init__(self, *, max_connections: int = 1000, max_per_host: int = 0) -> None:
        self._max_connections = max_connections
        self._max_per_host = max_per_host
        self._session: aiohttp.ClientSession | None = None
        self._idle = IdleWatch()

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession binds to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=self._max_per_host,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
            )
            reuse = aiohttp.TraceConfig()
            reuse.on_connection_reuseconn.append(_note_reuse)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                trace_configs=[reuse],
            )
        return self._session

    async def send(self, request: UpstreamRequest, timeouts: Timeouts) -> UpstreamResponse:
        """Send once. Nothing is resent here: a request on a pooled connection that broke at
        once is raised as ``StaleConnectionError``, so the attempt loop resends it and counts it."""
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        reused: dict[str, float] = {}
        try:
            resp = await session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=timeout,
                allow_redirects=False,
                trace_request_ctx=reused,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError("upstream did not answer in time") from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            at = reused.get("at")
            if at is not None and time.monotonic() - at < STALE_WITHIN:
                raise StaleConnectionError(
                    f"a pooled connection to the upstream was closed as it was reused: {exc}"
                ) from exc
            raise UpstreamConnectionError(f"could not reach upstream: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(f"could not reach upstream: {exc}") from exc
        return _AiohttpResponse(resp, self._idle, timeouts.read)

    async def close(self) -> None:
        self._idle.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- httpx --------------------------------------------------------------------------------


class _HttpxResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.aread()
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("upstream stopped sending the response body") from exc
        except httpx.TransportError as exc:
            raise UpstreamConnectionError(f"upstream connection broke: {exc}") from exc
        finally:
            await self._resp.aclose()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_bytes():
                yield chunk
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("upstream stream went idle") from exc
        except httpx.TransportError as exc:
            raise UpstreamConnectionError(f"upstream stream broke: {exc}") from exc

    async def close(self) -> None:
        await self._resp.aclose()


class HttpxTransport:
    """Transport on an httpx.AsyncClient — pass your own client to control proxies, TLS, etc."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            timeout=None,
        )

    async def send(self, request: UpstreamRequest, timeouts: Timeouts) -> UpstreamResponse:
        timeout = httpx.Timeout(
            connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.connect
        )
        req = self._client.build_request(
            request.method,
            request.url,
            content=request.body,
            headers=request.headers,
            timeout=timeout,
        )
        try:
            resp = await self._client.send(req, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("upstream did not answer in time") from exc
        except httpx.TransportError as exc:
            raise UpstreamConnectionError(f"could not reach upstream: {exc}") from exc
        return _HttpxResponse(resp)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


__all__ = [
    "AiohttpTransport",
    "HttpxTransport",
    "Timeouts",
    "Transport",
    "UpstreamRequest",
    "UpstreamResponse",
]
