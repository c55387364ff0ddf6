"""Clients for a running gateway, with the call shapes of the in-process ``Gateway``.

``GatewayClient`` (sync, ``httpx.Client``) and ``AsyncGatewayClient`` (``httpx.AsyncClient``)
answer ``client.chat.completions.create(...)``, ``client.embeddings.create(...)``,
``client.models.list()``, ``client.spend`` and ``client.keys`` like ``Gateway`` /
``AsyncGateway`` do, so moving between the library and the proxy is a one-line change. Results
carry the gateway's facts in ``.facts``; failures raise the gateway's own exception classes.
Every operation is a request and a parser (``_Operations``, written once); the two backends
below differ only in how they send, wait and read.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from types import TracebackType
from typing import Any, Generic, Self
from urllib.parse import quote

import httpx
import orjson

from gateway.facts import GatewayFacts
from gateway.sdk.admin import (
    AsyncKeys,
    AsyncSpend,
    Keys,
    Moment,
    Spend,
    key_request,
    page_request,
    parse_created,
    parse_key,
    parse_keys,
    parse_page,
    parse_report,
    report_request,
    revoke_request,
    rotate_request,
)
from gateway.sdk.batches import (
    ROUTES,
    AsyncBatches,
    AsyncFiles,
    BatchCall,
    Batches,
    Files,
)
from gateway.sdk.protocol import (
    ApiRequest,
    ChunkDecoder,
    EventDecoder,
    GatewayConnectionError,
    GatewayTimeoutError,
    Headers,
    Item,
    RetryPolicy,
    Settings,
    StreamDecoder,
    Timeout,
    api_request,
    chat_result,
    embeddings_result,
    headers_of,
    response_result,
    responses_request,
    stored_response_request,
    stored_response_result,
    stream_broken,
    transport_error,
    unwrap,
)
from gateway.sdk.resources import (
    AsyncChat,
    AsyncEmbeddings,
    AsyncModels,
    AsyncResponses,
    Chat,
    Embeddings,
    ModelRequest,
    Models,
    Responses,
)
from gateway.types import (
    ChatCompletion,
    ChatCompletionChunk,
    CreateEmbeddingResponse,
    Model,
    ModelList,
    ResponseObject,
    ResponseStreamEvent,
)

Parser = Callable[[bytes, Headers], Any]

__all__ = [
    "AsyncGatewayClient",
    "AsyncRemoteChunkStream",
    "AsyncRemoteResponseEvents",
    "GatewayClient",
    "GatewayConnectionError",
    "GatewayFacts",
    "GatewayTimeoutError",
    "RemoteChunkIterator",
    "RemoteResponseEvents",
    "RetryPolicy",
]


def batch_request(call: BatchCall) -> tuple[ApiRequest, Parser]:
    """A Files or Batches operation as its HTTP request, and how its answer is read."""
    method, path = ROUTES[call.op]
    args = dict(call.args)
    path = path.format(**{k: quote(str(v), safe="") for k, v in args.items()})
    if call.op == "files.create":
        upload = {"file": (args["filename"], args["content"], "application/jsonl")}
        request = ApiRequest(method, path, form={"purpose": args["purpose"]}, files=upload)
    elif call.op == "batches.create":
        request = ApiRequest(method, path, args)
    elif call.op == "batches.list":
        request = ApiRequest(method, path, params={"limit": str(args["limit"])})
    else:
        request = ApiRequest(method, path)
    return request, (_raw if call.op == "files.content" else _json)


def _raw(body: bytes, headers: Headers) -> bytes:
    return body


def _json(body: bytes, headers: Headers) -> Any:
    return orjson.loads(body)


def parse_models(body: bytes, headers: Headers) -> list[Model]:
    return ModelList.model_validate_json(body).data


class _Operations:
    """What a remote backend does, as a request and a parser each; ``_run`` sends one and
    parses the answer (a sync backend returns the result, an async one an awaitable)."""

    def _run(self, request: ApiRequest, parse: Parser, timeout: Timeout | None = None) -> Any:
        raise NotImplementedError

    def complete(self, request: ModelRequest) -> Any:
        return self._run(api_request(request), chat_result, request.timeout)

    def embed(self, request: ModelRequest) -> Any:
        return self._run(api_request(request), embeddings_result, request.timeout)

    def models(self, timeout: Timeout | None) -> Any:
        return self._run(ApiRequest("GET", "/models"), parse_models, timeout)

    def respond(self, request: ModelRequest) -> Any:
        return self._run(responses_request(request), response_result, request.timeout)

    def stored_response(self, method: str, response_id: str, timeout: Timeout | None) -> Any:
        call = stored_response_request(method, response_id)
        return self._run(call, stored_response_result, timeout)

    def report(self, group_by: str, since: Moment, until: Moment, key_id: str | None) -> Any:
        return self._run(report_request(group_by, since, until, key_id), parse_report)

    def page(
        self, since: Moment, until: Moment, key_id: str | None, size: int, cursor: str | None
    ) -> Any:
        return self._run(page_request(since, until, key_id, size, cursor), parse_page)

    def create_key(self, spec: dict[str, Any]) -> Any:
        return self._run(key_request("POST", "/admin/keys", spec), parse_created)

    def list_keys(self) -> Any:
        return self._run(key_request("GET", "/admin/keys"), parse_keys)

    def revoke_key(self, key_id: str) -> Any:
        return self._run(revoke_request(key_id), parse_key)

    def rotate_key(self, key_id: str) -> Any:
        return self._run(rotate_request(key_id), parse_created)

    def batch_api(self, call: BatchCall) -> Any:
        return self._run(*batch_request(call), call.timeout)


# --- sync -----------------------------------------------------------------------------------


class RemoteStream(Generic[Item]):
    """The items of one streamed answer from a gateway (chunks, or Responses events), as its
    ``decoder`` reads them; ``facts`` is read from its headers. Iterating to the end (or
    ``close()``) releases the connection."""

    def __init__(
        self, response: httpx.Response, decoder: Callable[[Headers], StreamDecoder[Item]]
    ) -> None:
        self._response = response
        self._headers = headers_of(response)
        self._decoder = decoder(self._headers)
        self._items = self._iterate()

    @property
    def facts(self) -> GatewayFacts:
        """The call's facts; ``cost`` is filled in when the stream's usage arrives."""
        return self._decoder.facts

    def __iter__(self) -> Iterator[Item]:
        return self

    def __next__(self) -> Item:
        return next(self._items)

    def _iterate(self) -> Generator[Item, None, None]:
        decoder = self._decoder
        try:
            try:
                for data in self._response.iter_bytes():
                    yield from unwrap(decoder.feed(data))
                    if decoder.finished:
                        break
            except httpx.TransportError as exc:
                raise stream_broken(exc, self._headers) from exc
            yield from unwrap(decoder.close())
        finally:
            self._response.close()

    def close(self) -> None:
        self._items.close()
        self._response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RemoteChunkIterator(RemoteStream[ChatCompletionChunk]):
    """The chunks of one streaming chat answer from a gateway."""

    def __init__(self, response: httpx.Response, *, hide_usage: bool = False) -> None:
        super().__init__(response, lambda headers: ChunkDecoder(headers, hide_usage=hide_usage))


class RemoteResponseEvents(RemoteStream[ResponseStreamEvent]):
    """The events of one streamed response (Responses API) from a gateway."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response, EventDecoder)


