"""``client.chat.completions``, ``client.responses``, ``client.embeddings`` and
``client.models``, written once.

The four clients — ``Gateway`` and ``AsyncGateway`` (the engine in-process), ``GatewayClient``
and ``AsyncGatewayClient`` (a running gateway over HTTP) — expose the same resources. A
resource turns the OpenAI SDK's keyword arguments, plus the gateway's own options, into one
``ModelRequest`` and hands it to its client's backend, which runs it in-process or sends it.
The sync and async shells differ only in ``await``; what each client returns (its completion
and stream types, what its ``timeout`` means) is a type parameter, so every signature stays
exact for a type checker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, overload

from gateway.types import Model, ResponseDeleted
from gateway.wire import JSON

C = TypeVar("C")  # a chat completion
S = TypeVar("S")  # a stream of chunks
E = TypeVar("E")  # an embeddings answer
R = TypeVar("R")  # a Responses API response
RS = TypeVar("RS")  # a stream of Responses API events
T = TypeVar("T")  # what ``timeout`` may be


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One chat or embeddings call as a resource hands it to a backend."""

    path: str  # the OpenAI route under /v1: "/chat/completions" or "/embeddings"
    body: JSON  # OpenAI parameters and the gateway's body options, ``extra_body`` merged
    regions: list[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)  # the caller's ``extra_headers``
    timeout: Any = None  # as the client's ``timeout`` argument means it


class Backend(Protocol):
    """What the resources ask of a gateway. A sync backend returns the results, an async one
    awaitables of them; ``gateway.sdk.local`` and ``gateway.sdk.remote`` have one of each."""

    def complete(self, request: ModelRequest) -> Any: ...
    def stream(self, request: ModelRequest) -> Any: ...
    def embed(self, request: ModelRequest) -> Any: ...
    def models(self, timeout: Any) -> Any: ...
    def respond(self, request: ModelRequest) -> Any: ...
    def respond_stream(self, request: ModelRequest) -> Any: ...
    def stored_response(self, method: str, response_id: str, timeout: Any) -> Any: ...


def model_request(
    path: str,
    body: JSON,
    params: dict[str, Any],
    *,
    fallbacks: list[str] | None,
    regions: list[str] | None,
    metadata: dict[str, Any] | None,
    user: str | None,
    timeout: Any,
) -> ModelRequest:
    """``body`` with the caller's OpenAI parameters and the gateway's options that travel in
    the body (``fallbacks``, ``metadata``, ``user``); ``extra_body`` is merged last and
    ``extra_headers`` set aside, as the OpenAI SDK does."""
    params = dict(params)
    extra_body = params.pop("extra_body", None) or {}
    extra_headers = params.pop("extra_headers", None) or {}
    body = {**body, **params}
    if fallbacks is not None:
        body["fallbacks"] = list(fallbacks)
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if user is not None:
        body["user"] = user
    body.update(extra_body)
    headers = {str(k).lower(): str(v) for k, v in extra_headers.items()}
    return ModelRequest(path, body, None if regions is None else list(regions), headers, timeout)


def _chat(
    model: str,
    messages: list[dict[str, Any]],
    stream: bool,
    params: dict[str, Any],
    **options: Any,
) -> ModelRequest:
    body: JSON = {"model": model, "messages": messages}
    if stream:
        body["stream"] = True
    return model_request("/chat/completions", body, params, **options)


def _responses(
    model: str,
    input: str | list[dict[str, Any]],
    stream: bool,
    params: dict[str, Any],
    **options: Any,
) -> ModelRequest:
    body: JSON = {"model": model, "input": input}
    if stream:
        body["stream"] = True
    return model_request("/responses", body, params, **options)


def _embeddings(
    model: str, input: str | list[str], params: dict[str, Any], **options: Any
) -> ModelRequest:
    return model_request("/embeddings", {"model": model, "input": input}, params, **options)


# --- sync -----------------------------------------------------------------------------------


