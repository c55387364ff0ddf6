"""Server-sent events: an incremental decoder for upstream streams and the encoder for ours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


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


def encode_event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event carrying a JSON object."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"