class _HttpBackend(_Operations):
    """Sends over an ``httpx.Client``, retrying as the policy says."""

    def __init__(self, settings: Settings, http: httpx.Client) -> None:
        self.settings = settings
        self.http = http

    def send(self, call: ApiRequest, timeout: Timeout | None = None) -> httpx.Response:
        """Send, retrying as the policy says; an error answer raises its exception. The
        response is open (streamed): read or close it."""
        request = self.settings.request(self.http, call, timeout)
        policy, url = self.settings.retry, self.settings.base_url
        for retries in itertools.count():
            try:
                response = self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                wait = policy.wait_after_failure(exc, retries, url)
            else:
                if response.status_code < 400:
                    return response
                body = self._drain(response)
                wait = policy.wait_after_answer(
                    response.status_code, body, headers_of(response), retries
                )
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _drain(self, response: httpx.Response) -> bytes:
        try:
            return response.read()
        except httpx.TransportError as exc:
            raise transport_error(exc, self.settings.base_url) from exc
        finally:
            response.close()

    def read(self, call: ApiRequest, timeout: Timeout | None = None) -> tuple[bytes, Headers]:
        """Send a request and read its whole answer."""
        response = self.send(call, timeout)
        return self._drain(response), headers_of(response)

    def _run(self, request: ApiRequest, parse: Parser, timeout: Timeout | None = None) -> Any:
        return parse(*self.read(request, timeout))

    def stream(self, request: ModelRequest) -> RemoteChunkIterator:
        call = api_request(request)
        return RemoteChunkIterator(self.send(call, request.timeout), hide_usage=call.hide_usage)

    def respond_stream(self, request: ModelRequest) -> RemoteResponseEvents:
        return RemoteResponseEvents(self.send(responses_request(request), request.timeout))


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
        settings = Settings(
            base_url, api_key, timeout, max_retries, default_headers, http_client is None
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=settings.timeout)
        self._backend = _HttpBackend(settings, self._http)
        self.base_url = settings.base_url
        self.chat: Chat[ChatCompletion, RemoteChunkIterator, Timeout] = Chat(self._backend)
        self.responses: Responses[ResponseObject, RemoteResponseEvents, Timeout] = Responses(
            self._backend
        )
        self.embeddings: Embeddings[CreateEmbeddingResponse, Timeout] = Embeddings(self._backend)
        self.models: Models[Timeout] = Models(self._backend)
        self.spend = Spend(self._backend)
        self.keys = Keys(self._backend)
        self.files: Files[Timeout] = Files(self._backend)
        self.batches: Batches[Timeout] = Batches(self._backend)

    def send(self, call: ApiRequest, *, timeout: Timeout | None = None) -> httpx.Response:
        """Send a request, retrying as the policy says; an error answer raises its exception.
        The response is open (streamed): read or close it."""
        return self._backend.send(call, timeout)

    def read(self, call: ApiRequest, *, timeout: Timeout | None = None) -> tuple[bytes, Headers]:
        """Send a request and read its whole answer."""
        return self._backend.read(call, timeout)

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


