"""A fault-injecting OpenAI upstream: the request's ``model`` names the fault to play.

It is a raw asyncio HTTP/1.1 server rather than an ASGI app because several faults live below
HTTP: a TCP reset before any byte, a chunked stream that ends without its terminating chunk, a
connection that goes silent. Choosing the fault per request (by ``model``) instead of queueing
it lets one upstream serve several deployments of a gateway under test, each failing its own way.

A model reads ``<scenario>[:<arg>][#<tag>]``: ``cut-after:3``, ``500-once#east``. The tag only
gives a model its own "once" counter; models that name no scenario get a normal answer. The
scenarios are the keys of ``SCENARIOS``.

The module is split like h11: ``plan()`` turns a request into an action (pure, no I/O), and
``FaultyUpstream`` reads requests and carries the actions out on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

import orjson

from tests.emulators.openai_api import chunks, text_of

Ending = Literal["complete", "cut", "stall"]
DONE = b"data: [DONE]\n\n"
MALFORMED = b'data: {"id": broken json\n\n'


@dataclass(frozen=True)
class Attempt:
    """One request as the upstream received it."""

    model: str
    path: str
    stream: bool
    started: float  # time.monotonic() once the whole request was read
    body: dict[str, Any]
    headers: dict[str, str]  # names lower-cased
    query: str = ""  # the request target after '?', e.g. "api-version=2024-10-21"
    connection: int = 0  # serial number of the TCP connection it came on, from 1


@dataclass(frozen=True)
class Call:
    """What a scenario needs to know about one request."""

    model: str  # as requested, e.g. "cut-after:3#east"
    arg: str  # the suffix after ':' (before any '#tag'), "" if none
    body: dict[str, Any]
    nth: int  # 1 for the first request of this model since the last reset
    down: bool = False  # for "down:<name>": whether set_down(name, True) is in force
    reused: bool = False  # whether it came on a connection that had carried a request before

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def include_usage(self) -> bool:
        return bool((self.body.get("stream_options") or {}).get("include_usage"))


@dataclass(frozen=True)
class Reply:
    """A whole answer with Content-Length; ``ending`` other than complete sends half the body."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0
    ending: Ending = "complete"


@dataclass(frozen=True)
class Stream:
    """A chunked text/event-stream answer made of pre-encoded SSE events."""

    events: list[bytes]
    delay: float = 0.0  # before the status line
    first_event_delay: float = 0.0  # after the headers, before the first event
    ending: Ending = "complete"


@dataclass(frozen=True)
class Drop:
    """Close the connection with a TCP reset before sending anything."""


@dataclass(frozen=True)
class Silence:
    """Read the request and never answer."""


@dataclass(frozen=True)
class Close:
    """Read the request, wait ``delay`` seconds, and close the connection (FIN) unanswered."""

    delay: float = 0.0


Action = Reply | Stream | Drop | Silence | Close


class ScenarioError(ValueError):
    """The model names a scenario with a missing or unreadable suffix."""


# --- answers -------------------------------------------------------------------------------


def error_reply(status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps({"error": error}), headers or {})


def openai_error(status: int, message: str, type_: str | None, code: str | None) -> Reply:
    return error_reply(status, {"message": message, "type": type_, "param": None, "code": code})


def rate_limited(headers: dict[str, str] | None = None) -> Reply:
    message = "Rate limit reached for requests. Please try again later."
    return error_reply(
        429,
        {"message": message, "type": "requests", "param": None, "code": "rate_limit_exceeded"},
        headers,
    )


def completion(call: Call) -> dict[str, Any]:
    """A deterministic chat.completion: ``ok: <last user text>``, usage counted in words."""
    messages = [m for m in call.body.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"]
    text = "ok: " + (text_of(users[-1].get("content")) if users else "")
    prompt = sum(len(text_of(m.get("content")).split()) for m in messages)
    generated = len(text.split())
    return {
        "id": "chatcmpl-faulty",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": generated,
            "total_tokens": prompt + generated,
        },
        "system_fingerprint": "fp_faulty",
    }


def events(call: Call, include_usage: bool | None = None) -> list[bytes]:
    """The SSE events of a normal stream, without ``[DONE]``."""
    usage = call.include_usage if include_usage is None else include_usage
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks(completion(call), usage)]


def normal(call: Call, delay: float = 0.0, first_event_delay: float = 0.0) -> Reply | Stream:
    if call.stream:
        return Stream([*events(call), DONE], delay, first_event_delay)
    return Reply(200, orjson.dumps(completion(call)), delay=delay)


