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

from gateway.call import Call
from gateway.errors import ClientDisconnectedError, GatewayError, ShuttingDownError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Endpoint = Callable[[Request], Awaitable[Response]]
ErrorResponse = Callable[[Call | None], Response]
CALLER = "gateway.caller"  # the scope key of a request's ``Caller``

log = logging.getLogger("gateway.server")


class GatewayApp(FastAPI):
    """FastAPI, plus an exact-path table of POST handlers served without the framework."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_routes: dict[str, Endpoint] = {}
        self.internal_error: ErrorResponse | None = None
        # The answer to a request the server cancelled (a shutdown's grace ran out) before
        # its answer started.
        self.cut_response: ErrorResponse | None = None
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
        middleware: Any = ProxyHeadersMiddleware(cast(Any, self._handle), trusted_hosts=proxies)
        self._forwarded = middleware if proxies else None

    def add_hot_route(self, path: str, endpoint: Endpoint) -> None:
        """Serve POST ``path`` with ``endpoint`` directly (it stays a normal route as well)."""
        self.hot_routes[path] = endpoint
        self.add_route(path, endpoint, methods=["POST"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._forwarded is not None:
            await self._forwarded(scope, receive, send)
        else:
            await self._handle(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if self.closing():
            send = closing_connection(send)
        caller = scope[CALLER] = Caller(receive, send)
        try:
            await self._dispatch(scope, caller.receive, caller.send)
        except asyncio.CancelledError:
            if caller.gone:  # the caller left: its call is recorded (499), nobody to answer
                return
            if caller.started or self.cut_response is None:
                raise
            # Cancelled by the server (a shutdown's grace ran out) before any answer: say so
            # in the OpenAI shape, with the request id the ledger has it under.
            await send_response(self.cut_response(caller.call), send)
        finally:
            caller.close()

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST" and not self.user_middleware:
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
        caller: Caller = scope[CALLER]
        try:
            response = await endpoint(HotRequest(scope, receive))
        except Exception:
            # As Starlette's ServerErrorMiddleware does: answer 500, then let the server see it.
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if self.internal_error is not None:
                await send_response(self.internal_error(caller.call), send)
            raise
        caller.answered = True
        if isinstance(response, StreamingResponse):
            await send_stream(response, caller, send)
        else:
            await send_response(response, send)


class Caller:
    """One HTTP request's caller, watched: once its body has been read, a task waits for
    ``http.disconnect``, and if the caller leaves before the answer has started, the
    request's task is cancelled — the call stops where it waits (an upstream request, a
    retry's pause), closing its upstream connection, and is recorded as 499. The app's own
    later ``receive()`` calls get that same disconnect.

    ``receive`` and ``send`` stand in for the server's. The route kit tells it the request's
    ``call``, so a cancellation is recorded, and answered, under the call's request id."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._task = asyncio.current_task()
        self._left: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._watch: asyncio.Task[None] | None = None
        self.call: Call | None = None
        self.gone = False  # the caller disconnected
        self.started = False  # the answer's head has been sent
        self.answered = False  # the handler has returned its answer (a hot route)
        # Told of the disconnect instead, once set (a stream relayed by ``send_stream``).
        self.leaving: Callable[[], None] | None = None

    async def receive(self) -> Message:
        if self._watch is not None:  # the body has been read: only the disconnect is left
            return await asyncio.shield(self._left)
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone = True
        elif not message.get("more_body", False):
            self._watch = asyncio.ensure_future(self._until_gone())
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    @property
    def server_send(self) -> Send:
        """The server's own ``send``, for a body once its head has gone through ``send``."""
        return self._send

    def cancellation(self) -> GatewayError:
        """What a cancellation of the request's call means."""
        if self.gone:
            return ClientDisconnectedError(
                "the caller closed the connection before the answer started"
            )
        return ShuttingDownError()

    async def _until_gone(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        self.gone = True
        self._left.set_result(message)
        if self.leaving is not None:
            self.leaving()
        elif not (self.started or self.answered) and self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


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


async def send_stream(response: StreamingResponse, caller: Caller, send: Send) -> None:
    """Relay a streaming body; if the caller disconnects meanwhile, stop at once.

    The body iterator is cancelled where it waits (e.g. on a stalled upstream), so its own
    clean-up runs — the gateway's closes the upstream and bills what was generated. The
    caller's watch (``Caller``), one plain task, tells of the disconnect (Starlette's version
    uses an anyio task group per stream).
    """
    task = asyncio.current_task()
    assert task is not None
    gone = done = False

    def on_leave() -> None:
        nonlocal gone
        if done:  # the response has ended: nothing left to stop
            return
        gone = True
        task.cancel()

    caller.leaving = on_leave
    if caller.gone:  # left before the answer started: stop where the body first waits
        on_leave()
    try:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        # The head went through ``send`` (the caller's, which notes it); the body's many
        # messages go straight to the server's.
        body_send = caller.server_send
        async for chunk in response.body_iterator:
            if not isinstance(chunk, bytes):
                chunk = bytes(chunk) if isinstance(chunk, memoryview) else chunk.encode()
            await body_send({"type": "http.response.body", "body": chunk, "more_body": True})
        await body_send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
    finally:
        done = True
