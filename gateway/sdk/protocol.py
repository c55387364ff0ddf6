"""What the remote clients send to a running gateway and how they read its answers, no I/O.

Requests are built as plain ``ApiRequest`` values; answers (status, headers, body bytes, SSE
bytes) become typed results carrying ``GatewayFacts``, and the gateway's own exception classes
here. ``gateway.sdk.remote`` only moves bytes and sleeps, so the sync and the async client
cannot drift apart.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import httpx
import orjson
from pydantic import ValidationError

from gateway.errors import (
    AuthenticationError,
    BudgetExceededError,
    ContentFilterError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
    retry_after_seconds,
)
from gateway.facts import GatewayFacts, facts_from_headers, usd
from gateway.sdk.resources import ModelRequest
from gateway.types import (
    ChatCompletion,
    ChatCompletionChunk,
    CreateEmbeddingResponse,
    ResponseDeleted,
    ResponseObject,
    ResponseStreamEvent,
)
from gateway.wire import JSON, SSEDecoder, SSEEvent

Headers = dict[str, str]
DEFAULT_BASE_URL = "http://127.0.0.1:4000/v1"  # where ``llm-gateway serve`` listens by default


class GatewayConnectionError(GatewayError):
    """The gateway itself could not be reached (no HTTP answer)."""

    status = 503
    type = "connection_error"
    code = "gateway_unreachable"


class GatewayTimeoutError(GatewayError):
    """The gateway did not answer within the client's timeout."""

    status = 504
    type = "timeout_error"
    code = "gateway_timeout"


# --- configuration --------------------------------------------------------------------------