def seconds(call: Call) -> float:
    try:
        value = float(call.arg)
    except ValueError:
        raise ScenarioError(f"{call.model!r}: the suffix after ':' must be seconds") from None
    if not 0 <= value <= 600:
        raise ScenarioError(f"{call.model!r}: seconds must be between 0 and 600")
    return value


def count(call: Call) -> int:
    if not call.arg.isdigit():
        raise ScenarioError(f"{call.model!r}: the suffix after ':' must be a whole number")
    return int(call.arg)


def cut(call: Call, ending: Ending) -> Reply | Stream:
    """Stop after ``count`` events of the stream (or half of a JSON body)."""
    sent, answer = count(call), normal(call)
    if isinstance(answer, Stream):
        return Stream(answer.events[:sent], ending=ending)
    return Reply(200, answer.body, ending=ending)


def with_malformed_event(call: Call) -> Reply | Stream:
    answer = normal(call)
    if isinstance(answer, Reply):
        return answer
    middle = len(answer.events) // 2
    return Stream([*answer.events[:middle], MALFORMED, *answer.events[middle:]])


def without_done(call: Call) -> Reply | Stream:
    return Stream(events(call, include_usage=True)) if call.stream else normal(call)


def without_finish(call: Call) -> Reply | Stream:
    if not call.stream:
        return normal(call)
    unfinished = [
        orjson.dumps(c)
        for c in chunks(completion(call), include_usage=False)
        if c["choices"][0]["finish_reason"] is None
    ]
    return Stream([b"data: " + c + b"\n\n" for c in unfinished])


CONTEXT_LENGTH = {
    "message": "This model's maximum context length is 128000 tokens. However, your messages "
    "resulted in 130000 tokens.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded",
}
CONTENT_FILTER = {
    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
    "management policy.",
    "type": None,
    "param": "prompt",
    "code": "content_filter",
    "status": 400,
    "innererror": {
        "code": "ResponsibleAIPolicyViolation",
        "content_filter_result": {
            "violence": {"filtered": True, "severity": "high"},
            "hate": {"filtered": False, "severity": "safe"},
        },
    },
}
HTML_500 = (
    b"<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n<body>\r\n"
    b"<center><h1>500 Internal Server Error</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def once(fault: Callable[[Call], Action]) -> Callable[[Call], Action]:
    """The fault for the first request of a model since the last reset, normal answers after."""
    return lambda call: fault(call) if call.nth == 1 else normal(call)


def retry_after(call: Call) -> Reply:
    seconds(call)  # validate, but send the suffix as written ("2", "0.5")
    return rate_limited({"Retry-After": call.arg})


def retry_after_ms(call: Call) -> Reply:
    ms = str(count(call))
    return rate_limited({"retry-after-ms": ms, "x-ms-retry-after-ms": ms})


def server_error(call: Call) -> Reply:
    message = "The server had an error while processing your request. Sorry about that!"
    return openai_error(500, message, "server_error", None)


def overloaded(call: Call) -> Reply:
    message = "The engine is currently overloaded, please try again later."
    return openai_error(503, message, "server_error", None)


def down(call: Call) -> Action:
    return overloaded(call) if call.down else normal(call)


def slow_first_token(call: Call) -> Action:
    if call.stream:
        return normal(call, first_event_delay=seconds(call))
    return normal(call, delay=seconds(call))


def cut_after(call: Call) -> Action:
    return cut(call, "cut")


def stall_after(call: Call) -> Action:
    return cut(call, "stall")


def continuing(call: Call, echo: bool = False) -> Action:
    """A normal answer; for a final assistant message with ``continue_final_message`` (how
    vLLM continues a prefill), only the rest of it, as such a server sends it (with ``echo``,
    the whole of it, prefill included, as some servers do)."""
    messages = call.body.get("messages") or []
    last = messages[-1] if messages else None
    if not (
        call.body.get("continue_final_message")
        and isinstance(last, dict)
        and last.get("role") == "assistant"
    ):
        return normal(call)
    answer = completion(call)
    message = answer["choices"][0]["message"]
    if not echo:
        message["content"] = message["content"].removeprefix(text_of(last.get("content")))
    sent = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks(answer, call.include_usage)]
    return Stream([*sent, DONE]) if call.stream else Reply(200, orjson.dumps(answer))


def rejects_prefill(call: Call) -> Action:
    """A normal answer, but a 400 for a request ending in an assistant message."""
    messages = call.body.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        message = "Assistant message prefill is not supported: the last message must be a user one."
        return openai_error(400, message, "invalid_request_error", "unsupported_prefill")
    return normal(call)


CONTENT_POLICY = {
    "message": "Your request was rejected as a result of our safety system.",
    "type": "invalid_request_error",
    "param": None,
    "code": "content_policy_violation",
}


