"""One load-generator process of the paced-stream benchmark: opens its share of the streams,
reads every event, and records how late each one arrived.

Run by ``benchmarks.paced`` (one or more of these at once); it writes what it saw to
``--out`` (JSON) and each event's delay to ``--out`` + ``.delays`` (int32 microseconds):

- an event's **delay** is its arrival here minus the send time the paced upstream wrote into
  it (both read from the machine's monotonic clock); through a proxy, minus the same figure
  read directly, it is what the proxy added;
- a stream's **gaps** are the times between reads that brought events; one over the stall
  threshold makes the stream "stalled";
- **TTFT** runs from writing the request to the first content event's arrival.

A share of the streams can be slow readers (``--slow``): they read the response head, then
read nothing until the stream should have ended, then drain it. Their events are reported
apart, so what they cost the other streams shows in the others' delays.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from array import array
from pathlib import Path
from typing import Any, cast

import orjson

from benchmarks.paced_upstream import run_loop

_MARK = re.compile(rb" t(\d{16})")
_TAIL = 40  # bytes kept between reads: a mark cut in two by a read boundary


class Collected:
    """What every stream of this process saw."""

    def __init__(self) -> None:
        self.delays = array("i")  # µs, every event of every normal stream
        self.gaps = array("i")  # µs, between reads that brought events
        self.streams: list[dict[str, Any]] = []


class StreamReader(asyncio.Protocol):
    def __init__(
        self, request: bytes, out: Collected, slow_until: float | None, done: asyncio.Future[None]
    ) -> None:
        self.request = request
        self.out = out
        self.slow_until = slow_until
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.head = b""
        self.tail = b""
        self.sent_ns = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.max_gap_ns = 0
        self.events = 0
        self.finished = False
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.sent_ns = time.monotonic_ns()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.status is None:
            self.head += data
            if len(self.head) < 12:
                return
            self.status = int(self.head[9:12])
            data, self.head = self.head, b""
            if self.status != 200:
                self.error = data[:300].decode(errors="replace")
            elif self.slow_until is not None:
                assert self.transport is not None
                self.transport.pause_reading()
                loop = asyncio.get_running_loop()
                loop.call_at(self.slow_until, self.transport.resume_reading)
        buf = self.tail + data
        end = 0
        found = 0
        slow = self.slow_until is not None
        delays = self.out.delays
        for m in _MARK.finditer(buf):
            found += 1
            end = m.end()
            if not slow:
                delays.append((now - int(m.group(1))) // 1000)
        if found:
            self.events += found
            if self.first_ns is None:
                self.first_ns = now
            elif not slow:
                gap = now - (self.last_ns or now)
                self.out.gaps.append(gap // 1000)
                if gap > self.max_gap_ns:
                    self.max_gap_ns = gap
            self.last_ns = now
        if b"data: [DONE]" in buf:
            self.finished = True
            assert self.transport is not None
            self.transport.close()
            return
        self.tail = buf[max(end, len(buf) - _TAIL) :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished and self.error is None:
            self.error = f"connection closed before [DONE] ({exc or 'by the server'})"
        if not self.done.done():
            self.done.set_result(None)

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "events": self.events,
            "finished": self.finished,
            "slow": self.slow_until is not None,
            "ttft_us": (self.first_ns - self.sent_ns) // 1000 if self.first_ns else None,
            "max_gap_us": self.max_gap_ns // 1000,
            "error": self.error,
        }


async def read_streams(args: argparse.Namespace, body: bytes) -> Collected:
    loop = asyncio.get_running_loop()
    request = (
        f"POST {args.path} HTTP/1.1\r\nhost: 127.0.0.1:{args.port}\r\n"
        f"authorization: Bearer {args.key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    out = Collected()
    readers: list[StreamReader] = []
    waits: list[asyncio.Future[None]] = []
    start = loop.time() + 0.2
    offsets = [
        (i * args.of + args.index) * args.ramp / (args.streams * args.of)
        for i in range(args.streams)
    ]
    slow_every = round(1 / args.slow) if args.slow > 0 else 0
    stream_seconds = args.events / args.rate

    async def open_one(offset: float, slow: bool) -> None:
        await asyncio.sleep(max(0.0, start + offset - loop.time()))
        done: asyncio.Future[None] = loop.create_future()
        slow_until = loop.time() + stream_seconds + 1.0 if slow else None
        reader = StreamReader(request, out, slow_until, done)
        readers.append(reader)
        waits.append(done)
        try:
            await loop.create_connection(lambda: reader, "127.0.0.1", args.port)
        except OSError as exc:
            reader.error = f"connect failed: {exc}"
            done.set_result(None)

    openers = []
    for number, offset in enumerate(offsets, 1):
        slow = bool(slow_every) and number % slow_every == 0
        openers.append(asyncio.create_task(open_one(offset, slow)))
    await asyncio.gather(*openers)
    left = start + args.ramp + stream_seconds + args.grace - loop.time()
    pending = [w for w in waits if not w.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(left, 1.0))
    for reader in readers:
        if not reader.finished and reader.transport is not None:
            reader.transport.close()
        if not reader.finished and reader.error is None:
            reader.error = "not finished within the run's time limit"
    out.streams = [r.summary() for r in readers]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="one reader process of benchmarks.paced")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--body", required=True, help="file with the request body")
    p.add_argument("--streams", type=int, required=True, help="streams this process opens")
    p.add_argument("--index", type=int, default=0, help="this process's number")
    p.add_argument("--of", type=int, default=1, help="how many reader processes there are")
    p.add_argument("--ramp", type=float, default=3.0, help="seconds over which streams open")
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--grace", type=float, default=20.0, help="seconds past the expected end")
    p.add_argument("--slow", type=float, default=0.0, help="share of slow-reading streams")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    result: dict[str, Collected] = {}
    body = Path(args.body).read_bytes()

    async def go() -> None:
        result["out"] = await read_streams(args, body)

    run_loop(go())
    out = result["out"]
    Path(args.out + ".delays").write_bytes(out.delays.tobytes())
    Path(args.out + ".gaps").write_bytes(out.gaps.tobytes())
    Path(args.out).write_bytes(orjson.dumps({"streams": out.streams}))


if __name__ == "__main__":
    main()