def base_url_from(given: str | None) -> str:
    """The API root ending in ``/v1``, from the argument, ``GATEWAY_BASE_URL`` or the default;
    a URL with or without ``/v1`` is accepted."""
    url = (given or os.environ.get("GATEWAY_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def api_key_from(given: str | None) -> str | None:
    return given or os.environ.get("GATEWAY_API_KEY") or None


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One HTTP request to the gateway, before it is sent."""

    method: str
    path: str  # under the /v1 root
    body: JSON | None = None
    headers: Headers = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    hide_usage: bool = False  # usage was asked for only to learn the cost: keep it from the caller
    root: bool = False  # the path is under the server's root (``/admin/…``), not ``/v1``
    # A multipart upload (``files.create``): form fields and (filename, content, type) parts.
    form: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None


def api_request(request: ModelRequest) -> ApiRequest:
    """A chat or embeddings request as the HTTP call that carries it: ``regions`` travel as
    ``x-gateway-regions``, the caller's ``extra_headers`` as headers. A stream always asks for
    the usage chunk, which carries the cost, and hides it if the caller did not ask."""
    headers = dict(request.headers)
    if request.regions is not None:
        headers["x-gateway-regions"] = ",".join(request.regions)
    body = request.body
    stream = bool(body.get("stream"))
    hide_usage = False
    if stream:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        hide_usage = not options.get("include_usage")
        body = {**body, "stream_options": {**options, "include_usage": True}}
    return ApiRequest("POST", request.path, body, headers, stream=stream, hide_usage=hide_usage)


def responses_request(request: ModelRequest) -> ApiRequest:
    """A Responses API request as the HTTP call that carries it (``regions`` as
    ``x-gateway-regions``)."""
    headers = dict(request.headers)
    if request.regions is not None:
        headers["x-gateway-regions"] = ",".join(request.regions)
    stream = bool(request.body.get("stream"))
    return ApiRequest("POST", request.path, request.body, headers, stream=stream)


def stored_response_request(method: str, response_id: str) -> ApiRequest:
    return ApiRequest(method, f"/responses/{response_id}")


# --- facts and typed results ----------------------------------------------------------------


def chat_result(body: bytes, headers: Headers) -> ChatCompletion:
    result = ChatCompletion.model_validate_json(body)
    result._facts = facts_from_headers(headers)
    return result


def embeddings_result(body: bytes, headers: Headers) -> CreateEmbeddingResponse:
    result = CreateEmbeddingResponse.model_validate_json(body)
    result._facts = facts_from_headers(headers)
    return result


def response_result(body: bytes, headers: Headers) -> ResponseObject:
    result = ResponseObject.model_validate_json(body)
    result._facts = facts_from_headers(headers)
    return result


def stored_response_result(body: bytes, headers: Headers) -> ResponseObject | ResponseDeleted:
    payload = orjson.loads(body)
    if isinstance(payload, dict) and payload.get("deleted") is True:
        return ResponseDeleted.model_validate(payload)
    return response_result(body, headers)


# --- errors ---------------------------------------------------------------------------------

# The error code decides first (it is the more specific), then the HTTP status.
_BY_CODE: dict[str, type[GatewayError]] = {
    "budget_exceeded": BudgetExceededError,
    "content_filter": ContentFilterError,
    "context_length_exceeded": ContextLengthExceededError,
    "stream_interrupted": StreamInterruptedError,
    "upstream_timeout": UpstreamTimeoutError,
    "upstream_unreachable": UpstreamConnectionError,
}
_BY_STATUS: dict[int, type[GatewayError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    429: RateLimitError,
}
_BY_TYPE: dict[str, int] = {  # a mid-stream error event has no status of its own
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "rate_limit_error": 429,
}


def error_from_response(status: int, body: bytes, headers: Headers) -> GatewayError:
    """The gateway's exception for an error answer, carrying status, code, message,
    provider, deployment and ``request_id``."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        text = body[:200].decode("utf-8", "replace").strip() or "(empty body)"
        error = {"message": f"the gateway answered HTTP {status} without an error body: {text}"}
    return error_from_body(error, headers, status)


def error_from_body(error: JSON, headers: Headers, status: int | None = None) -> GatewayError:
    """The exception for one ``{"message", "type", "param", "code"}`` error object."""
    code = _text(error.get("code"))
    etype = _text(error.get("type"))
    if status is None:
        status = _BY_TYPE.get(etype or "", 500)
        if code in _BY_CODE:
            status = _BY_CODE[code].status
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = UpstreamError if status >= 500 else GatewayError
    exc = cls(
        _text(error.get("message")) or f"the gateway answered HTTP {status}",
        status=status,
        type=etype,
        code=code,
        param=_text(error.get("param")),
        provider=headers.get("x-gateway-provider") or None,
        deployment=headers.get("x-gateway-deployment") or None,
        headers=headers,
    )
    exc.request_id = headers.get("x-request-id") or None
    return exc


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# --- retries --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When the client tries again: after the gateway's own 429 (waiting its Retry-After) and
    after a failed connection (nothing was sent), at most ``max_retries`` times. Never after a
    refused budget or an answer saying ``x-should-retry: false``; never when the gateway asks
    for a longer wait than ``max_wait`` seconds."""

    max_retries: int = 2
    max_wait: float = 60.0
    backoff: float = 0.5  # first wait without a Retry-After, doubled each retry

    def after_error(self, error: GatewayError, retries_done: int) -> float | None:
        """Seconds to wait before the next try, or None to raise ``error``."""
        if retries_done >= self.max_retries or error.status != 429:
            return None
        if error.code == "budget_exceeded" or error.headers.get("x-should-retry") == "false":
            return None
        wait = retry_after_seconds(error)
        if wait is None:
            return self._backoff(retries_done)
        return wait if wait <= self.max_wait else None

    def after_connect_failure(self, retries_done: int) -> float | None:
        if retries_done >= self.max_retries:
            return None
        return self._backoff(retries_done)

    def wait_after_failure(self, exc: httpx.TransportError, retries_done: int, url: str) -> float:
        """Seconds to wait after a request got no answer, or its exception: only a failed
        connection is retried (nothing was sent); any later failure may have reached the
        gateway, so it is never sent again."""
        wait = (
            self.after_connect_failure(retries_done)
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            else None
        )
        if wait is None:
            raise transport_error(exc, url) from exc
        return wait

    def wait_after_answer(
        self, status: int, body: bytes, headers: Headers, retries_done: int
    ) -> float:
        """Seconds to wait after an error answer, or the exception it maps to."""
        error = error_from_response(status, body, headers)
        wait = self.after_error(error, retries_done)
        if wait is None:
            raise error
        return wait

    def _backoff(self, retries_done: int) -> float:
        return float(self.backoff * 2**retries_done * random.uniform(0.75, 1.0))


# --- streams --------------------------------------------------------------------------------


StreamItem = ChatCompletionChunk | GatewayError
Item = TypeVar("Item")


def unwrap(items: Sequence[Item | GatewayError]) -> Iterator[Item]:
    """The items in order (chunks or events); an error among them is raised where it stands."""
    for item in items:
        if isinstance(item, GatewayError):
            raise item
        yield item


class StreamDecoder(Protocol[Item]):
    """Turns a gateway stream's SSE bytes into its items (``ChunkDecoder``, ``EventDecoder``):
    what was read so far, errors in place; ``finished`` once nothing more may follow."""

    facts: GatewayFacts
    finished: bool

    def feed(self, data: bytes) -> list[Item | GatewayError]: ...

    def close(self) -> list[Item | GatewayError]: ...


class ChunkDecoder:
    """Turns the gateway's SSE bytes into chunks, in order. An in-band ``{"error": …}`` event
    becomes its mapped exception, and a stream that ends without ``[DONE]`` a
    ``StreamInterruptedError`` (the answer is partial); the caller raises what it is handed."""

    def __init__(self, headers: Headers, *, hide_usage: bool = False) -> None:
        self._sse = SSEDecoder()
        self._headers = headers
        self._hide_usage = hide_usage
        self.facts = facts_from_headers(headers)  # the cost is added from the usage chunk
        self.finished = False  # [DONE] or an error event was read: nothing more will follow

    def feed(self, data: bytes) -> list[StreamItem]:
        return self._items(self._sse.feed(data))

    def close(self) -> list[StreamItem]:
        """What the last bytes held, and the interruption if the stream was not finished."""
        items = self._items(self._sse.close())
        if not self.finished:
            items.append(
                self._error(
                    StreamInterruptedError(
                        "the gateway's stream ended before [DONE]; the answer received so far "
                        "is partial"
                    )
                )
            )
            self.finished = True
        return items

    def _items(self, events: list[SSEEvent]) -> list[StreamItem]:
        items: list[StreamItem] = []
        for event in events:
            if self.finished:
                break
            if event.data.strip() == b"[DONE]":
                self.finished = True
                break
            try:
                payload = orjson.loads(event.data)
                if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                    self.finished = True
                    items.append(error_from_body(payload["error"], self._headers))
                else:
                    chunk = ChatCompletionChunk.model_validate(payload)
                    if chunk.usage is not None:
                        self.facts = replace(
                            self.facts, cost=usd((chunk.usage.model_extra or {}).get("cost"))
                        )
                        if self._hide_usage:
                            if not chunk.choices:
                                continue
                            chunk.usage = None
                    items.append(chunk)
            except (orjson.JSONDecodeError, ValidationError) as exc:
                self.finished = True
                items.append(
                    self._error(
                        StreamInterruptedError(
                            f"the gateway sent an unreadable stream event: {exc}"
                        )
                    )
                )
        return items

    def _error(self, exc: GatewayError) -> GatewayError:
        exc.request_id = self._headers.get("x-request-id") or None
        return exc


EventItem = ResponseStreamEvent | GatewayError
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class EventDecoder:
    """Turns a streamed response's SSE bytes into its typed events. An ``error`` event
    becomes its mapped exception; a stream that ends before its final event (completed,
    incomplete or failed) a ``StreamInterruptedError``."""

    def __init__(self, headers: Headers) -> None:
        self._sse = SSEDecoder()
        self._headers = headers
        self.facts = facts_from_headers(headers)
        self.finished = False

    def feed(self, data: bytes) -> list[EventItem]:
        return self._items(self._sse.feed(data))

    def close(self) -> list[EventItem]:
        items = self._items(self._sse.close())
        if not self.finished:
            error = StreamInterruptedError(
                "the gateway's stream ended before the response was finished; the answer "
                "received so far is partial"
            )
            error.request_id = self._headers.get("x-request-id") or None
            items.append(error)
            self.finished = True
        return items

    def _items(self, events: list[SSEEvent]) -> list[EventItem]:
        items: list[EventItem] = []
        for event in events:
            if self.finished:
                break
            try:
                payload = orjson.loads(event.data)
                if not isinstance(payload, dict):
                    raise ValueError("an event that is not a JSON object")
                if payload.get("type") == "error" or isinstance(payload.get("error"), dict):
                    self.finished = True
                    error = payload.get("error")
                    items.append(
                        error_from_body(
                            error if isinstance(error, dict) else payload, self._headers
                        )
                    )
                    continue
                items.append(ResponseStreamEvent.model_validate(payload))
                if payload.get("type") in _FINAL_EVENTS:
                    self.finished = True
            except (orjson.JSONDecodeError, ValidationError, ValueError) as exc:
                self.finished = True
                error = StreamInterruptedError(
                    f"the gateway sent an unreadable stream event: {exc}"
                )
                error.request_id = self._headers.get("x-request-id") or None
                items.append(error)
        return items


# --- the httpx side: timeouts, headers, failures without an answer -----------------------

Timeout = float | httpx.Timeout
# LLM answers can take minutes; a gateway that does not accept the connection fast is down.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
USER_AGENT = "llm-gateway-client/0.1"


def as_timeout(value: Timeout | None) -> httpx.Timeout | None:
    """A number is the read (and write, pool) timeout; connecting keeps its short default."""
    if value is None or isinstance(value, httpx.Timeout):
        return value
    return httpx.Timeout(value, connect=min(value, DEFAULT_TIMEOUT.connect or value))


def headers_of(response: httpx.Response) -> Headers:
    return {k.lower(): v for k, v in response.headers.items()}


def transport_error(exc: httpx.TransportError, url: str) -> GatewayError:
    """The gateway's exception for a request that got no (complete) HTTP answer."""
    if isinstance(exc, httpx.TimeoutException):
        return GatewayTimeoutError(
            f"the gateway at {url} did not answer in time ({type(exc).__name__}); raise the "
            "client's timeout or check the gateway"
        )
    return GatewayConnectionError(
        f"could not talk to the gateway at {url} ({type(exc).__name__}: {exc}); check "
        "base_url / GATEWAY_BASE_URL and that the gateway is running"
    )


def stream_broken(exc: httpx.TransportError, headers: Headers) -> GatewayError:
    error: GatewayError
    if isinstance(exc, httpx.TimeoutException):
        error = GatewayTimeoutError(
            "the gateway's stream went silent for longer than the client's read timeout; "
            "the answer received so far is partial"
        )
    else:
        error = StreamInterruptedError(
            f"the connection to the gateway broke mid-stream ({type(exc).__name__}); "
            "the answer received so far is partial"
        )
    error.request_id = headers.get("x-request-id") or None
    return error


class Settings:
    """What both clients share: where the gateway is, how to authenticate, when to retry."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: Timeout | None,
        max_retries: int,
        default_headers: dict[str, str] | None,
        owns_client: bool,
    ) -> None:
        self.base_url = base_url_from(base_url)
        self.retry = RetryPolicy(max_retries=max_retries)
        self.timeout = as_timeout(timeout) or (DEFAULT_TIMEOUT if owns_client else None)
        key = api_key_from(api_key)
        self.headers = {
            "user-agent": USER_AGENT,
            **({"authorization": f"Bearer {key}"} if key else {}),
            **{k.lower(): v for k, v in (default_headers or {}).items()},
        }

    def request(
        self, http: httpx.Client | httpx.AsyncClient, call: ApiRequest, timeout: Timeout | None
    ) -> httpx.Request:
        """The HTTP request for a call; one id per call, kept across retries, lets the
        gateway's logs tie the tries together (it echoes it as ``x-client-request-id``)."""
        chosen = as_timeout(timeout) or self.timeout
        base = self.base_url.removesuffix("/v1") if call.root else self.base_url
        return http.build_request(
            call.method,
            base + call.path,
            json=call.body,
            data=call.form,
            files=call.files,
            params=call.params or None,
            headers={**self.headers, "x-client-request-id": uuid.uuid4().hex, **call.headers},
            timeout=chosen if chosen is not None else httpx.USE_CLIENT_DEFAULT,
        )
