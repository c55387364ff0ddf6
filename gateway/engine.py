"""The pipeline: validated request → Plan → attempts through adapters and transport → answer.

``Engine`` is what the HTTP server and the in-process library both call; neither re-implements
any step. Upstream responses stay plain dicts in the OpenAI shape on this path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, StreamInterruptedError
from gateway.resilience import run_plan
from gateway.routing import Router
from gateway.streaming import SSEDecoder, SSEEvent
from gateway.transport import AiohttpTransport, Transport, UpstreamRequest, UpstreamResponse
from gateway.types import ChatCompletionRequest, EmbeddingRequest
from providers.base import Deployment, Provider, StreamTranslator

JSON = dict[str, Any]
T = TypeVar("T")


@dataclass(slots=True)
class CallInfo:
    """Gateway facts about one call, filled in as it runs (they become x-gateway-* headers)."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    provider: str | None = None
    deployment: str | None = None
    attempts: int = 0
    upstream_seconds: float = 0.0
    usage: JSON | None = None
    dropped_params: tuple[str, ...] = ()

    def overhead_ms(self) -> float:
        """Time spent in the gateway so far, excluding time waiting on upstream."""
        elapsed = time.perf_counter() - self.started
        return max(0.0, (elapsed - self.upstream_seconds) * 1000.0)

    def headers(self) -> dict[str, str]:
        headers = {
            "x-request-id": self.request_id,
            "x-gateway-provider": self.provider or "",
            "x-gateway-deployment": self.deployment or "",
            "x-gateway-attempts": str(self.attempts),
            "x-gateway-overhead-ms": f"{self.overhead_ms():.2f}",
        }
        if self.dropped_params:
            headers["x-gateway-dropped-params"] = ",".join(self.dropped_params)
        return headers


class ChunkStream:
    """The canonical chunks of one streaming answer, from an upstream that already said 200.

    Usage is always recorded in ``info.usage``; the usage chunk reaches the caller only if
    they asked for it (``stream_options.include_usage``), as OpenAI does. A stream that ends
    without the provider's end marker raises StreamInterruptedError: a cut answer is never
    presented as complete.
    """

    def __init__(
        self,
        response: UpstreamResponse,
        translator: StreamTranslator,
        deployment: Deployment,
        info: CallInfo,
        *,
        include_usage: bool,
    ) -> None:
        self._response = response
        self._translator = translator
        self._deployment = deployment
        self._info = info
        self._include_usage = include_usage

    def __aiter__(self) -> AsyncIterator[JSON]:
        return self._chunks()

    async def _events(self) -> AsyncIterator[SSEEvent]:
        decoder = SSEDecoder()
        async for raw in self._response.iter_bytes():
            for event in decoder.feed(raw):
                yield event
        for event in decoder.close():
            yield event

    async def _chunks(self) -> AsyncIterator[JSON]:
        dep = self._deployment
        try:
            async for event in self._events():
                for chunk in self._translator.feed(event):
                    usage = chunk.get("usage")
                    if usage:
                        self._info.usage = usage
                    if not self._include_usage and "usage" in chunk:
                        if not chunk.get("choices"):
                            continue
                        del chunk["usage"]
                    yield chunk
                if self._translator.finished:
                    break
            if not self._translator.finished:
                raise StreamInterruptedError(
                    f"provider '{dep.provider_name}' (deployment '{dep.id}') closed the stream "
                    "before it was complete; the answer above is partial",
                )
        except GatewayError as exc:
            exc.attribute(dep.provider_name, dep.id)
            raise
        finally:
            await self._response.close()

    async def aclose(self) -> None:
        await self._response.close()


