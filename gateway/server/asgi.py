"""Bare ASGI dispatch for the hot routes (chat completions, embeddings).

FastAPI's and Starlette's stack (error and exception middleware, the body-limit and exit-stack
layers, the router, the telemetry check that reads the environment) cost ~0.1 ms a request
(measured) and gives these handlers nothing: they read, validate and answer on their own. So
``GatewayApp`` hands a POST to a hot path straight to its handler and sends the answer itself;
everything else (admin, spend, models, health, 404s, lifespan) goes through FastAPI as before.
As soon as any middleware is added to the app, every request takes the FastAPI path again, so
middleware is never skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Endpoint = Callable[[Request], Awaitable[Response]]
ErrorResponse = Callable[[], Response]

log = logging.getLogger("gateway.server")


class GatewayApp(FastAPI):
    """FastAPI, plus an exact-path table of POST handlers served without the framework."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_routes: dict[str, Endpoint] = {}
        self.internal_error: ErrorResponse | None = None
        # While this says so (the process is draining), every answer carries
        # ``Connection: close``, so keep-alive connections end cleanly after an answer instead
        # of being cut when the listener closes, where a request already on its way would fail.
        self.closing: Callable[[], bool] = lambda: False
        # Requests one of these claims go through the router even on a hot path (routes
        # chosen by more than the path, such as the Mistral SDK's surface).
        self.routed_requests: list[Callable[[Scope], bool]] = []
        # The client's address and scheme from X-Forwarded-* set by trusted proxies, if any.
        self._forwarded: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None

    def trust_proxies(self, proxies: list[str]) -> None:
        """Believe X-Forwarded-For/-Proto from ``proxies`` (addresses or CIDR ranges): the
        client's address becomes the nearest one they did not add. Without it (or with an
        empty list) a request's client is its peer and those headers are ignored."""
        # uvicorn's middleware is typed with its own scope types; ours are the plain mappings.
        middleware: Any = ProxyHeadersMiddleware(cast(Any, self._dispatch), trusted_hosts=proxies)
        self._forwarded = middleware if proxies else None

    def add_hot_route(self, path: str, endpoint: Endpoint) -> None:
        """Serve POST ``path`` with ``endpoint`` directly (it stays a normal route as well)."""
        self.hot_routes[path] = endpoint
        self.add_route(path, endpoint, methods=["POST"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._forwarded is not None:
            await self._forwarded(scope, receive, send)
        else:
            await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.closing():
            send = closing_connection(send)
        if scope["type"] == "http" and scope["method"] == "POST" and not self.user_middleware:
            endpoint = self.hot_routes.get(scope["path"])
            if (
                endpoint is not None
                and not scope.get("root_path")
                and not any(claims(scope) for claims in self.routed_requests)
            ):
                await self._serve(endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await endpoint(HotRequest(scope, receive))
        except Exception:
            # As Starlette's ServerErrorMiddleware does: answer 500, then let the server see it.
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if self.internal_error is not None:
                await send_response(self.internal_error(), send)
            raise
        if isinstance(response, StreamingResponse):
            await send_stream(response, receive, send)
        else:
            await send_response(response, send)


def closing_connection(send: Send) -> Send:
    """``send``, adding ``Connection: close`` to the response head."""

    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {
                **message,
                "headers": [*message.get("headers", ()), (b"connection", b"close")],
            }
        await send(message)

    return send_closing


class JSONResponse(Response):
    """A body serialised already, with header names in lower case already (as the gateway's
    are): the raw headers are built in one pass, without Starlette's per-header checks."""

    media_type = "application/json"

    def __init__(self, body: bytes, headers: dict[str, str], status_code: int = 200) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        raw = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers = raw


class LookupHeaders(Headers):
    """Request headers as a dict: a handler asks for about ten of them, and Starlette's
    ``Headers`` scans and re-encodes the whole list for each. The first value of a repeated
    header wins, as in ``Headers``."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope=scope)
        self._map = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(self._list)}

    def __getitem__(self, key: str) -> str:
        return self._map[key.lower()]

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and key.lower() in self._map

    def get(self, key: str, default: Any = None) -> Any:
        return self._map.get(key.lower(), default)


class HotRequest(Request):
    """A Starlette request whose headers are looked up in a dict."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        super().__init__(scope, receive)
        self._headers = LookupHeaders(scope)


class RequestIds:
    """Random 128-bit request ids as 32 hex digits (like ``uuid4().hex``), from a buffer of
    ``os.urandom`` refilled every 256 ids: one system call instead of one per request."""

    SIZE = 16 * 256

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0
        # A forked child must not hand out its parent's remaining ids.
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._buf, self._at = b"", 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._buf):
            self._buf, at = os.urandom(self.SIZE), 0
        self._at = at + 16
        return self._buf[at : at + 16].hex()


async def send_response(response: Response, send: Send) -> None:
    """A complete response: its head, then its body in one message."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


async def send_stream(response: StreamingResponse, receive: Receive, send: Send) -> None:
    """Relay a streaming body; if the caller disconnects meanwhile, stop at once.

    The body iterator is cancelled where it waits (e.g. on a stalled upstream), so its own
    clean-up runs — the gateway's closes the upstream and bills what was generated. One plain
    task watches for the disconnect (Starlette's version uses an anyio task group per stream).
    """
    task = asyncio.current_task()
    assert task is not None
    gone = done = False

    def on_message(watch: asyncio.Task[Message]) -> None:
        nonlocal gone
        if done:  # scheduled as the response ended: nothing left to stop
            return
        if not watch.cancelled() and watch.exception() is None:
            gone = True  # _next_disconnect returns only on http.disconnect
            task.cancel()

    watch = asyncio.ensure_future(_next_disconnect(receive))
    watch.add_done_callback(on_message)
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        async for chunk in response.body_iterator:
            if not isinstance(chunk, bytes):
                chunk = bytes(chunk) if isinstance(chunk, memoryview) else chunk.encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
    finally:
        done = True
        watch.cancel()


async def _next_disconnect(receive: Receive) -> Message:
    """The first ``http.disconnect`` (the request body has been read by then)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return message
