"""One load-generator process of the paced-stream benchmark: keeps its share of C streams
open, reads every event, and records how late each one arrived.

Run by ``benchmarks.paced`` (one or more of these at once); it writes what it saw to
``--out`` (JSON) and each event's delay to ``--out`` + ``.delays`` (int32 microseconds).

Each of its slots opens its first stream at an offset spread evenly over ``--ramp`` seconds
(by default one stream's length) and opens the next as soon as one ends, so once the ramp is
over exactly C streams are open and new ones start at C / length per second, as in steady
traffic. What is measured is what happens in the **window**, from the end of the ramp for
one stream's length; then every stream still open is closed and the process exits.

- an event's **delay** is its arrival here minus the send time the paced upstream wrote into
  it (both read from the machine's monotonic clock); through a proxy, minus the same figure
  read directly, it is what the proxy added;
- a stream's **gaps** are the times between reads that brought events; one over the stall
  threshold in the window makes the stream "stalled";
- **TTFT** runs from writing the request to the first content event's arrival (streams that
  started in the window).

A share of the slots can be slow readers (``--slow``): they read the response head, then
read nothing until the stream should have ended, then drain it. Their events are counted but
kept out of the delays, so what they cost the other streams shows in the others' delays.
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
        self,
        request: bytes,
        out: Collected,
        window: tuple[int, int],
        slow_until: float | None,
        done: asyncio.Future[None],
    ) -> None:
        self.request = request
        self.out = out
        self.window = window  # monotonic ns: only what arrives in it counts
        self.slow_until = slow_until
        self.done = done
        self.window_events = 0
        self.cut = False  # closed by this process when the window ended
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
        lo, hi = self.window
        counted = lo <= now < hi
        keep = counted and self.slow_until is None
        delays = self.out.delays
        for m in _MARK.finditer(buf):
            found += 1
            end = m.end()
            if keep:
                delays.append((now - int(m.group(1))) // 1000)
        if found:
            self.events += found
            if counted:
                self.window_events += found
            if self.first_ns is None:
                self.first_ns = now
            elif keep and self.last_ns is not None and self.last_ns >= lo:
                gap = now - self.last_ns
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
        if not self.finished and self.error is None and not self.cut:
            self.error = f"connection closed before [DONE] ({exc or 'by the server'})"
        if not self.done.done():
            self.done.set_result(None)

    def summary(self) -> dict[str, Any]:
        in_window = self.window[0] <= self.sent_ns < self.window[1]
        return {
            "status": self.status,
            "events": self.events,
            "window_events": self.window_events,
            "finished": self.finished,
            "cut": self.cut,
            "started_in_window": in_window,
            "slow": self.slow_until is not None,
            "ttft_us": (
                (self.first_ns - self.sent_ns) // 1000 if self.first_ns and in_window else None
            ),
            "max_gap_us": self.max_gap_ns // 1000,
            "error": self.error,
        }


async def read_streams(args: argparse.Namespace, body: bytes) -> tuple[Collected, list[float]]:
    """Keep this process's slots streaming until the window ends; what was seen, and the
    window (monotonic seconds)."""
    loop = asyncio.get_running_loop()
    request = (
        f"POST {args.path} HTTP/1.1\r\nhost: 127.0.0.1:{args.port}\r\n"
        f"authorization: Bearer {args.key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    out = Collected()
    readers: list[StreamReader] = []
    stream_seconds = args.events / args.rate
    ramp = args.ramp if args.ramp > 0 else stream_seconds
    start = time.monotonic() + 0.3
    window = (start + ramp, start + ramp + stream_seconds)
    window_ns = (int(window[0] * 1e9), int(window[1] * 1e9))
    slots = args.streams * args.of
    slow_every = round(1 / args.slow) if args.slow > 0 else 0

    async def slot(number: int) -> None:
        offset = (number * args.of + args.index) * ramp / slots
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        slow = bool(slow_every) and (number + 1) % slow_every == 0
        while time.monotonic() < window[1]:
            done: asyncio.Future[None] = loop.create_future()
            slow_until = loop.time() + stream_seconds + 1.0 if slow else None
            reader = StreamReader(request, out, window_ns, slow_until, done)
            readers.append(reader)
            try:
                await loop.create_connection(lambda r=reader: r, "127.0.0.1", args.port)
            except OSError as exc:
                reader.error = f"connect failed: {exc}"
                await asyncio.sleep(0.1)
                continue
            await done
            if reader.error is not None:
                await asyncio.sleep(0.1)  # a refused stream: try again, not in a tight loop

    tasks = [asyncio.create_task(slot(n)) for n in range(args.streams)]
    await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
    for reader in readers:
        if not reader.finished and reader.transport is not None:
            reader.cut = True
            reader.transport.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.streams = [r.summary() for r in readers]
    return out, list(window)


def main() -> None:
    p = argparse.ArgumentParser(description="one reader process of benchmarks.paced")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--body", required=True, help="file with the request body")
    p.add_argument("--streams", type=int, required=True, help="streams this process opens")
    p.add_argument("--index", type=int, default=0, help="this process's number")
    p.add_argument("--of", type=int, default=1, help="how many reader processes there are")
    p.add_argument(
        "--ramp", type=float, default=0.0, help="seconds over which slots start (0: a stream's)"
    )
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--slow", type=float, default=0.0, help="share of slow-reading streams")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    result: dict[str, tuple[Collected, list[float]]] = {}
    body = Path(args.body).read_bytes()

    async def go() -> None:
        result["out"] = await read_streams(args, body)

    run_loop(go())
    out, window = result["out"]
    Path(args.out + ".delays").write_bytes(out.delays.tobytes())
    Path(args.out + ".gaps").write_bytes(out.gaps.tobytes())
    Path(args.out).write_bytes(orjson.dumps({"streams": out.streams, "window": window}))


if __name__ == "__main__":
    main()
