"""The OpenAI API under ``/v1`` (and without the prefix): chat completions, embeddings, models.

The two hot routes are served without the framework (``gateway.server.asgi``); each reads,
checks and answers on its own through the shared route kit (``gateway.server.http``). A
request refused before it reached the engine (a wrong key, a bad body) is still told to the
observers, so metrics and the access log see every answer.
"""

from __future__ import annotations

import orjson
from fastapi import Request
from starlette.responses import Response

from gateway.engine import Engine
from gateway.errors import GatewayError, NotFoundError
from gateway.server.asgi import GatewayApp
from gateway.server.http import (
    JSON_TYPE,
    Gatekeeper,
    apply_gateway_headers,
    call_response,
    error_response,
    new_call,
    stream_response,
)
from gateway.types import ChatCompletionRequest, EmbeddingRequest


def add_openai_routes(app: GatewayApp, engine: Engine, gate: Gatekeeper) -> None:
    """Register the OpenAI routes on ``app``, under ``/v1`` and at the root."""

    async def chat_completions(request: Request) -> Response:
        call = new_call(request)
        try:
            body = await gate.parse(request, ChatCompletionRequest, call)
            apply_gateway_headers(request, body, call)
            if body.stream:
                return stream_response(await engine.chat_stream(body, call), call)
            result = await engine.chat(body, call)
        except GatewayError as exc:
            engine.observe(call, exc)  # if refused before the engine saw it (auth, body, headers)
            return error_response(exc, call.headers())
        return call_response(result, call)

    async def embeddings(request: Request) -> Response:
        call = new_call(request)
        call.operation = "embeddings"  # for metrics and logs, should it be refused early
        try:
            body = await gate.parse(request, EmbeddingRequest, call)
            apply_gateway_headers(request, body, call)
            result = await engine.embeddings(body, call)
        except GatewayError as exc:
            engine.observe(call, exc)  # if refused before the engine saw it (auth, body, headers)
            return error_response(exc, call.headers())
        return call_response(result, call)

    async def list_models(request: Request) -> Response:
        call = new_call(request)
        try:
            await gate.authenticate(request)
        except GatewayError as exc:
            return error_response(exc, call.headers())
        return Response(
            orjson.dumps({"object": "list", "data": engine.models()}),
            media_type=JSON_TYPE,
            headers={"x-request-id": call.request_id},
        )

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        call = new_call(request)
        try:
            await gate.authenticate(request)
            for m in engine.models():
                if m["id"] == model_id:
                    return Response(
                        orjson.dumps(m),
                        media_type=JSON_TYPE,
                        headers={"x-request-id": call.request_id},
                    )
            raise NotFoundError(
                f"model '{model_id}' is not served by this gateway; available models: "
                f"{', '.join(engine.router.models())}",
                param="model",
            )
        except GatewayError as exc:
            return error_response(exc, call.headers())

    for prefix in ("/v1", ""):
        app.add_hot_route(f"{prefix}/chat/completions", chat_completions)
        app.add_hot_route(f"{prefix}/embeddings", embeddings)
        app.add_route(f"{prefix}/models", list_models, methods=["GET"])
        app.add_route(f"{prefix}/models/{{model_id:path}}", get_model, methods=["GET"])
