"""The engine in-process: ``AsyncGateway`` and ``Gateway`` with the OpenAI SDK's call shapes.

``gw.chat.completions.create(...)`` returns typed ``ChatCompletion`` objects, or an iterator of
``ChatCompletionChunk`` when ``stream=True``; errors are the gateway's own exception types.
``Gateway`` (sync) drives an ``AsyncGateway`` on a private event-loop thread, so it also works
where a loop is already running (notebooks).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from gateway.admin_api import in_process, in_process_blocking
from gateway.config import GatewayConfig, resolve_config
from gateway.engine import CallInfo, ChunkStream, Engine
from gateway.facts import GatewayFacts, facts_from_info
from gateway.remote import request_body
from gateway.transport import Transport
from gateway.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CreateEmbeddingResponse,
    EmbeddingRequest,
    Model,
)

ConfigSource = str | Path | dict[str, Any] | GatewayConfig | None
T = TypeVar("T")


class AsyncChunkStream:
    """Chunks of one streaming answer; ``facts`` says who answers it and, once it has ended,
    what it cost (``info`` is the engine's full record of the call)."""

    def __init__(self, stream: ChunkStream, info: CallInfo) -> None:
        self._stream = stream
        self.info = info

    @property
    def facts(self) -> GatewayFacts:
        return facts_from_info(self.info)

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ChatCompletionChunk]:
        async for chunk in self._stream:
            yield ChatCompletionChunk.model_validate(chunk)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _call(
    body: dict[str, Any],
    params: dict[str, Any],
    *,
    fallbacks: list[str] | None,
    regions: list[str] | None,
    metadata: dict[str, Any] | None,
    user: str | None,
    timeout: float | None,
) -> tuple[dict[str, Any], CallInfo]:
    """The request body and a new call's facts, with the gateway's per-request options placed
    where the HTTP proxy puts them: ``regions`` narrows routing, ``metadata`` tags the ledger
    record, ``timeout`` is the whole call's deadline in seconds."""
    body = request_body(
        body, params, fallbacks=fallbacks, metadata=metadata, user=user, gateway_timeout=timeout
    )
    info = CallInfo(request_id=uuid.uuid4().hex, surface="library")
    if regions is not None:
        info.regions = frozenset(regions)
    info.tag_with(body.get("metadata"))
    return body, info


class _AsyncCompletions:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        stream: Literal[False] = False,
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        stream: Literal[True],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> AsyncChunkStream: ...

    async def create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        stream: bool = False,
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> ChatCompletion | AsyncChunkStream:
        """Create a chat completion (keyword arguments as in the OpenAI SDK, plus the
        gateway's ``fallbacks``, ``regions`` and ``metadata``)."""
        body, info = _call(
            {"model": model, "messages": messages, **({"stream": True} if stream else {})},
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
            timeout=timeout,
        )
        request = ChatCompletionRequest.model_validate(body)
        await self._engine.start()
        if stream:
            return AsyncChunkStream(await self._engine.chat_stream(request, info), info)
        completion = ChatCompletion.model_validate(await self._engine.chat(request, info))
        completion._gateway = info
        completion._facts = facts_from_info(info)
        return completion


class _AsyncChat:
    def __init__(self, engine: Engine) -> None:
        self.completions = _AsyncCompletions(engine)


