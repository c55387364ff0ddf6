"""Provider-native surfaces: Azure OpenAI's and Mistral's own routes, over the same Engine.

A client written for Azure OpenAI (the openai SDK's ``AzureOpenAI``) or for Mistral (the
``mistralai`` SDK) points at the gateway unchanged. A surface only translates at the edge —
where the model name comes from, a few field names, the shape of a stream — and hands the
canonical request to the Engine, so auth, limits, routing, retries, costs and the ledger are
exactly the OpenAI route's. Each call's ``Call.surface`` (the ledger's ``surface`` column)
says which API it came through.

- Azure: ``/openai/deployments/{deployment}/chat/completions`` and ``…/embeddings`` (any
  ``api-version``), and ``/openai/v1/chat/completions`` and ``/openai/v1/embeddings``. The
  deployment names a gateway model, through ``surfaces.azure.deployments`` or by being its name.
- Mistral: ``/v1/fim/completions`` for everyone; ``/v1/chat/completions`` and
  ``/v1/embeddings`` for Mistral's SDKs (told apart by their User-Agent), which then get
  Mistral's stream shape (usage in the last chunk, never a chunk without choices).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from gateway.call import Call
from gateway.engine import Engine
from gateway.errors import GatewayError
from gateway.ledger.records import Surface
from gateway.server.asgi import GatewayApp
from gateway.server.http import (
    Gatekeeper,
    apply_gateway_headers,
    call_response,
    error_response,
    new_call,
    stream_response,
)
from gateway.types import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FimCompletionRequest,
    StreamOptions,
)
from gateway.wire import JSON

Chunks = AsyncIterator[JSON]
# The User-Agent of Mistral's SDKs: ``mistral-client-python/1.2.3`` (and -typescript), or
# Speakeasy's default, which ends with the package name ``mistralai``.
MISTRAL_CLIENTS = (b"mistral-client", b"mistralai")
# What Azure puts in its stream's opening, choices-less chunk.
_PROMPT_FILTER_KEYS = ("prompt_filter_results", "prompt_annotations")


def add_native_routes(app: FastAPI, engine: Engine, gate: Gatekeeper) -> None:
    """Register the Azure OpenAI and Mistral surfaces on ``app``."""
    azure = AzureSurface(engine, gate)
    mistral = MistralSurface(engine, gate)
    deployment = "/openai/deployments/{deployment}"
    app.add_route(f"{deployment}/chat/completions", azure.chat, methods=["POST"])
    app.add_route(f"{deployment}/embeddings", azure.embeddings, methods=["POST"])
    app.add_route("/openai/v1/chat/completions", azure.chat, methods=["POST"])
    app.add_route("/openai/v1/embeddings", azure.embeddings, methods=["POST"])
    for prefix in ("/v1", ""):
        app.add_route(f"{prefix}/fim/completions", mistral.fim, methods=["POST"])
    # Ahead of the OpenAI routes of the same paths, which every other client reaches (also
    # when the app serves those paths without its router).
    if isinstance(app, GatewayApp):
        app.routed_requests.append(lambda scope: client_is(scope, MISTRAL_CLIENTS))
    app.router.routes[0:0] = [
        ClientRoute(f"{prefix}/{path}", endpoint, agents=MISTRAL_CLIENTS)
        for prefix in ("/v1", "")
        for path, endpoint in (
            ("chat/completions", mistral.chat),
            ("embeddings", mistral.embeddings),
        )
    ]


class ClientRoute(Route):
    """A route (POST unless told) taken only by clients whose User-Agent contains one of
    ``agents``; the others fall through to the next route of the same path."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        agents: tuple[bytes, ...],
        methods: tuple[str, ...] = ("POST",),
    ) -> None:
        super().__init__(path, endpoint, methods=list(methods))
        self.agents = agents

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.FULL or not client_is(scope, self.agents):
            return Match.NONE, {}
        return match, child


def client_is(scope: Scope, agents: tuple[bytes, ...]) -> bool:
    """Whether the request's User-Agent contains one of ``agents``."""
    for name, value in scope["headers"]:
        if name == b"user-agent":
            agent = value.lower()
            return any(a in agent for a in agents)
    return False


async def completion_response(
    engine: Engine,
    body: CompletionRequest,
    call: Call,
    reshape: Callable[[Chunks], Chunks] | None = None,
) -> Response:
    """Run a chat or FIM request through the Engine; JSON, or SSE reshaped for the surface."""
    if body.stream:
        stream = await engine.chat_stream(body, call)
        return stream_response(stream, call, reshape(aiter(stream)) if reshape else None)
    return call_response(await engine.chat(body, call), call)


def surface_call(request: Request, surface: Surface) -> Call:
    call = new_call(request)
    call.surface = surface
    return call


# --- Azure OpenAI ---------------------------------------------------------------------------


