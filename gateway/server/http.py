"""What every route shares: reading and checking a request, and answering — errors as
OpenAI-shaped JSON, streams as server-sent events with the gateway's headers.

Route modules (``openai``, ``native``, ``spend``, ``admin``, ``operations``) build on this
one; ``app`` only wires them together.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse

from gateway.auth import Authenticator, Principal
from gateway.call import Call
from gateway.config import GatewayConfig
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequestError,
    PayloadTooLargeError,
    ShuttingDownError,
    check_json_depth,
    validated,
)
from gateway.server.asgi import CALLER, Caller, JSONResponse, RequestIds
from gateway.streams import ChunkStream
from gateway.types import CompletionRequest, EmbeddingRequest
from gateway.wire import DONE, JSON, encode_event

log = logging.getLogger("gateway.server")
M = TypeVar("M", bound=BaseModel)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
JSON_TYPE = "application/json"
MAX_JSON_DEPTH = 128  # server.max_json_depth's default
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


# --- answers --------------------------------------------------------------------------------


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    """The OpenAI-style error body with its status and the gateway's headers."""
    out = dict(exc.headers)
    if headers:
        out.update(headers)
    return Response(
        orjson.dumps(exc.to_body()), status_code=exc.status, headers=out, media_type=JSON_TYPE
    )


def internal_error(call: Call | None = None) -> Response:
    """The answer to an unexpected exception (which has been logged), with the request id
    of the call it broke, if one had started."""
    call = call or Call(request_id=_request_ids.next())
    return error_response(InternalError(call.request_id), call.headers())


def cut_response(call: Call | None) -> Response:
    """The answer to a request the server stopped before it was answered (shutdown)."""
    call = call or Call(request_id=_request_ids.next())
    return error_response(ShuttingDownError(), call.headers())


def json_body(body: object, status: int = 200) -> Response:
    """A JSON answer (admin, spend and operations routes)."""
    return Response(orjson.dumps(body), status_code=status, media_type=JSON_TYPE)


def call_response(result: JSON, call: Call) -> Response:
    """A model call's JSON answer with the call's ``x-gateway-*`` headers."""
    return JSONResponse(orjson.dumps(result), call.headers())


def stream_response(
    stream: ChunkStream, call: Call, chunks: AsyncIterator[JSON] | None = None
) -> StreamingResponse:
    """A stream as server-sent events with the call's headers (``chunks``: the stream reshaped
    for a provider-native surface)."""
    return StreamingResponse(
        sse_body(stream, chunks, call.request_id),
        media_type="text/event-stream",
        headers={**call.headers(), **SSE_HEADERS},
    )


async def sse_body(
    stream: ChunkStream, chunks: AsyncIterator[JSON] | None = None, request_id: str | None = None
) -> AsyncIterator[bytes]:
    """Chunks as SSE events, then ``[DONE]``; a failure mid-stream becomes an error event
    and the stream ends without ``[DONE]``, so no client mistakes it for a complete answer.
    ``chunks`` is the stream reshaped for a provider-native surface, if any. The events of
    one upstream read go out in one write."""
    error: GatewayError | None = None
    try:
        if chunks is not None:
            async for chunk in chunks:
                yield encode_event(chunk)
        else:
            async for batch in stream.batches():
                yield b"".join([encode_event(chunk) for chunk in batch])
        yield DONE
    except GatewayError as exc:
        log.warning("stream failed: %s", exc.message)
        yield encode_event(exc.to_body())
    except Exception:
        log.exception("unexpected error while streaming")
        error = InternalError(request_id, " mid-stream")
        yield encode_event(error.to_body())
    finally:
        await stream.aclose(error)


# --- requests -------------------------------------------------------------------------------

_request_ids = RequestIds()


def new_call(request: Request) -> Call:
    """A call's facts, with an id of the gateway's own (the ledger's key, so a caller cannot
    make two calls share one); a sane id the caller sent is kept alongside and echoed.
    The connection's watch (``gateway.server.asgi.Caller``) learns of the call, so a
    cancellation is recorded for what it is: the caller left (499) or the server stopped
    (503)."""
    call = Call(request_id=_request_ids.next())
    given = request.headers.get("x-client-request-id") or request.headers.get("x-request-id")
    if given and _REQUEST_ID.match(given):
        call.client_request_id = given
    caller = request.scope.get(CALLER)
    if isinstance(caller, Caller):
        caller.call = call
        call.cancelled_by = caller.cancellation
    return call