# --- async ----------------------------------------------------------------------------------


class AsyncRemoteStream(Generic[Item]):
    """``RemoteStream`` for ``async for``: iterating to the end (or ``aclose()``) releases the
    connection."""

    def __init__(
        self, response: httpx.Response, decoder: Callable[[Headers], StreamDecoder[Item]]
    ) -> None:
        self._response = response
        self._headers = headers_of(response)
        self._decoder = decoder(self._headers)
        self._items = self._iterate()

    @property
    def facts(self) -> GatewayFacts:
        """The call's facts; ``cost`` is filled in when the stream's usage arrives."""
        return self._decoder.facts

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        return await anext(self._items)

    async def _iterate(self) -> AsyncGenerator[Item, None]:
        decoder = self._decoder
        try:
            try:
                async for data in self._response.aiter_bytes():
                    for item in unwrap(decoder.feed(data)):
                        yield item
                    if decoder.finished:
                        break
            except httpx.TransportError as exc:
                raise stream_broken(exc, self._headers) from exc
            for item in unwrap(decoder.close()):
                yield item
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._items.aclose()
        await self._response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncRemoteChunkStream(AsyncRemoteStream[ChatCompletionChunk]):
    """The chunks of one streaming chat answer from a gateway, for ``async for``."""

    def __init__(self, response: httpx.Response, *, hide_usage: bool = False) -> None:
        super().__init__(response, lambda headers: ChunkDecoder(headers, hide_usage=hide_usage))


