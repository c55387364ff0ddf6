"""FastAPI app factory: OpenAI-compatible routes over one Engine, errors as OpenAI JSON."""

from __future__ import annotations

import gc
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse

from gateway.auth import Authenticator, Principal
from gateway.config import GatewayConfig, resolve_config
from gateway.engine import CallInfo, ChunkStream, Engine
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from gateway.lifecycle import Lifecycle
from gateway.observability import instrument
from gateway.readiness import Readiness
from gateway.reload import ConfigReloader
from gateway.server.asgi import GatewayApp, JSONResponse, RequestIds
from gateway.streaming import DONE, encode_event
from gateway.types import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

log = logging.getLogger("gateway.server")
M = TypeVar("M", bound=BaseModel)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
JSON_TYPE = "application/json"


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    """The OpenAI-style error body with its status and the gateway's headers."""
    out = dict(exc.headers)
    if headers:
        out.update(headers)
    return Response(
        orjson.dumps(exc.to_body()), status_code=exc.status, headers=out, media_type=JSON_TYPE
    )


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """A message naming each invalid field, and the first field as ``param``."""
    parts = []
    first: str | None = None
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        first = first or loc
        parts.append(f"'{loc}': {err['msg'].lower()}" if loc else err["msg"])
    return "invalid request body: " + "; ".join(parts), first


class Gatekeeper:
    """Reads, size-limits, authenticates and validates request bodies."""

    def __init__(self, config: GatewayConfig, auth: Authenticator) -> None:
        self.max_body = config.server.max_body_bytes
        self.auth = auth

    async def authenticate(self, request: Request, info: CallInfo | None = None) -> Principal:
        """The caller's Principal (401 when the key is missing, wrong, revoked or expired);
        with ``info``, also who to bill and which regions the request narrows to."""
        header = request.headers.get("authorization")
        token = None
        if header:
            scheme, _, value = header.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        principal = await self.auth.authenticate(token or request.headers.get("api-key"))
        if info is not None:
            info.principal = principal
            info.key_id = principal.key_id
            info.team = principal.team_id
            info.tags = dict(principal.tags)
            info.end_user = request.headers.get("x-gateway-user")
            regions = request.headers.get("x-gateway-regions")
            if regions:
                info.regions = frozenset(r.strip() for r in regions.split(",") if r.strip())
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

    async def parse(
        self,
        request: Request,
        model: type[M],
        info: CallInfo,
        adjust: Callable[[dict[str, Any]], None] | None = None,
    ) -> M:
        """Authenticate, read and validate; ``adjust`` may rewrite the decoded body first
        (provider-native surfaces put it in the canonical shape)."""
        await self.authenticate(request, info)
        raw = await self.body(request)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"request body is not valid JSON ({exc.msg} at position {exc.pos}); "
                "send a JSON object with Content-Type: application/json"
            ) from exc
        if not isinstance(data, dict):
            raise InvalidRequestError("request body must be a JSON object")
        if adjust is not None:
            adjust(data)
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise InvalidRequestError(message, param=param) from exc


def apply_gateway_headers(
    request: Request, body: CompletionRequest | EmbeddingRequest, info: CallInfo
) -> None:
    """Per-request options sent as headers (for clients that cannot add body fields):
    ``x-gateway-fallbacks: m1,m2`` (or ``none``) and ``x-gateway-timeout: <seconds>``.
    Values in the body win."""
    info.tag_with((body.model_extra or {}).get("metadata"))
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


_request_ids = RequestIds()


def new_info(request: Request) -> CallInfo:
    """A call's facts, with an id of the gateway's own (the ledger's key, so a caller cannot
    make two calls share one); a sane id the caller sent is kept alongside and echoed."""
    info = CallInfo(request_id=_request_ids.next())
    given = request.headers.get("x-client-request-id") or request.headers.get("x-request-id")
    if given and _REQUEST_ID.match(given):
        info.client_request_id = given
    return info


def config_source(
    config: GatewayConfig | str | dict[str, Any] | None, engine: Engine | None
) -> str | None:
    """The file a reload re-reads: the one the app was built from, if it was a file."""
    if isinstance(config, str | os.PathLike):
        return os.fspath(config)
    if config is None and engine is None:
        return os.environ.get("GATEWAY_CONFIG") or None
    return None


# Young-generation threshold while serving: a request allocates a few thousand container
# objects, so the default of 700 ran a collection several times per request.
GC_THRESHOLDS = (20_000, 50, 100)