class Engine:
    """One gateway: routing, attempts, adapters and transport, built from a GatewayConfig."""

    def __init__(self, config: GatewayConfig, *, transport: Transport | None = None) -> None:
        self.config = config
        self.router = Router(config)
        self.transport: Transport = transport or AiohttpTransport()

    # -- public operations -------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest, info: CallInfo) -> JSON:
        """A complete (non-streaming) chat completion."""
        plan = self.router.plan(request.model, request.fallbacks, request.needs())
        info.model = request.model

        async def attempt(dep: Deployment) -> JSON:
            provider = dep.provider
            upstream = provider.chat_request(request.upstream_body(), dep, stream=False)
            info.dropped_params = upstream.dropped_params
            raw = await self._exchange(provider, dep, upstream, info)
            return provider.chat_response(raw, dep)

        result = await self._bounded(run_plan(plan, attempt, info))
        info.usage = result.get("usage")
        return result

    async def chat_stream(self, request: ChatCompletionRequest, info: CallInfo) -> ChunkStream:
        """Open a streaming chat completion; returns once an upstream has accepted it."""
        plan = self.router.plan(request.model, request.fallbacks, request.needs())
        info.model = request.model

        async def attempt(dep: Deployment) -> ChunkStream:
            provider = dep.provider
            upstream = provider.chat_request(request.upstream_body(), dep, stream=True)
            info.dropped_params = upstream.dropped_params
            response = await self._open(provider, dep, upstream, info)
            return ChunkStream(
                response,
                provider.chat_stream(dep),
                dep,
                info,
                include_usage=request.wants_stream_usage,
            )

        return await self._bounded(run_plan(plan, attempt, info))

    async def embeddings(self, request: EmbeddingRequest, info: CallInfo) -> JSON:
        """Embeddings for one or more inputs."""
        plan = self.router.plan(request.model, request.fallbacks, request.needs())
        info.model = request.model

        async def attempt(dep: Deployment) -> JSON:
            provider = dep.provider
            upstream = provider.embeddings_request(request.upstream_body(), dep)
            info.dropped_params = upstream.dropped_params
            raw = await self._exchange(provider, dep, upstream, info)
            return provider.embeddings_response(raw, dep)

        result = await self._bounded(run_plan(plan, attempt, info))
        info.usage = result.get("usage")
        return result

    def models(self) -> list[JSON]:
        """The public models, in the OpenAI ``/v1/models`` shape."""
        return [
            {"id": name, "object": "model", "created": 0, "owned_by": "llm-gateway"}
            for name in self.router.models()
        ]

    async def aclose(self) -> None:
        """Close pooled upstream connections."""
        await self.transport.close()
        for provider in self.router.providers.values():
            if provider.transport is not None:
                await provider.transport.close()

    # -- I/O steps ---------------------------------------------------------------------
    async def _bounded(self, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.config.server.request_timeout):
                return await work
        except TimeoutError as exc:
            raise GatewayError(
                f"request did not complete within {self.config.server.request_timeout:g}s "
                "(server.request_timeout)",
                status=504,
                type="timeout_error",
                code="request_timeout",
            ) from exc

    async def _open(
        self, provider: Provider, dep: Deployment, upstream: UpstreamRequest, info: CallInfo
    ) -> UpstreamResponse:
        """Send; return the response if its status is a success, else raise its error."""
        transport = provider.transport or self.transport
        start = time.perf_counter()
        try:
            response = await transport.send(upstream, provider.timeouts)
            if response.status >= 400:
                raw = await response.read()
                raise provider.error(response.status, response.headers, raw, dep)
            return response
        except GatewayError as exc:
            exc.attribute(provider.name, dep.id)
            raise
        finally:
            info.upstream_seconds += time.perf_counter() - start

    async def _exchange(
        self, provider: Provider, dep: Deployment, upstream: UpstreamRequest, info: CallInfo
    ) -> bytes:
        """Send and read the whole successful body."""
        response = await self._open(provider, dep, upstream, info)
        start = time.perf_counter()
        try:
            return await response.read()
        finally:
            info.upstream_seconds += time.perf_counter() - start