class AsyncRemoteResponseEvents(AsyncRemoteStream[ResponseStreamEvent]):
    """The events of one streamed response from a gateway, for ``async for``."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response, EventDecoder)


class _AsyncHttpBackend(_Operations):
    """Sends over an ``httpx.AsyncClient``, retrying as the policy says."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http

    async def send(self, call: ApiRequest, timeout: Timeout | None = None) -> httpx.Response:  # noqa: ASYNC109
        """See ``_HttpBackend.send``."""
        request = self.settings.request(self.http, call, timeout)
        policy, url = self.settings.retry, self.settings.base_url
        for retries in itertools.count():
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                wait = policy.wait_after_failure(exc, retries, url)
            else:
                if response.status_code < 400:
                    return response
                body = await self._drain(response)
                wait = policy.wait_after_answer(
                    response.status_code, body, headers_of(response), retries
                )
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _drain(self, response: httpx.Response) -> bytes:
        try:
            return await response.aread()
        except httpx.TransportError as exc:
            raise transport_error(exc, self.settings.base_url) from exc
        finally:
            await response.aclose()

    async def read(self, call: ApiRequest, timeout: Timeout | None = None) -> tuple[bytes, Headers]:  # noqa: ASYNC109
        response = await self.send(call, timeout)
        return await self._drain(response), headers_of(response)

    async def _run(self, request: ApiRequest, parse: Parser, timeout: Timeout | None = None) -> Any:  # noqa: ASYNC109
        return parse(*await self.read(request, timeout))

    async def stream(self, request: ModelRequest) -> AsyncRemoteChunkStream:
        call = api_request(request)
        response = await self.send(call, request.timeout)
        return AsyncRemoteChunkStream(response, hide_usage=call.hide_usage)

    async def respond_stream(self, request: ModelRequest) -> AsyncRemoteResponseEvents:
        response = await self.send(responses_request(request), request.timeout)
        return AsyncRemoteResponseEvents(response)


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
        settings = Settings(
            base_url, api_key, timeout, max_retries, default_headers, http_client is None
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=settings.timeout)
        self._backend = _AsyncHttpBackend(settings, self._http)
        self.base_url = settings.base_url
        self.chat: AsyncChat[ChatCompletion, AsyncRemoteChunkStream, Timeout] = AsyncChat(
            self._backend
        )
        self.responses: AsyncResponses[ResponseObject, AsyncRemoteResponseEvents, Timeout] = (
            AsyncResponses(self._backend)
        )
        self.embeddings: AsyncEmbeddings[CreateEmbeddingResponse, Timeout] = AsyncEmbeddings(
            self._backend
        )
        self.models: AsyncModels[Timeout] = AsyncModels(self._backend)
        self.spend = AsyncSpend(self._backend)
        self.keys = AsyncKeys(self._backend)
        self.files: AsyncFiles[Timeout] = AsyncFiles(self._backend)
        self.batches: AsyncBatches[Timeout] = AsyncBatches(self._backend)

    async def send(self, call: ApiRequest, *, timeout: Timeout | None = None) -> httpx.Response:  # noqa: ASYNC109
        """Send a request, retrying as the policy says; an error answer raises its exception.
        The response is open (streamed): read or close it."""
        return await self._backend.send(call, timeout)

    async def read(
        self,
        call: ApiRequest,
        *,
        timeout: Timeout | None = None,  # noqa: ASYNC109 (httpx's timeout, per request)
    ) -> tuple[bytes, Headers]:
        """Send a request and read its whole answer."""
        return await self._backend.read(call, timeout)

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