def settle_heap() -> None:
    """Take what start-up built (modules, config, price catalog, pools) out of the cyclic
    collector's reach, and collect young objects less often. Under load the collector spent
    ~15 % of the worker's time re-scanning that long-lived heap (py-spy --native)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve_app() -> FastAPI:
    """The app as ``llm-gateway serve`` runs it in each worker (config from the environment),
    with the collector tuned for a long-running server process."""
    return create_app(settle_gc=True)


def create_app(
    config: GatewayConfig | str | dict[str, Any] | None = None,
    *,
    engine: Engine | None = None,
    settle_gc: bool = False,
) -> FastAPI:
    """The proxy app. ``engine`` may be shared (tests, library); otherwise one is built."""
    cfg = engine.config if engine is not None else resolve_config(config)
    owned = engine is None
    eng = engine or Engine(cfg)
    gate = Gatekeeper(cfg, eng.auth)
    readiness = Readiness(eng)
    reloader = ConfigReloader(eng, config_source(config, engine))
    lifecycle = Lifecycle(readiness, reloader, drain_delay=cfg.server.drain_delay)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await eng.start()
        lifecycle.install()
        await observability.start()
        if settle_gc:
            settle_heap()
        yield
        readiness.draining = True
        lifecycle.uninstall()
        if owned:
            await eng.aclose()
            await reloader.aclose()
        await observability.aclose()

    app = GatewayApp(
        title="llm-gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.engine = eng
    app.closing = lambda: readiness.draining  # answers ask clients to close once draining
    observability = app.state.observability = instrument(app, eng, gate.authenticate)

    async def chat_completions(request: Request) -> Response:
        info = new_info(request)
        try:
            body = await gate.parse(request, ChatCompletionRequest, info)
            apply_gateway_headers(request, body, info)
            if body.stream:
                stream = await eng.chat_stream(body, info)
                return StreamingResponse(
                    sse_body(stream),
                    media_type="text/event-stream",
                    headers={
                        **info.headers(),
                        "cache-control": "no-cache",
                        "x-accel-buffering": "no",
                    },
                )
            result = await eng.chat(body, info)
        except GatewayError as exc:
            eng.observe(info, exc)  # if refused before the engine saw it (auth, body, headers)
            return error_response(exc, info.headers())
        return JSONResponse(orjson.dumps(result), info.headers())

    async def embeddings(request: Request) -> Response:
        info = new_info(request)
        info.operation = "embeddings"  # for metrics and logs, should it be refused early
        try:
            body = await gate.parse(request, EmbeddingRequest, info)
            apply_gateway_headers(request, body, info)
            result = await eng.embeddings(body, info)
        except GatewayError as exc:
            eng.observe(info, exc)  # if refused before the engine saw it (auth, body, headers)
            return error_response(exc, info.headers())
        return JSONResponse(orjson.dumps(result), info.headers())

    async def list_models(request: Request) -> Response:
        info = new_info(request)
        try:
            await gate.authenticate(request)
        except GatewayError as exc:
            return error_response(exc, info.headers())
        return Response(
            orjson.dumps({"object": "list", "data": eng.models()}),
            media_type=JSON_TYPE,
            headers={"x-request-id": info.request_id},
        )

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        info = new_info(request)
        try:
            await gate.authenticate(request)
            for m in eng.models():
                if m["id"] == model_id:
                    return Response(
                        orjson.dumps(m),
                        media_type=JSON_TYPE,
                        headers={"x-request-id": info.request_id},
                    )
            raise NotFoundError(
                f"model '{model_id}' is not served by this gateway; available models: "
                f"{', '.join(eng.router.models())}",
                param="model",
            )
        except GatewayError as exc:
            return error_response(exc, info.headers())

    # The handlers read and validate the body themselves: the hot ones are served without the
    # framework (see gateway/server/asgi.py), the others as plain Starlette routes.
    app.internal_error = internal_error
    for prefix in ("/v1", ""):
        app.add_hot_route(f"{prefix}/chat/completions", chat_completions)
        app.add_hot_route(f"{prefix}/embeddings", embeddings)
        app.add_route(f"{prefix}/models", list_models, methods=["GET"])
        app.add_route(f"{prefix}/models/{{model_id:path}}", get_model, methods=["GET"])
    from gateway.server.spend import add_spend_routes  # spend.py builds on this module

    add_spend_routes(app, eng, gate)
    from gateway.server.admin import add_admin_routes  # admin.py builds on this module

    add_admin_routes(app, eng, gate)
    from gateway.server.native import add_native_routes  # native.py builds on this module

    add_native_routes(app, eng, gate)
    if cfg.ui.enabled:
        from gateway.ui import add_ui_routes  # the dashboard at /ui

        add_ui_routes(app, eng)

    from gateway.server.operations import add_operations_routes

    add_operations_routes(app, eng, readiness, reloader)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err = GatewayError(
                f"no route {request.method} {request.url.path}; this gateway "
                "serves the OpenAI API under /v1",
                status=404,
                type="invalid_request_error",
                code="unknown_route",
            )
        else:
            err = GatewayError(
                str(exc.detail), status=exc.status_code, type="invalid_request_error"
            )
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidRequestError(f"invalid request: {exc.errors()[:3]}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return internal_error()

    return app


def internal_error() -> Response:
    """The answer to an unexpected exception (which has been logged)."""
    return error_response(
        GatewayError(
            "the gateway hit an internal error; it has been logged — retry, and report it if "
            "it persists",
            status=500,
            type="api_error",
            code="internal_error",
        )
    )


async def sse_body(
    stream: ChunkStream, chunks: AsyncIterator[dict[str, Any]] | None = None
) -> AsyncIterator[bytes]:
    """Chunks as SSE events, then ``[DONE]``; a failure mid-stream becomes an error event
    and the stream ends without ``[DONE]``, so no client mistakes it for a complete answer.
    ``chunks`` is the stream reshaped for a provider-native surface, if any. The events of
    one upstream read go out in one write."""
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
        yield encode_event(
            GatewayError(
                "the gateway hit an internal error mid-stream", code="internal_error"
            ).to_body()
        )
    finally:
        await stream.aclose()
