"""The OpenAI Responses API under ``/v1`` (and without the prefix): ``POST /responses``,
``GET``/``DELETE /responses/{id}`` and ``GET /responses/{id}/input_items``.

A request is translated to chat and run by the Engine (``gateway.responses``), so keys,
limits, routing, retries, costs and the ledger are the chat route's; a stream is answered
with the Responses API's typed events (``event: <type>`` and its JSON).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from fastapi import Request
from starlette.responses import Response, StreamingResponse

from gateway.call import Call
from gateway.engine import Engine
from gateway.errors import GatewayError, InternalError, InvalidRequestError
from gateway.responses.convert import ResponsesRequest
from gateway.responses.service import ResponseStream, owner_of, responses_for
from gateway.server.asgi import GatewayApp
from gateway.server.http import (
    SSE_HEADERS,
    Gatekeeper,
    apply_gateway_headers,
    call_response,
    error_response,
    json_body,
    new_call,
)
from gateway.server.native import AzureSurface
from gateway.wire import JSON

log = logging.getLogger("gateway.server")


def encode_typed_event(event: JSON) -> bytes:
    """One server-sent event named after its ``type``."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def events_body(opened: ResponseStream, call: Call) -> AsyncIterator[bytes]:
    """The stream's events; a failure mid-stream ends it with ``error`` and
    ``response.failed`` (the answer is billed for what was generated, as chat's is)."""
    error: GatewayError | None = None
    try:
        async for event in opened.events:
            yield encode_typed_event(event)
    except GatewayError as exc:
        log.warning("stream failed: %s", exc.message)
        for event in opened.writer.fail(exc.code or exc.type, exc.message):
            yield encode_typed_event(event)
    except Exception:
        log.exception("unexpected error while streaming")
        error = InternalError(call.request_id, " mid-stream")
        for event in opened.writer.fail("server_error", error.message):
            yield encode_typed_event(event)
    finally:
        await opened.chunks.aclose(error)


def add_responses_routes(app: GatewayApp, engine: Engine, gate: Gatekeeper) -> None:
    """Register the Responses routes on ``app``, under ``/v1`` and at the root, and Azure
    OpenAI's (``/openai/v1/responses``, ``/openai/responses?api-version=…``) for Azure
    clients, whose ``model`` is a deployment name (``surfaces.azure.deployments``)."""
    service = responses_for(engine)
    azure = AzureSurface(engine, gate)

    async def create(request: Request) -> Response:
        call = new_call(request)
        call.operation = "responses"  # for metrics and logs, should it be refused early
        on_azure = request.url.path.startswith("/openai/")
        if on_azure:
            call.surface = "azure"
        try:
            body = await gate.parse(request, ResponsesRequest, call)
            if on_azure:
                body.model = azure.model_for(body.model)
            history = await service.history(owner_of(call), body.previous_response_id, call)
            chat = service.prepare(body, history)
            apply_gateway_headers(request, chat, call)
            call.tag_with(body.metadata)
            if chat.stream:
                opened = await service.stream(body, chat, call)
                return StreamingResponse(
                    events_body(opened, call),
                    media_type="text/event-stream",
                    headers={**call.headers(), **SSE_HEADERS},
                )
            result = await service.create(body, chat, call)
        except GatewayError as exc:
            engine.observe(call, exc)  # if refused before the engine saw it (auth, body, id)
            return error_response(exc, call.headers())
        return call_response(result, call)

    async def retrieve(request: Request) -> Response:
        call = new_call(request)
        try:
            await gate.authenticate(request, call)
            if request.query_params.get("stream") in ("true", "1"):
                raise InvalidRequestError(
                    "stream=true is not served for stored responses; retrieve them as JSON",
                    param="stream",
                )
            found = await service.retrieve(owner_of(call), request.path_params["response_id"])
        except GatewayError as exc:
            return error_response(exc, call.headers())
        return call_response(found, call)

    async def delete(request: Request) -> Response:
        call = new_call(request)
        try:
            await gate.authenticate(request, call)
            deleted = await service.delete(owner_of(call), request.path_params["response_id"])
        except GatewayError as exc:
            return error_response(exc, call.headers())
        return call_response(deleted, call)

    async def input_items(request: Request) -> Response:
        call = new_call(request)
        try:
            await gate.authenticate(request, call)
            items = await service.input_items(owner_of(call), request.path_params["response_id"])
            page = items_page(
                items,
                order=request.query_params.get("order", "desc"),
                after=request.query_params.get("after"),
                limit=request.query_params.get("limit", "20"),
            )
        except GatewayError as exc:
            return error_response(exc, call.headers())
        return json_body(page)

    for prefix in ("/v1", "", "/openai/v1", "/openai"):
        app.add_route(f"{prefix}/responses", create, methods=["POST"])
        app.add_route(f"{prefix}/responses/{{response_id}}", retrieve, methods=["GET"])
        app.add_route(f"{prefix}/responses/{{response_id}}", delete, methods=["DELETE"])
        app.add_route(
            f"{prefix}/responses/{{response_id}}/input_items", input_items, methods=["GET"]
        )


def items_page(items: list[JSON], *, order: str, after: str | None, limit: str) -> JSON:
    """One page of a response's input items, as ``GET …/input_items`` lists them."""
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order must be asc or desc", param="order")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise InvalidRequestError("limit must be a whole number from 1 to 100", param="limit")
    ordered = list(reversed(items)) if order == "desc" else list(items)
    if after is not None:
        ids = [item.get("id") for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    page = ordered[: int(limit)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0].get("id") if page else None,
        "last_id": page[-1].get("id") if page else None,
        "has_more": len(ordered) > len(page),
    }
