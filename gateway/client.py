"""Clients for a running gateway, with the call shapes of the in-process ``Gateway``.

``GatewayClient`` (sync, ``httpx.Client``) and ``AsyncGatewayClient`` (``httpx.AsyncClient``,
in ``gateway.client_async``) answer ``client.chat.completions.create(...)``,
``client.embeddings.create(...)`` and ``client.models.list()`` like ``Gateway`` /
``AsyncGateway`` do, so moving between the library and the proxy is a one-line change. Results
carry the gateway's facts in ``.facts``; failures raise the gateway's own exception classes.
These modules only move bytes: what is sent and how answers are read lives in ``gateway.remote``.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import Any, Literal, overload

import httpx

from gateway.admin_api import Keys, RemoteBackend, Spend
from gateway.client_async import AsyncGatewayClient, AsyncRemoteChunkStream
from gateway.errors import GatewayError
from gateway.facts import GatewayFacts
from gateway.remote import (
    Call,
    ChunkDecoder,
    GatewayConnectionError,
    GatewayTimeoutError,
    Headers,
    RetryPolicy,
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

__all__ = [
    "AsyncGatewayClient",
    "AsyncRemoteChunkStream",
    "GatewayClient",
    "GatewayConnectionError",
    "GatewayFacts",
    "GatewayTimeoutError",
    "RemoteChunkIterator",
    "RetryPolicy",
]


# --- sync ----------------------------------------------------------------------------------


class RemoteChunkIterator:
    """The chunks of one streaming answer from a gateway; ``facts`` is read from its headers.
    Iterating to the end (or ``close()``) releases the connection."""

    def __init__(self, response: httpx.Response, *, hide_usage: bool = False) -> None:
        self._response = response
        self._headers = headers_of(response)
        self._decoder = ChunkDecoder(self._headers, hide_usage=hide_usage)
        self._chunks = self._iterate()

    @property
    def facts(self) -> GatewayFacts:
        """The call's facts; ``cost`` is filled in when the stream's usage chunk arrives."""
        return self._decoder.facts

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        return next(self._chunks)

    def _iterate(self) -> Generator[ChatCompletionChunk, None, None]:
        decoder = self._decoder
        try:
            try:
                for data in self._response.iter_bytes():
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
            self._response.close()

    def close(self) -> None:
        self._chunks.close()
        self._response.close()

    def __enter__(self) -> RemoteChunkIterator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class GatewayClient:
    """A running gateway, for synchronous code: ``GatewayClient("http://host:4000")``.

    ``base_url`` and ``api_key`` default to ``GATEWAY_BASE_URL`` / ``GATEWAY_API_KEY``;
    ``timeout`` (seconds, or an ``httpx.Timeout``) bounds each read, connecting takes at most
    5 s; the gateway's 429s and failed connections are retried ``max_retries`` times. Pass
    ``http_client`` to bring your own ``httpx.Client`` (it is then yours to close).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: Timeout | None = None,
        max_retries: int = 2,
        default_headers: dict[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._settings = Settings(
            base_url, api_key, timeout, max_retries, default_headers, http_client is None
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self._settings.timeout)
        self.base_url = self._settings.base_url
        self.chat = _Chat(self)
        self.embeddings = _Embeddings(self)
        self.models = _Models(self)
        self.spend = Spend(RemoteBackend(self))
        self.keys = Keys(RemoteBackend(self))

    def send(self, call: Call, *, timeout: Timeout | None = None) -> httpx.Response:
        """Send a call, retrying as the policy says; an error answer raises its exception.
        The response is open (streamed): read or close it."""
        request = self._settings.request(self._http, call, timeout)
        policy = self._settings.retry
        retries = 0
        while True:
            try:
                response = self._http.send(request, stream=True)
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
                    body = response.read()
                except httpx.TransportError as exc:
                    raise transport_error(exc, self.base_url) from exc
                finally:
                    response.close()
                error = error_from_response(response.status_code, body, headers_of(response))
                wait = policy.after_error(error, retries)
                if wait is None:
                    raise error
            time.sleep(wait)
            retries += 1

    def read(self, call: Call, *, timeout: Timeout | None = None) -> tuple[bytes, Headers]:
        """Send a call and read its whole answer."""
        response = self.send(call, timeout=timeout)
        try:
            return response.read(), headers_of(response)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.base_url) from exc
        finally:
            response.close()

    def close(self) -> None:
        """Close the connections (of a client this object made; an injected one stays open)."""
        if self._owns_http:
            self._http.close()

    @property
    def is_closed(self) -> bool:
        """Whether the connections are closed (see ``close()``)."""
        return self._http.is_closed

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Completions:
    def __init__(self, client: GatewayClient) -> None:
        self._client = client

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
        timeout: Timeout | None = None,
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
        timeout: Timeout | None = None,
        **params: Any,
    ) -> RemoteChunkIterator: ...

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
        timeout: Timeout | None = None,
        **params: Any,
    ) -> ChatCompletion | RemoteChunkIterator:
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
            return RemoteChunkIterator(
                self._client.send(call, timeout=timeout), hide_usage=call.hide_usage
            )
        return chat_result(*self._client.read(call, timeout=timeout))


class _Chat:
    def __init__(self, client: GatewayClient) -> None:
        self.completions = _Completions(client)


class _Embeddings:
    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def create(
        self,
        *,
        model: str,
        input: str | list[str],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: Timeout | None = None,
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
        return embeddings_result(*self._client.read(call, timeout=timeout))


class _Models:
    def __init__(self, client: GatewayClient) -> None:
        self._client = client

    def list(self, *, timeout: Timeout | None = None) -> list[Model]:
        """The models the gateway serves."""
        body, _ = self._client.read(Call("GET", "/models"), timeout=timeout)
        return ModelList.model_validate_json(body).data
