"""What crosses the wire to a provider, as plain values: no network library is imported here.

Provider adapters are sans-I/O. They build an ``UpstreamRequest`` from a canonical request and
turn the bytes of an ``UpstreamResponse`` back into canonical dicts; a ``Transport`` moves the
bytes. Keeping these shapes apart from any HTTP client lets an adapter be tested from recorded
payloads and lets one transport (``gateway.transport``) own pooling, timeouts and speed.
Server-sent events are decoded and encoded here too: both sides of the gateway speak them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

# A decoded JSON object: requests and answers travel through the gateway in this form.
JSON = dict[str, Any]

DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class UpstreamRequest:
    """One HTTP request to a provider, fully built by an adapter."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    # Request fields the adapter removed because the provider would reject them; the engine
    # reports them to the caller in the x-gateway-dropped-params header.
    dropped_params: tuple[str, ...] = ()
    # What the adapter needs to read this request's answer (e.g. the tool-call ids it
    # rewrote); the engine hands the request back to the adapter's parsers untouched.
    context: Any = None


@dataclass(slots=True, frozen=True)
class Timeouts:
    """Seconds allowed to connect, and to wait for any next byte (first byte included)."""

    connect: float = 10.0
    read: float = 120.0


class UpstreamResponse(Protocol):
    """A response whose body has not been read yet."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises UpstreamTimeoutError when idle too long."""
        ...

    async def close(self) -> None:
        """Release the connection (back to the pool when the body was consumed)."""
        ...


class Transport(Protocol):
    """Sends an UpstreamRequest; raises UpstreamConnectionError / UpstreamTimeoutError.

    The one seam between the gateway and the network: the engine sends every adapter's
    requests through one, so pooling, keep-alive and timeouts are decided in one place."""

    async def send(self, request: UpstreamRequest, timeouts: Timeouts) -> UpstreamResponse: ...

    async def close(self) -> None: ...


# --- server-sent events ---------------------------------------------------------------------


@dataclass(slots=True)
class SSEEvent:
    """One event: its ``event:`` name (if any) and its joined ``data:`` lines."""

    event: str | None
    data: bytes


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events completed so far.

    Handles events and lines split across reads, ``\\r\\n`` line ends, comments and
    multi-line data, per the WHATWG event-stream rules that providers follow.
    """

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if (
            not self._buf
            and not self._data
            and self._event is None
            and chunk[:6] == b"data: "
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk[-1:] == b"\n"
            and b"\r" not in chunk
        ):  # the commonest read of a paced stream: exactly one one-line event
            return [SSEEvent(None, chunk[6:-2])]
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            # The two lines nearly every event is made of, handled inline; the rest by _line.
            if line[:6] == b"data: " and line[-1:] != b"\r":
                data.append(line[6:])
            elif not line and data and self._event is None:
                events.append(SSEEvent(None, data[0] if len(data) == 1 else b"\n".join(data)))
                data.clear()
            else:
                self._line(line, events)
                data = self._data
        return events

    def close(self) -> list[SSEEvent]:
        """Events left when the stream ends without a final blank line."""
        events: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf, events)
            self._buf = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                events.append(SSEEvent(self._event, b"\n".join(self._data)))
            self._data = []
            self._event = None
            return
        if line[:1] == b":":
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")


def encode_event(payload: JSON) -> bytes:
    """One ``data:`` event carrying a JSON object."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"