def with_usage(
    shape: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> Callable[[Call], Action]:
    """A normal answer whose usage block is replaced by ``shape(usage)`` (None: no usage)."""

    def play(call: Call) -> Action:
        answer = completion(call)
        usage = shape(answer["usage"])
        if usage is None:
            del answer["usage"]
        else:
            answer["usage"] = usage
        if not call.stream:
            return Reply(200, orjson.dumps(answer))
        sent = chunks(answer | {"usage": usage or {}}, call.include_usage)
        if usage is None:  # no usage chunk at all, even when asked for
            sent = [c for c in sent if c.get("choices")]
            for c in sent:
                c.pop("usage", None)
        return Stream([*(b"data: " + orjson.dumps(c) + b"\n\n" for c in sent), DONE])

    return play


UNREADABLE_BODY = openai_error(
    400, "We could not parse the JSON body of your request.", "invalid_request_error", None
)

SCENARIOS: dict[str, Callable[[Call], Action]] = {
    "429-once-retry-after": once(retry_after),
    "429-always": lambda call: rate_limited(),
    "429-retry-after-ms": once(retry_after_ms),
    "insufficient-quota": lambda call: openai_error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    ),
    "500-once": once(server_error),
    "503-always": overloaded,
    "down": down,
    "reset": lambda call: Drop(),
    "reset-once": once(lambda call: Drop()),
    "hang": lambda call: Silence(),
    "slow-first-byte": lambda call: normal(call, delay=seconds(call)),
    "slow-first-token": slow_first_token,
    "cut-after": cut_after,
    "cut-after-once": once(cut_after),
    "stall-after": stall_after,
    "malformed-mid-stream": with_malformed_event,
    "no-done": without_done,
    "no-finish": without_finish,
    "context-length": lambda call: error_reply(400, CONTEXT_LENGTH),
    "content-filter": lambda call: error_reply(400, CONTENT_FILTER),
    "html-500": lambda call: Reply(500, HTML_500, content_type="text/html"),
    "content-policy": lambda call: error_reply(400, CONTENT_POLICY),
    "drop-after": lambda call: Close(seconds(call)),
    "close-reused-once": lambda call: Close() if call.reused and call.nth == 1 else normal(call),
    "prefill": continuing,
    "prefill-echo": lambda call: continuing(call, echo=True),
    "rejects-prefill": rejects_prefill,
    # Usage blocks the gateway cannot read as OpenAI's, and none at all.
    "usage-input-output": with_usage(
        lambda u: {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"]}
    ),
    "usage-total-only": with_usage(lambda u: {"total_tokens": u["total_tokens"]}),
    "no-usage": with_usage(lambda u: None),
}


def scenario_of(model: str) -> tuple[str, str]:
    """``"cut-after:3#east"`` → ``("cut-after", "3")``; the ``#tag`` only separates counters."""
    name, _, arg = model.partition("#")[0].partition(":")
    return name, arg


def plan(call: Call) -> Action:
    """The action answering ``call``: its scenario's, or a normal answer for other models."""
    name, _ = scenario_of(call.model)
    try:
        return SCENARIOS.get(name, normal)(call)
    except ScenarioError as exc:
        return openai_error(400, str(exc), "invalid_request_error", "faulty_scenario")


# --- HTTP/1.1 on the socket ----------------------------------------------------------------


class BadRequest(Exception):
    """The bytes on the connection are not an HTTP/1.1 request this server can read."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    keep_alive: bool


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """The next request on the connection, or None if the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("connection closed inside the request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head larger than 64 KiB") from None
    request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"unreadable request line {request_line!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(f"unreadable header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await read_chunked(reader)
    else:
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise BadRequest(f"unreadable Content-Length {length!r}")
        body = await reader.readexactly(int(length))
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return HttpRequest(method, target, headers, body, keep_alive)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise BadRequest(f"unreadable chunk size {size_line!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise BadRequest("chunk not followed by CRLF")


def response_head(status: int, headers: dict[str, str], keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send_rst(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER 0 makes close() drop the connection."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def until_client_leaves(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def send_reply(
    reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep_alive: bool
) -> bool:
    """Send ``reply``; whether the connection can carry another request."""
    headers = {"Content-Type": reply.content_type, "Content-Length": str(len(reply.body))}
    complete = reply.ending == "complete"
    body = reply.body if complete else reply.body[: len(reply.body) // 2]
    writer.write(response_head(reply.status, {**headers, **reply.headers}, keep_alive) + body)
    await writer.drain()
    if reply.ending == "stall":
        await until_client_leaves(reader)
    return complete and keep_alive


async def send_stream(
    stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep_alive: bool
) -> bool:
    """Send ``stream`` with chunked framing, one chunk per event; a cut omits the 0-chunk."""
    headers = {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Transfer-Encoding": "chunked",
        "Cache-Control": "no-cache",
    }
    writer.write(response_head(200, headers, keep_alive))
    await writer.drain()
    await asyncio.sleep(stream.first_event_delay)
    for event in stream.events:
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
    if stream.ending == "stall":
        await until_client_leaves(reader)
    if stream.ending != "complete":
        return False
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return keep_alive


class FaultyUpstream:
    """The scenarios served on a free loopback port, logging every attempt.

    ``with FaultyUpstream() as up`` runs it on its own event loop in a thread (for tests whose
    gateway also runs in a thread); ``async with`` runs it on the caller's loop.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._seen: dict[str, int] = {}
        self._down: set[str] = set()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._opened = itertools.count(1)
        self._closed: dict[int, float] = {}  # connection serial → time.monotonic() it closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def attempts(self) -> list[Attempt]:
        """A snapshot of every chat-completions request received since the last reset."""
        with self._lock:
            return list(self._attempts)

    def closed_at(self, connection: int) -> float | None:
        """When (``time.monotonic()``) connection ``connection`` ended, if it has."""
        with self._lock:
            return self._closed.get(connection)

    def attempts_for(self, model: str) -> list[Attempt]:
        return [a for a in self.attempts if a.model == model]

    def gaps(self, model: str) -> list[float]:
        """Seconds between consecutive attempts of ``model``."""
        started = [a.started for a in self.attempts_for(model)]
        return [later - earlier for earlier, later in itertools.pairwise(started)]

    def set_down(self, name: str, down: bool = True) -> None:
        """Make model ``down:<name>`` answer 503 (True) or normally (False, the default)."""
        with self._lock:
            (self._down.add if down else self._down.discard)(name)

    def reset(self) -> None:
        """Forget attempts, "once" counters and downed names."""
        with self._lock:
            self._attempts.clear()
            self._seen.clear()
            self._down.clear()

    # --- serving ---

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop every connection, hanging or not, within a second."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task, writer in list(self._connections.items()):
            task.cancel()
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1)

    async def __aenter__(self) -> FaultyUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> FaultyUpstream:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="faulty-upstream")
        self._thread.daemon = True
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=5)
        return self

    def __exit__(self, *exc: object) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=2)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=2)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        connection = next(self._opened)
        try:
            served = 0
            while await self._answer_next(reader, writer, connection, served > 0):
                served += 1
        except BadRequest as exc:
            reply = openai_error(400, f"Bad HTTP request: {exc}", "invalid_request_error", None)
            with contextlib.suppress(ConnectionError):
                await send_reply(reply, reader, writer, keep_alive=False)
        except (ConnectionError, EOFError):
            pass  # the client went away: nothing left to answer
        except asyncio.CancelledError:
            pass  # stop() drops the connection; re-raising makes 3.11's start_server log an error
        finally:
            self._connections.pop(task, None)
            writer.close()
            with self._lock:
                self._closed[connection] = time.monotonic()

    async def _answer_next(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: int,
        reused: bool = False,
    ) -> bool:
        """Answer the next request; whether the connection can carry another."""
        request = await read_request(reader)
        if request is None:
            return False
        path, _, query = request.target.partition("?")
        if request.method != "POST" or not path.endswith("/chat/completions"):
            reply = openai_error(404, f"No route {request.method} {path}", "not_found", None)
            return await send_reply(reply, reader, writer, request.keep_alive)
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
        readable = isinstance(body, dict)
        body = body if isinstance(body, dict) else {}
        call = self._record(
            Attempt(
                model=str(body.get("model", "")),
                path=path,
                stream=body.get("stream") is True,
                started=time.monotonic(),
                body=body,
                headers=request.headers,
                query=query,
                connection=connection,
            ),
            reused,
        )
        action = plan(call) if readable else UNREADABLE_BODY
        if isinstance(action, Drop):
            send_rst(writer)
            return False
        if isinstance(action, Silence):
            await until_client_leaves(reader)
            return False
        if isinstance(action, Close):
            await asyncio.sleep(action.delay)
            return False  # _serve closes the connection
        await asyncio.sleep(action.delay)
        if isinstance(action, Reply):
            return await send_reply(action, reader, writer, request.keep_alive)
        return await send_stream(action, reader, writer, request.keep_alive)

    def _record(self, attempt: Attempt, reused: bool = False) -> Call:
        name, arg = scenario_of(attempt.model)
        with self._lock:
            self._attempts.append(attempt)
            nth = self._seen[attempt.model] = self._seen.get(attempt.model, 0) + 1
            down = name == "down" and arg in self._down
        return Call(attempt.model, arg, attempt.body, nth, down, reused)