class AzureSurface:
    """Azure OpenAI's data-plane routes. Gateway keys are accepted as ``api-key`` or as a
    Bearer token (the Gatekeeper reads both); they are never Azure keys."""

    def __init__(self, engine: Engine, gate: Gatekeeper) -> None:
        self.engine = engine
        self.gate = gate

    def model_for(self, deployment: str) -> str:
        """The gateway model an Azure deployment name stands for, or Azure's 404."""
        mapped = self.engine.config.surfaces.azure.deployments.get(deployment, deployment)
        if mapped in self.engine.router.deployments:
            return mapped
        raise GatewayError(
            f"deployment '{deployment}' is not served by this gateway: it is neither one of "
            "its models nor mapped to one in surfaces.azure.deployments; models: "
            f"{', '.join(sorted(self.engine.router.deployments)) or 'none'}",
            status=404,
            type="invalid_request_error",
            code="DeploymentNotFound",
        )

    @staticmethod
    def _named(request: Request) -> Callable[[JSON], None] | None:
        """On the deployments path, the deployment is the model (a body's model is ignored,
        as Azure ignores it); on the v1 path it is the body's ``model``."""
        deployment = request.path_params.get("deployment")
        if deployment is None:
            return None
        return lambda data: data.__setitem__("model", deployment)

    async def chat(self, request: Request) -> Response:
        call = surface_call(request, "azure")
        try:
            body = await self.gate.parse(request, ChatCompletionRequest, call, self._named(request))
            body.model = self.model_for(body.model)
            apply_gateway_headers(request, body, call)
            return await completion_response(self.engine, body, call, azure_chunks)
        except GatewayError as exc:
            self.engine.observe(call, exc)  # if refused before the engine saw it
            return error_response(exc, call.headers())

    async def embeddings(self, request: Request) -> Response:
        call = surface_call(request, "azure")
        call.operation = "embeddings"  # for metrics and logs, should it be refused early
        try:
            body = await self.gate.parse(request, EmbeddingRequest, call, self._named(request))
            body.model = self.model_for(body.model)
            apply_gateway_headers(request, body, call)
            result = await self.engine.embeddings(body, call)
        except GatewayError as exc:
            self.engine.observe(call, exc)  # if refused before the engine saw it
            return error_response(exc, call.headers())
        return call_response(result, call)


async def azure_chunks(chunks: Chunks) -> Chunks:
    """Azure's stream opening: the prompt filter results in a choices-less chunk of their own,
    as Azure sends them (the azure adapter moves them onto the first chunk with choices, for
    OpenAI clients). Streams from other providers have none and pass unchanged."""
    async for chunk in chunks:
        if any(key in chunk for key in _PROMPT_FILTER_KEYS):
            opening: JSON = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
            for key in _PROMPT_FILTER_KEYS:
                if key in chunk:
                    opening[key] = chunk.pop(key)
            yield opening
        yield chunk


# --- Mistral --------------------------------------------------------------------------------


class MistralSurface:
    """Mistral's routes: FIM for every caller, chat and embeddings for Mistral's SDKs."""

    def __init__(self, engine: Engine, gate: Gatekeeper) -> None:
        self.engine = engine
        self.gate = gate

    async def fim(self, request: Request) -> Response:
        call = surface_call(request, "mistral")
        call.operation = "fim"  # for metrics and logs, should it be refused early
        try:
            body = await self.gate.parse(request, FimCompletionRequest, call)
            if body.stream:
                body.stream_options = StreamOptions(include_usage=True)
            apply_gateway_headers(request, body, call)
            return await completion_response(self.engine, body, call, mistral_chunks)
        except GatewayError as exc:
            self.engine.observe(call, exc)  # if refused before the engine saw it
            if exc.code == "unsupported_feature" and "lacks fim" in exc.message:
                exc.message += (
                    "; fill-in-the-middle needs a deployment on Mistral (La Plateforme or Azure "
                    "serverless) of a model with FIM, such as codestral-latest"
                )
            return error_response(exc, call.headers())

    async def chat(self, request: Request) -> Response:
        call = surface_call(request, "mistral")
        try:
            body = await self.gate.parse(request, ChatCompletionRequest, call, canonical_chat)
            if body.stream:
                body.stream_options = StreamOptions(include_usage=True)
            apply_gateway_headers(request, body, call)
            if not body.stream:
                result = await self.engine.chat(body, call)
                if not result.get("usage") and call.usage:
                    result["usage"] = call.usage  # Mistral's answers always carry usage
                return call_response(result, call)
            return await completion_response(self.engine, body, call, mistral_chunks)
        except GatewayError as exc:
            self.engine.observe(call, exc)  # if refused before the engine saw it
            return error_response(exc, call.headers())

    async def embeddings(self, request: Request) -> Response:
        call = surface_call(request, "mistral")
        call.operation = "embeddings"  # for metrics and logs, should it be refused early
        try:
            body = await self.gate.parse(request, EmbeddingRequest, call, canonical_embeddings)
            apply_gateway_headers(request, body, call)
            result = await self.engine.embeddings(body, call)
        except GatewayError as exc:
            self.engine.observe(call, exc)  # if refused before the engine saw it
            return error_response(exc, call.headers())
        result.setdefault("id", f"embd-{call.request_id}")  # Mistral's answers have one
        return call_response(result, call)


def canonical_chat(data: JSON) -> None:
    """Mistral's names for things OpenAI also has become the canonical (OpenAI) names; the
    mistral adapter turns them back, others then understand them. Mistral-only fields stay."""
    if "random_seed" in data and "seed" not in data:
        data["seed"] = data.pop("random_seed")
    if data.get("tool_choice") == "any":
        data["tool_choice"] = "required"


def canonical_embeddings(data: JSON) -> None:
    if "output_dimension" in data and "dimensions" not in data:
        data["dimensions"] = data.pop("output_dimension")


async def mistral_chunks(chunks: Chunks) -> Chunks:
    """Mistral's stream shape: usage rides on the chunk that finishes the answer, and no chunk
    is without choices (clients read ``chunk.data.choices[0]`` unguarded). The finishing chunk
    is held until the usage chunk that follows it arrives."""
    held: JSON | None = None
    try:
        async for chunk in chunks:
            if held is not None:
                if chunk.get("usage") and not chunk.get("choices"):
                    held["usage"] = chunk["usage"]
                    chunk = held
                    held = None
                    yield chunk
                    continue
                yield held
                held = None
            if any(c.get("finish_reason") for c in chunk.get("choices") or ()):
                held = chunk
                continue
            yield chunk
    except GatewayError:
        if held is not None:  # what was said stands; the error event follows it
            yield held
        raise
    if held is not None:
        yield held