def read_json_object(
    raw: bytes, *, empty: bytes | None = None, max_depth: int = MAX_JSON_DEPTH
) -> dict[str, Any]:
    """A request body decoded as a JSON object, or the 400 that says what is wrong with it
    (``empty``: what an empty body stands for; ``max_depth``: how deep it may nest)."""
    try:
        data = orjson.loads(raw if raw or empty is None else empty)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"request body is not valid JSON ({exc.msg} at position {exc.pos}); "
            "send a JSON object with Content-Type: application/json"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    # Fewer brackets than levels allowed cannot nest too deep: most bodies skip the walk.
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        check_json_depth(data, max_depth)
    return data


def check_json_type(request: Request) -> None:
    """The 415 for a body declared as something other than JSON. No Content-Type at all is
    taken as JSON (some clients send none); ``application/json`` may carry parameters
    (``; charset=utf-8``) and ``application/<x>+json`` is JSON too."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media = declared.partition(";")[0].strip().lower()
    if media == JSON_TYPE or (media.startswith("application/") and media.endswith("+json")):
        return
    raise GatewayError(
        f"this route takes a JSON body, and the request declares Content-Type "
        f"'{declared[:100]}'; send the body with Content-Type: application/json",
        status=415,
        type="invalid_request_error",
        code="unsupported_media_type",
    )


class Gatekeeper:
    """Reads, size-limits, authenticates and validates request bodies."""

    def __init__(self, config: GatewayConfig, auth: Authenticator) -> None:
        self.max_body = config.server.max_body_bytes
        self.max_depth = config.server.max_json_depth
        self.auth = auth

    async def authenticate(self, request: Request, call: Call | None = None) -> Principal:
        """The caller's Principal (401 when the key is missing, wrong, revoked or expired);
        with ``call``, also who to bill and which regions the request narrows to."""
        header = request.headers.get("authorization")
        token = None
        if header:
            scheme, _, value = header.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        principal = await self.auth.authenticate(
            token or request.headers.get("api-key"),
            address=request.client.host if request.client else None,
        )
        if call is not None:
            call.principal = principal
            call.key_id = principal.key_id
            call.team = principal.team_id
            call.tags = dict(principal.tags)
            call.end_user = request.headers.get("x-gateway-user")
            regions = request.headers.get("x-gateway-regions")
            if regions:
                call.regions = frozenset(r.strip() for r in regions.split(",") if r.strip())
        return principal

    async def body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise self._too_large()
        if length is not None:
            return await request.body()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body is larger than the gateway's limit of {self.max_body} bytes "
            "(server.max_body_bytes); send a smaller request"
        )

    async def model(self, request: Request, model: type[M], *, empty: bytes | None = None) -> M:
        """Read the body (size-limited) and validate it against ``model``."""
        return validated(model, await self.json(request, empty=empty))

    async def json(self, request: Request, *, empty: bytes | None = None) -> dict[str, Any]:
        """The body as a JSON object: declared as JSON (415), within the size (413) and
        depth (400) limits."""
        check_json_type(request)
        raw = await self.body(request)
        return read_json_object(raw, empty=empty, max_depth=self.max_depth)

    async def parse(
        self,
        request: Request,
        model: type[M],
        call: Call,
        adjust: Callable[[dict[str, Any]], None] | None = None,
    ) -> M:
        """Authenticate, read and validate; ``adjust`` may rewrite the decoded body first
        (provider-native surfaces put it in the canonical shape)."""
        await self.authenticate(request, call)
        data = await self.json(request)
        if adjust is not None:
            adjust(data)
        return validated(model, data)


def apply_gateway_headers(
    request: Request, body: CompletionRequest | EmbeddingRequest, call: Call
) -> None:
    """Per-request options sent as headers (for clients that cannot add body fields):
    ``x-gateway-fallbacks: m1,m2`` (or ``none``) and ``x-gateway-timeout: <seconds>``.
    Values in the body win."""
    call.tag_with((body.model_extra or {}).get("metadata"))
    call.cache_directive = request.headers.get("x-gateway-cache")
    fallbacks = request.headers.get("x-gateway-fallbacks")
    if fallbacks is not None and body.fallbacks is None:
        names = [n.strip() for n in fallbacks.split(",") if n.strip()]
        body.fallbacks = [] if names in ([], ["none"]) else names
    timeout = request.headers.get("x-gateway-timeout")
    if timeout is not None and body.gateway_timeout is None:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = 0.0
        if not 0 < seconds < 86400:
            raise InvalidRequestError(
                "x-gateway-timeout must be a number of seconds greater than 0",
                param="x-gateway-timeout",
            )
        body.gateway_timeout = seconds
