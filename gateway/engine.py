"""The pipeline: validated request → Plan → attempts through adapters and transport → answer.

``Engine`` is what the HTTP server and the in-process library both call; neither re-implements
any step. Upstream responses stay plain dicts in the OpenAI shape on this path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, UpstreamTimeoutError
from gateway.health import HealthBoard, Ticket
from gateway.resilience import AttemptRecord, run_plan
from gateway.routing import Plan, Router
from gateway.shared_circuits import RedisCircuits
from gateway.stream_guard import UpstreamStream, has_output
from gateway.transport import (
    AiohttpTransport,
    Timeouts,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
)
from gateway.types import ChatCompletionRequest, EmbeddingRequest
from providers.base import Deployment, Provider

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
    fallback_used: bool = False
    continued: bool = False  # a cut stream was finished by another deployment
    upstream_seconds: float = 0.0
    usage: JSON | None = None
    dropped_params: tuple[str, ...] = ()
    malformed_events: int = 0
    attempt_log: list[AttemptRecord] = field(default_factory=list)

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
            "x-gateway-fallback-used": "true" if self.fallback_used else "false",
            "x-gateway-overhead-ms": f"{self.overhead_ms():.2f}",
        }
        if self.dropped_params:
            headers["x-gateway-dropped-params"] = ",".join(self.dropped_params)
        return headers


class Engine:
    """One gateway: routing, attempts, adapters and transport, built from a GatewayConfig."""

    def __init__(self, config: GatewayConfig, *, transport: Transport | None = None) -> None:
        self.config = config
        self.shared_circuits = (
            RedisCircuits.from_url(config.redis.url, prefix=config.redis.key_prefix)
            if config.redis is not None
            else None
        )
        self.health = HealthBoard(config.routing.circuit, shared=self.shared_circuits)
        self.router = Router(config, health=self.health)
        if self.shared_circuits is not None:
            self.shared_circuits.track(
                d.id for deps in self.router.deployments.values() for d in deps
            )
        self.transport: Transport = transport or AiohttpTransport()

    # -- public operations -------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest, info: CallInfo) -> JSON:
        """A complete (non-streaming) chat completion."""
        plan = self.router.plan(request.model, request.fallbacks, request.needs())
        info.model = request.model
        deadline = self._deadline(plan, request.gateway_timeout)

        async def attempt(dep: Deployment, ticket: Ticket) -> JSON:
            provider = dep.provider
            upstream = provider.chat_request(request.upstream_body(), dep, stream=False)
            info.dropped_params = upstream.dropped_params
            timeouts = self._timeouts(plan, dep, stream=False)
            raw = await self._exchange(provider, dep, upstream, info, timeouts)
            return provider.chat_response(raw, dep)

        estimate = request.estimated_tokens()
        result = await self._within(
            deadline,
            run_plan(
                plan,
                attempt,
                info,
                self.health,
                deadline=deadline,
                tokens=estimate,
                fallback_on_content_filter=self.config.routing.fallback_on_content_filter,
            ),
        )
        info.usage = result.get("usage")
        self._settle_tokens(info, estimate)
        return result

    async def chat_stream(self, request: ChatCompletionRequest, info: CallInfo) -> ChunkStream:
        """Open a streaming chat completion. Returns once an upstream has produced its first
        output, so a failure before anything reached the caller is retried or failed over."""
        plan = self.router.plan(request.model, request.fallbacks, request.needs())
        info.model = request.model
        deadline = self._deadline(plan, request.gateway_timeout)
        opened = await self._open_stream(
            plan, plan.attempts, request.upstream_body, info, deadline, request.estimated_tokens()
        )
        return ChunkStream(self, plan, request, info, deadline, opened)

    async def embeddings(self, request: EmbeddingRequest, info: CallInfo) -> JSON:
        """Embeddings for one or more inputs."""
        plan = self.router.plan(request.model, request.fallbacks, request.needs())
        info.model = request.model
        deadline = self._deadline(plan, request.gateway_timeout)

        async def attempt(dep: Deployment, ticket: Ticket) -> JSON:
            provider = dep.provider
            upstream = provider.embeddings_request(request.upstream_body(), dep)
            info.dropped_params = upstream.dropped_params
            timeouts = self._timeouts(plan, dep, stream=False)
            raw = await self._exchange(provider, dep, upstream, info, timeouts)
            return provider.embeddings_response(raw, dep)

        result = await self._within(
            deadline, run_plan(plan, attempt, info, self.health, deadline=deadline)
        )
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
        if self.shared_circuits is not None:
            await self.shared_circuits.aclose()
        for provider in self.router.providers.values():
            if provider.transport is not None:
                await provider.transport.close()

    # -- steps -------------------------------------------------------------------------
    def _deadline(self, plan: Plan, override: float | None) -> float:
        return time.monotonic() + (override or plan.policy.timeouts.total)

    def _timeouts(self, plan: Plan, dep: Deployment, *, stream: bool) -> Timeouts:
        """Connect, and the longest silence allowed: between chunks for a stream, before the
        (whole) answer otherwise."""
        t = plan.policy.timeouts
        own = dep.provider.timeouts
        silence = (t.idle if stream else t.first_token) or own.read
        return Timeouts(connect=t.connect or own.connect, read=silence)

    async def _within(self, deadline: float, work: Awaitable[T]) -> T:
        seconds = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                return await work
        except TimeoutError as exc:
            raise GatewayError(
                "the request did not complete within its total time "
                "(routing.timeouts.total, or the request's gateway_timeout)",
                status=504,
                type="timeout_error",
                code="request_timeout",
                retryable=False,
            ) from exc

    def _settle_tokens(self, info: CallInfo, estimate: int) -> None:
        usage = info.usage or {}
        total = usage.get("total_tokens")
        if info.deployment and isinstance(total, int):
            self.health.add_tokens(info.deployment, total - estimate)

    async def _open_stream(
        self,
        plan: Plan,
        deployments: list[Deployment],
        body: Any,
        info: CallInfo,
        deadline: float,
        estimate: int,
    ) -> OpenedStream:
        """Run ``deployments`` until one stream produces output; ``body()`` builds the body."""

        async def attempt(dep: Deployment, ticket: Ticket) -> OpenedStream:
            provider = dep.provider
            upstream = provider.chat_request(body(), dep, stream=True)
            info.dropped_params = upstream.dropped_params
            response = await self._open(
                provider, dep, upstream, info, self._timeouts(plan, dep, stream=True)
            )
            stream = UpstreamStream(response, provider.chat_stream(dep), dep, deadline)
            first_token = plan.policy.timeouts.first_token or provider.timeouts.read
            started = time.perf_counter()
            try:
                async with asyncio.timeout(min(first_token, max(0.0, deadline - time.monotonic()))):
                    prelude = await stream.until_output()
            except TimeoutError:
                await stream.aclose()
                raise UpstreamTimeoutError(
                    f"no first token within {first_token:g}s (routing.timeouts.first_token)"
                ) from None
            except BaseException:
                await stream.aclose()
                raise
            finally:
                info.upstream_seconds += time.perf_counter() - started
            return OpenedStream(stream, prelude, ticket, time.perf_counter() - started)

        sub = Plan(plan.model, plan.policy, deployments, plan.context_attempts)
        return await self._within(
            deadline,
            run_plan(
                sub,
                attempt,
                info,
                self.health,
                deadline=deadline,
                tokens=estimate,
                fallback_on_content_filter=self.config.routing.fallback_on_content_filter,
                settle_on_success=False,
            ),
        )

    async def _open(
        self,
        provider: Provider,
        dep: Deployment,
        upstream: UpstreamRequest,
        info: CallInfo,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        """Send; return the response if its status is a success, else raise its error."""
        transport = provider.transport or self.transport
        start = time.perf_counter()
        try:
            response = await transport.send(upstream, timeouts)
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
        self,
        provider: Provider,
        dep: Deployment,
        upstream: UpstreamRequest,
        info: CallInfo,
        timeouts: Timeouts,
    ) -> bytes:
        """Send and read the whole successful body."""
        response = await self._open(provider, dep, upstream, info, timeouts)
        start = time.perf_counter()
        try:
            return await response.read()
        finally:
            info.upstream_seconds += time.perf_counter() - start


@dataclass(slots=True)
class OpenedStream:
    """An upstream stream that has produced output, the chunks read so far, and its ticket."""

    stream: UpstreamStream
    prelude: list[JSON]
    ticket: Ticket
    first_output_seconds: float


class ChunkStream:
    """The canonical chunks of one streaming answer, as the caller receives them.

    Usage is always recorded in ``info.usage``; the usage chunk reaches the caller only if
    they asked for it (``stream_options.include_usage``), as OpenAI does. When the upstream
    breaks after output has reached the caller, the answer is continued on a later deployment
    of the Plan that supports assistant prefill, if any; otherwise the original error is
    raised, so a cut answer is never presented as complete.
    """

    def __init__(
        self,
        engine: Engine,
        plan: Plan,
        request: ChatCompletionRequest,
        info: CallInfo,
        deadline: float,
        opened: OpenedStream,
    ) -> None:
        self._engine = engine
        self._plan = plan
        self._request = request
        self._info = info
        self._deadline = deadline
        self._current: OpenedStream | None = opened

    def __aiter__(self) -> AsyncIterator[JSON]:
        return self._chunks()

    async def _chunks(self) -> AsyncGenerator[JSON, None]:
        include_usage = self._request.wants_stream_usage
        health = self._engine.health
        text = ""  # what choice 0 has said so far, for a continuation
        other_output = False  # tool calls or other choices: cannot be continued
        stream_id: str | None = None
        echo: EchoedPrefix | None = None
        while self._current is not None:
            opened = self._current
            try:
                async for chunk in _prelude_then_rest(opened):
                    if echo is not None:
                        if not chunk.get("usage") and not has_output(chunk):
                            continue
                        echo.strip(chunk)
                        chunk["id"] = stream_id or chunk.get("id")
                    stream_id = stream_id or chunk.get("id")
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if choice.get("index", 0) != 0 or delta.get("tool_calls"):
                            other_output = True
                        text += delta.get("content") or ""
                    if "usage" in chunk and not include_usage:
                        if not chunk.get("choices"):
                            continue
                        del chunk["usage"]
                    yield chunk
            except GatewayError as exc:
                health.finish(opened.ticket, exc)
                self._current = None
                if other_output or not text:
                    raise
                self._current = await self._continuation(opened, text, exc)
                echo = EchoedPrefix(text)
                continue
            finally:
                self._info.malformed_events += opened.stream.malformed_events
            self._info.usage = opened.stream.usage or self._info.usage
            health.finish(opened.ticket, latency=opened.first_output_seconds)
            self._current = None
            usage = self._info.usage or {}
            if isinstance(usage.get("total_tokens"), int):
                health.add_tokens(
                    opened.ticket.deployment.id, usage["total_tokens"] - opened.ticket.tokens
                )

    async def _continuation(
        self, broken: OpenedStream, text: str, error: GatewayError
    ) -> OpenedStream:
        """Open a stream that continues ``text`` on a later, prefill-capable deployment;
        if there is none, or it fails too, the original error stands."""
        if not self._engine.config.routing.continue_streams:
            raise error
        attempts = self._plan.attempts
        later = (
            attempts[attempts.index(broken.ticket.deployment) + 1 :]
            if broken.ticket.deployment in attempts
            else []
        )
        able = [d for d in later if d.provider.capabilities.assistant_prefill]
        if not able:
            raise error

        def body() -> JSON:
            b = self._request.upstream_body()
            b["messages"] = [*b["messages"], {"role": "assistant", "content": text, "prefix": True}]
            return b

        try:
            opened = await self._engine._open_stream(
                self._plan, able, body, self._info, self._deadline, broken.ticket.tokens
            )
        except GatewayError:
            raise error from None
        self._info.continued = True
        return opened

    async def aclose(self) -> None:
        if self._current is not None:
            self._engine.health.finish(self._current.ticket)
            await self._current.stream.aclose()
            self._current = None


async def _prelude_then_rest(opened: OpenedStream) -> AsyncGenerator[JSON, None]:
    for chunk in opened.prelude:
        yield chunk
    opened.prelude = []
    async for chunk in opened.stream:
        yield chunk


class EchoedPrefix:
    """Removes the already-sent text when a continuing provider repeats it (Mistral's
    ``prefix: true`` answers start with the prefix); passes other answers unchanged."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen = ""
        self.done = False

    def strip(self, chunk: JSON) -> None:
        if self.done:
            return
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            delta.pop("role", None)
            content = delta.get("content")
            if not content and not choice.get("finish_reason"):
                continue
            self.seen += content or ""
            still_echoing = self.prefix.startswith(self.seen) and len(self.seen) < len(self.prefix)
            if still_echoing and not choice.get("finish_reason"):
                delta["content"] = ""
                continue
            self.done = True
            rest = (
                self.seen[len(self.prefix) :]
                if self.seen.startswith(self.prefix)
                else ("" if self.prefix.startswith(self.seen) else self.seen)
            )
            delta["content"] = rest
