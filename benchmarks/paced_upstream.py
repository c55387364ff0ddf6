"""A paced streaming upstream: every request is answered with an SSE stream whose events are
sent one at a time at a fixed rate, as a model generating tokens would send them.

``python -m benchmarks.paced_upstream --port 8000 --events 200 --rate 20 --shape openai``

One asyncio process (uvloop when installed) carries thousands of streams: there is one timer
for the whole process, not one per stream. Streams wait in a wheel of 1 ms slots keyed by when
their next event is due; each tick writes the events of the slots that have come due. Every
content event carries the monotonic clock (nanoseconds, shared by every process of the
machine) at the moment it was written, as ``" t<16 digits>"`` in its text, so a reader can
tell how long each event took to reach it through whatever sits in between.

A request's ``max_tokens`` (or ``max_completion_tokens``) is how many content events it gets;
without one, ``--events``. The first content event goes out with the role event, at once; the
other ``events - 1`` follow every ``1 / rate`` seconds; then a finish event, a usage event
(OpenAI's shape when the request asked for ``stream_options.include_usage``; Mistral's carries
usage in its finish event) and ``data: [DONE]``. Connections are kept alive between requests.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any, cast

import orjson

TICK = 0.001  # seconds per wheel slot
MARK = b" t%016d"  # the send time inside each content event's text
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_NOT_FOUND = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
)
_CREATED = 1_700_000_000


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Shape:
    """The bytes of one provider's streamed chunks, split around the send-time mark."""

    def __init__(self, name: str) -> None:
        self.name = name
        model = "mistral-small-latest" if name == "mistral" else "gpt-4o-mini"
        base: dict[str, object] = {
            "id": "chatcmpl-paced0000000000000000000001",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
        }
        if name == "openai":
            base["system_fingerprint"] = "fp_paced"

        def event(delta: dict[str, object], finish: str | None, **extra: object) -> bytes:
            choice: dict[str, object] = {"index": 0, "delta": delta, "finish_reason": finish}
            if name == "openai":
                choice["logprobs"] = None
            return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        self.role = event({"role": "assistant", "content": ""}, None)
        content = event({"content": "@MARK@"}, None)
        self.before, self.after = content.split(b"@MARK@")
        self._event = event
        self._base = base

    def finish(self, events: int, usage_chunk: bool) -> bytes:
        usage = {"prompt_tokens": 14, "completion_tokens": events, "total_tokens": 14 + events}
        if self.name == "mistral":  # Mistral: usage rides on the finish event, always
            return self._event({"content": ""}, "stop", usage=usage) + b"data: [DONE]\n\n"
        out = self._event({}, "stop")
        if usage_chunk:
            out += b"data: " + orjson.dumps({**self._base, "choices": [], "usage": usage}) + b"\n\n"
        return out + b"data: [DONE]\n\n"


class Wheel:
    """Streams waiting for their next event, by the 1 ms slot it is due in."""

    def __init__(self, shape: Shape, events: int, period: float) -> None:
        self.shape = shape
        self.events = events
        self.period = period
        self.slots: defaultdict[int, list[Stream]] = defaultdict(list)
        self.done_slot = int(time.monotonic() / TICK)
        self.streams = 0
        self.max_buffered = 0  # the largest write buffer a connection held (bytes)

    def add(self, stream: Stream, due: float) -> None:
        slot = max(int(due / TICK), self.done_slot + 1)
        self.slots[slot].append(stream)

    async def run(self) -> None:
        shape = self.shape
        before, after, mark = shape.before, shape.after, MARK
        clock = time.monotonic_ns
        while True:
            await asyncio.sleep(TICK)
            now_slot = int(time.monotonic() / TICK)
            for slot in range(self.done_slot + 1, now_slot + 1):
                due = self.slots.pop(slot, None)
                if not due:
                    continue
                for stream in due:
                    if stream.closed:
                        continue
                    t = stream.transport
                    data = before + mark % clock() + after
                    t.write(b"%x\r\n%s\r\n" % (len(data), data))
                    stream.sent += 1
                    buffered = t.get_write_buffer_size()
                    if buffered > self.max_buffered:
                        self.max_buffered = buffered
                    if stream.sent >= stream.events:
                        t.write(_chunked(shape.finish(stream.events, stream.usage)) + b"0\r\n\r\n")
                        stream.conn.stream = None
                        self.streams -= 1
                    else:
                        self.add(stream, stream.started + stream.sent * self.period)
            self.done_slot = now_slot


class Stream:
    __slots__ = ("closed", "conn", "events", "sent", "started", "transport", "usage")

    def __init__(self, conn: Connection, events: int, usage: bool) -> None:
        self.conn = conn
        self.events = events
        self.transport = conn.transport
        self.started = time.monotonic()
        self.sent = 0
        self.usage = usage
        self.closed = False


class Connection(asyncio.Protocol):
    def __init__(self, wheel: Wheel) -> None:
        self.wheel = wheel
        self.buffer = b""
        self.stream: Stream | None = None
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.closed = True
            self.wheel.streams -= 1
            self.stream = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            m = _LENGTH.search(self.buffer, 0, end)
            size = int(m.group(1)) if m else 0
            if len(self.buffer) < end + 4 + size:
                return
            body = self.buffer[end + 4 : end + 4 + size]
            self.buffer = self.buffer[end + 4 + size :]
            self.answer(body)

    def answer(self, body: bytes) -> None:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or not request.get("stream"):
            msg = b'{"error":{"message":"the paced upstream answers streaming requests only"}}'
            self.transport.write(_NOT_FOUND % len(msg) + msg)
            return
        options = request.get("stream_options") or {}
        wheel = self.wheel
        # The request's token limit is how many events it gets (a short warm-up stream).
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        events = max(1, limit) if isinstance(limit, int) else wheel.events
        stream = Stream(self, events, bool(options.get("include_usage")))
        shape = wheel.shape
        data = shape.role + shape.before + MARK % time.monotonic_ns() + shape.after
        stream.sent = 1
        if events == 1:
            data += shape.finish(1, stream.usage)
            self.transport.write(_HEAD + _chunked(data) + b"0\r\n\r\n")
            return
        self.transport.write(_HEAD + _chunked(data))
        self.stream = stream
        wheel.streams += 1
        wheel.add(stream, stream.started + wheel.period)


async def serve(port: int, events: int, rate: float, shape: str) -> None:
    wheel = Wheel(Shape(shape), events, 1.0 / rate)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(wheel), "127.0.0.1", port, backlog=8192, reuse_address=True
    )
    ticker = asyncio.create_task(wheel.run())
    async with server:
        try:
            await server.serve_forever()
        finally:
            ticker.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--events", type=int, default=200, help="content events per stream")
    p.add_argument("--rate", type=float, default=20.0, help="content events per second")
    p.add_argument("--shape", choices=("openai", "mistral"), default="openai")
    args = p.parse_args()
    run_loop(serve(args.port, args.events, args.rate, args.shape))


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (the harness is then cheaper), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    main()
