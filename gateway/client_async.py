"""``AsyncGatewayClient``: a running gateway for asyncio code (see ``gateway.client``).

The twin of ``GatewayClient`` line for line, over ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from gateway.admin_api import AsyncKeys, AsyncRemoteBackend, AsyncSpend
from gateway.errors import GatewayError
from gateway.facts import GatewayFacts
from gateway.remote import (
    Call,
    ChunkDecoder,
    Headers,
    Settings,
    Timeout,
    chat_result,
    embeddings_result,
    error_from_response,
    headers_of,
    model_call,
    stream_broken,
    transport_error,
)
from gateway.types import (
    ChatCompletion,
    ChatCompletionChunk,
    CreateEmbeddingResponse,
    Model,
    ModelList,
)

# --- async ---------------------------------------------------------------------------------


class AsyncRemoteChunkStream:
    """The chunks of one streaming answer from a gateway, for ``async for``; ``facts`` is read
    from its headers. Iterating to the end (or ``aclose()``) releases the connection."""

    def __init__(self, response: httpx.Response, *, hide_usage: bool = False) -> None:
        self._response = response
        self._headers = headers_of(response)
        self._decoder = ChunkDecoder(self._headers, hide_usage=hide_usage)
        self._chunks = self._iterate()

    @property
    def facts(self) -> GatewayFacts:
        """The call's facts; ``cost`` is filled in when the stream's usage chunk arrives."""
        return self._decoder.facts

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        return await anext(self._chunks)

    async def _iterate(self) -> AsyncGenerator[ChatCompletionChunk, None]:
        decoder = self._decoder
        try:
            try:
                async for data in self._response.aiter_bytes():
                    for item in decoder.feed(data):
                        if isinstance(item, GatewayError):
                            raise item
                        yield item
                    if decoder.finished:
                        break
            except httpx.TransportError as exc:
                raise stream_broken(exc, self._headers) from exc
            for item in decoder.close():
                if isinstance(item, GatewayError):
                    raise item
                yield item
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._chunks.aclose()
        await self._response.aclose()

    async def __aenter__(self) -> AsyncRemoteChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncGatewayClient:
    """A running gateway, for asyncio code; arguments as for ``GatewayClient`` (bring your own
    ``httpx.AsyncClient`` with ``http_client``)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: Timeout | None = None,
        max_retries: int = 2,
        default_headers: dict[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = Settings(
            base_url, api_key, timeout, max_retries, default_headers, http_client is None
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self._settings.timeout)
        self.base_url = self._settings.base_url
        self.chat = _AsyncChat(self)
        self.embeddings = _AsyncEmbeddings(self)
        self.models = _AsyncModels(self)
        self.spend = AsyncSpend(AsyncRemoteBackend(self))
        self.keys = AsyncKeys(AsyncRemoteBackend(self))

    async def send(self, call: Call, *, timeout: Timeout | None = None) -> httpx.Response:  # noqa: ASYNC109
        """Send a call, retrying as the policy says; an error answer raises its exception.
        The response is open (streamed): read or close it."""
        request = self._settings.request(self._http, call, timeout)
        policy = self._settings.retry
        retries = 0
        while True:
            try:
                response = await self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                wait = policy.after_connect_failure(retries)
                if wait is None:
                    raise transport_error(exc, self.base_url) from exc
            except httpx.TransportError as exc:  # the request may have arrived: never resent
                raise transport_error(exc, self.base_url) from exc
            else:
                if response.status_code < 400:
                    return response
                try:
                    body = await response.aread()
                except httpx.TransportError as exc:
                    raise transport_error(exc, self.base_url) from exc
                finally:
                    await response.aclose()
                error = error_from_response(response.status_code, body, headers_of(response))
                wait = policy.after_error(error, retries)
                if wait is None:
                    raise error
            await asyncio.sleep(wait)
            retries += 1

    async def read(self, call: Call, *, timeout: Timeout | None = None) -> tuple[bytes, Headers]:  # noqa: ASYNC109
        """Send a call and read its whole answer."""
        response = await self.send(call, timeout=timeout)
        try:
            return await response.aread(), headers_of(response)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.base_url) from exc
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close the connections (of a client this object made; an injected one stays open)."""
        if self._owns_http:
            await self._http.aclose()

    @property
    def is_closed(self) -> bool:
        """Whether the connections are closed (see ``aclose()``)."""
        return self._http.is_closed

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _AsyncCompletions:
    def __init__(self, client: AsyncGatewayClient) -> None:
        self._client = client

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
        timeout: Timeout | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
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
        timeout: Timeout | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> AsyncRemoteChunkStream: ...

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
        timeout: Timeout | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> ChatCompletion | AsyncRemoteChunkStream:
        """Create a chat completion (keyword arguments as in the OpenAI SDK, plus the
        gateway's ``fallbacks``, ``regions`` and ``metadata``)."""
        body: dict[str, Any] = {"model": model, "messages": messages}
        if stream:
            body["stream"] = True
        call = model_call(
            "/chat/completions",
            body,
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
        )
        if call.stream:
            return AsyncRemoteChunkStream(
                await self._client.send(call, timeout=timeout), hide_usage=call.hide_usage
            )
        return chat_result(*await self._client.read(call, timeout=timeout))


class _AsyncChat:
    def __init__(self, client: AsyncGatewayClient) -> None:
        self.completions = _AsyncCompletions(client)


class _AsyncEmbeddings:
    def __init__(self, client: AsyncGatewayClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        model: str,
        input: str | list[str],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: Timeout | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> CreateEmbeddingResponse:
        """Create embeddings for one or more inputs."""
        call = model_call(
            "/embeddings",
            {"model": model, "input": input},
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
        )
        return embeddings_result(*await self._client.read(call, timeout=timeout))


class _AsyncModels:
    def __init__(self, client: AsyncGatewayClient) -> None:
        self._client = client

    async def list(self, *, timeout: Timeout | None = None) -> list[Model]:  # noqa: ASYNC109
        """The models the gateway serves."""
        body, _ = await self._client.read(Call("GET", "/models"), timeout=timeout)
        return ModelList.model_validate_json(body).data
