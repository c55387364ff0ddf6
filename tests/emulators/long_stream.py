"""An OpenAI-shaped upstream whose answers are long SSE streams without usage, written as fast
as the reader takes them, counting what each stream got out.

The request's ``max_tokens`` is how many bytes of events to send (``default_bytes`` when it
is absent); each event carries the next piece of ``text`` (repeated as needed). A writer
waits on ``drain()``, so a stream's count stops moving while its reader (the gateway) does not
read. ``with LongStreamUpstream() as up`` runs it on its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from typing import Any

import orjson

WORDS = "lorem ipsum dolor sit amet, consectetur adipiscing elit; 42 ok?\n".split(" ")


def varied_text(size: int, seed: int = 7) -> str:
    """About ``size`` characters of words, numbers, punctuation, newlines and runs of spaces."""
    out: list[str] = []
    length = 0
    for i in itertools.count():
        word = WORDS[(i * seed + i // 7) % len(WORDS)] + ("  " if i % 13 == 0 else " ")
        out.append(word)
        length += len(word)
        if length >= size:
            return "".join(out)
    raise AssertionError("unreachable")


class LongStreamUpstream:
    def __init__(self, text: str, default_bytes: int, piece: int = 1000) -> None:
        self.text = text
        self.default_bytes = default_bytes
        self.piece = piece
        self.written: list[int] = []  # bytes each stream got out so far, in arrival order
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sent_text(self, size: int) -> str:
        """The text an answer of ``size`` bytes of events carries."""
        return "".join(self._pieces(size))

    def _pieces(self, size: int) -> list[str]:
        pieces: list[str] = []
        total = 0
        for i in itertools.count():
            start = (i * self.piece) % len(self.text)
            piece = (self.text + self.text)[start : start + self.piece]
            pieces.append(piece)
            total += len(self._event(piece))
            if total >= size:
                return pieces
        raise AssertionError("unreachable")

    @staticmethod
    def _event(content: str, finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-long",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": content} if content else {},
                    "finish_reason": finish,
                }
            ],
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = orjson.loads(await reader.readexactly(length))
            size = body.get("max_tokens") or self.default_bytes
            slot = len(self.written)
            self.written.append(0)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )
            for piece in self._pieces(size) if size < 2**25 else self._endless():
                event = self._event(piece)
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                await writer.drain()  # waits while the reader does not read
                self.written[slot] += len(event)
            for last in (self._event("", "stop"), b"data: [DONE]\n\n"):
                writer.write(f"{len(last):x}\r\n".encode() + last + b"\r\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _endless(self) -> itertools.cycle[str]:
        return itertools.cycle(self._pieces(len(self.text)))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def __enter__(self) -> LongStreamUpstream:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="long-upstream")
        self._thread.daemon = True
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=5)
        return self

    def __exit__(self, *exc: object) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(Exception):
            for task in asyncio.all_tasks(loop):
                loop.call_soon_threadsafe(task.cancel)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=2)