class _AsyncEmbeddings:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def create(
        self,
        *,
        model: str,
        input: str | list[str],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> CreateEmbeddingResponse:
        """Create embeddings for one or more inputs."""
        body, info = _call(
            {"model": model, "input": input},
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
            timeout=timeout,
        )
        request = EmbeddingRequest.model_validate(body)
        await self._engine.start()
        result = CreateEmbeddingResponse.model_validate(
            await self._engine.embeddings(request, info)
        )
        result._gateway = info
        result._facts = facts_from_info(info)
        return result


class _AsyncModels:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def list(self) -> list[Model]:
        return [Model.model_validate(m) for m in self._engine.models()]


class AsyncGateway:
    """The gateway engine in-process, for asyncio code."""

    def __init__(self, config: ConfigSource = None, *, transport: Transport | None = None) -> None:
        self.engine = Engine(resolve_config(config), transport=transport)
        self.chat = _AsyncChat(self.engine)
        self.embeddings = _AsyncEmbeddings(self.engine)
        self.models = _AsyncModels(self.engine)
        self.spend, self.keys = in_process(self.engine)  # gateway.admin_api

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# --- sync facade ----------------------------------------------------------------------------


class _LoopThread:
    """An event loop on a daemon thread; coroutines are run there and awaited from here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="llm-gateway", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class ChunkIterator:
    """Synchronous iterator over a streaming answer's chunks."""

    def __init__(self, stream: AsyncChunkStream, runner: _LoopThread) -> None:
        self._aiter = aiter(stream)
        self._stream = stream
        self._runner = runner
        self.info = stream.info

    @property
    def facts(self) -> GatewayFacts:
        """Who answers the stream and, once it has ended, what it cost."""
        return self._stream.facts

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        try:
            return self._runner.run(anext(self._aiter))  # type: ignore[arg-type]
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._runner.run(self._stream.aclose())

    def __enter__(self) -> ChunkIterator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Completions:
    def __init__(self, inner: _AsyncCompletions, runner: _LoopThread) -> None:
        self._inner = inner
        self._runner = runner

    @overload
    def create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        stream: Literal[False] = False,
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        stream: Literal[True],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> ChunkIterator: ...

    def create(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        stream: bool = False,
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> ChatCompletion | ChunkIterator:
        """Create a chat completion (keyword arguments as in the OpenAI SDK, plus the
        gateway's ``fallbacks``, ``regions`` and ``metadata``)."""
        options: dict[str, Any] = {
            "fallbacks": fallbacks,
            "regions": regions,
            "metadata": metadata,
            "user": user,
            "timeout": timeout,
        }
        if stream:
            s = self._runner.run(
                self._inner.create(model=model, messages=messages, stream=True, **options, **params)
            )
            return ChunkIterator(s, self._runner)
        result = self._runner.run(
            self._inner.create(model=model, messages=messages, **options, **params)
        )
        assert isinstance(result, ChatCompletion)
        return result


class _Chat:
    def __init__(self, inner: _AsyncChat, runner: _LoopThread) -> None:
        self.completions = _Completions(inner.completions, runner)


class _Embeddings:
    def __init__(self, inner: _AsyncEmbeddings, runner: _LoopThread) -> None:
        self._inner = inner
        self._runner = runner

    def create(
        self,
        *,
        model: str,
        input: str | list[str],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> CreateEmbeddingResponse:
        """Create embeddings for one or more inputs."""
        return self._runner.run(
            self._inner.create(
                model=model,
                input=input,
                fallbacks=fallbacks,
                regions=regions,
                metadata=metadata,
                user=user,
                timeout=timeout,
                **params,
            )
        )


class _Models:
    def __init__(self, inner: _AsyncModels, runner: _LoopThread) -> None:
        self._inner = inner
        self._runner = runner

    def list(self) -> list[Model]:
        return self._runner.run(self._inner.list())


class Gateway:
    """The gateway engine in-process, for synchronous code."""

    def __init__(self, config: ConfigSource = None, *, transport: Transport | None = None) -> None:
        self._runner = _LoopThread()
        self._async = AsyncGateway(config, transport=transport)
        self.engine = self._async.engine
        self.chat = _Chat(self._async.chat, self._runner)
        self.embeddings = _Embeddings(self._async.embeddings, self._runner)
        self.models = _Models(self._async.models, self._runner)
        self.spend, self.keys = in_process_blocking(self.engine, self._runner.run)

    def close(self) -> None:
        """Close upstream connections and stop the loop thread; safe to call twice."""
        if self._runner.loop.is_closed():
            return
        self._runner.run(self._async.aclose())
        self._runner.stop()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