class Completions(Generic[C, S, T]):
    """``client.chat.completions``."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

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
        timeout: T | None = None,
        **params: Any,
    ) -> C: ...

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
        timeout: T | None = None,
        **params: Any,
    ) -> S: ...

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
        timeout: T | None = None,
        **params: Any,
    ) -> C | S:
        """Create a chat completion (keyword arguments as in the OpenAI SDK, plus the
        gateway's ``fallbacks``, ``regions`` and ``metadata``)."""
        request = _chat(
            model,
            messages,
            stream,
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
            timeout=timeout,
        )
        result: C | S = self._backend.stream(request) if stream else self._backend.complete(request)
        return result


class Chat(Generic[C, S, T]):
    """``client.chat``."""

    def __init__(self, backend: Backend) -> None:
        self.completions: Completions[C, S, T] = Completions(backend)


class Responses(Generic[R, RS, T]):
    """``client.responses``: the Responses API (any provider; see docs/responses.md)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    @overload
    def create(
        self,
        *,
        model: str,
        input: str | list[dict[str, Any]],
        stream: Literal[False] = False,
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: T | None = None,
        **params: Any,
    ) -> R: ...

    @overload
    def create(
        self,
        *,
        model: str,
        input: str | list[dict[str, Any]],
        stream: Literal[True],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: T | None = None,
        **params: Any,
    ) -> RS: ...

    def create(
        self,
        *,
        model: str,
        input: str | list[dict[str, Any]],
        stream: bool = False,
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: T | None = None,
        **params: Any,
    ) -> R | RS:
        """Create a response (keyword arguments as in the OpenAI SDK: ``instructions``,
        ``tools``, ``previous_response_id``, ``store``, …, plus the gateway's ``fallbacks``,
        ``regions`` and ``metadata``)."""
        request = _responses(
            model,
            input,
            stream,
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
            timeout=timeout,
        )
        result: R | RS = (
            self._backend.respond_stream(request) if stream else self._backend.respond(request)
        )
        return result

    def retrieve(self, response_id: str, *, timeout: T | None = None) -> R:
        """A stored response, by id (404 if it is not the caller's, or expired)."""
        result: R = self._backend.stored_response("GET", response_id, timeout)
        return result

    def delete(self, response_id: str, *, timeout: T | None = None) -> ResponseDeleted:
        """Delete a stored response."""
        result: ResponseDeleted = self._backend.stored_response("DELETE", response_id, timeout)
        return result


class Embeddings(Generic[E, T]):
    """``client.embeddings``."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def create(
        self,
        *,
        model: str,
        input: str | list[str],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: T | None = None,
        **params: Any,
    ) -> E:
        """Create embeddings for one or more inputs."""
        request = _embeddings(
            model,
            input,
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
            timeout=timeout,
        )
        result: E = self._backend.embed(request)
        return result


class Models(Generic[T]):
    """``client.models``."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def list(self, *, timeout: T | None = None) -> list[Model]:
        """The models the gateway serves."""
        result: list[Model] = self._backend.models(timeout)
        return result


# --- async ----------------------------------------------------------------------------------


class AsyncCompletions(Generic[C, S, T]):
    """``client.chat.completions`` for asyncio code."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

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
        timeout: T | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> C: ...

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
        timeout: T | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> S: ...

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
        timeout: T | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> C | S:
        """Create a chat completion (keyword arguments as in the OpenAI SDK, plus the
        gateway's ``fallbacks``, ``regions`` and ``metadata``)."""
        request = _chat(
            model,
            messages,
            stream,
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
            timeout=timeout,
        )
        result: C | S = await (
            self._backend.stream(request) if stream else self._backend.complete(request)
        )
        return result


class AsyncChat(Generic[C, S, T]):
    """``client.chat`` for asyncio code."""

    def __init__(self, backend: Backend) -> None:
        self.completions: AsyncCompletions[C, S, T] = AsyncCompletions(backend)


class AsyncResponses(Generic[R, RS, T]):
    """``client.responses`` for asyncio code."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    @overload
    async def create(
        self,
        *,
        model: str,
        input: str | list[dict[str, Any]],
        stream: Literal[False] = False,
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: T | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> R: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        input: str | list[dict[str, Any]],
        stream: Literal[True],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: T | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> RS: ...

    async def create(
        self,
        *,
        model: str,
        input: str | list[dict[str, Any]],
        stream: bool = False,
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: T | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> R | RS:
        """Create a response (see ``Responses.create``)."""
        request = _responses(
            model,
            input,
            stream,
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
            timeout=timeout,
        )
        result: R | RS = await (
            self._backend.respond_stream(request) if stream else self._backend.respond(request)
        )
        return result

    async def retrieve(self, response_id: str, *, timeout: T | None = None) -> R:  # noqa: ASYNC109
        """A stored response, by id (404 if it is not the caller's, or expired)."""
        result: R = await self._backend.stored_response("GET", response_id, timeout)
        return result

    async def delete(self, response_id: str, *, timeout: T | None = None) -> ResponseDeleted:  # noqa: ASYNC109
        """Delete a stored response."""
        result: ResponseDeleted = await self._backend.stored_response(
            "DELETE", response_id, timeout
        )
        return result


class AsyncEmbeddings(Generic[E, T]):
    """``client.embeddings`` for asyncio code."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def create(
        self,
        *,
        model: str,
        input: str | list[str],
        fallbacks: list[str] | None = None,
        regions: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        user: str | None = None,
        timeout: T | None = None,  # noqa: ASYNC109 (the OpenAI SDK's keyword)
        **params: Any,
    ) -> E:
        """Create embeddings for one or more inputs."""
        request = _embeddings(
            model,
            input,
            params,
            fallbacks=fallbacks,
            regions=regions,
            metadata=metadata,
            user=user,
            timeout=timeout,
        )
        result: E = await self._backend.embed(request)
        return result


class AsyncModels(Generic[T]):
    """``client.models`` for asyncio code."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def list(self, *, timeout: T | None = None) -> list[Model]:  # noqa: ASYNC109
        """The models the gateway serves."""
        result: list[Model] = await self._backend.models(timeout)
        return result
