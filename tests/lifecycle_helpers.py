"""For shutdown, draining and reload tests: an upstream that streams slowly and says who it
is, a client that reads a whole answer and reports what it saw, a gateway process to signal,
and its ledger read back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.config import LedgerConfig
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import SpendRecord
from tests.emulators.common import sse

MODEL = "gpt-4o-2024-08-06"
HELLO = [{"role": "user", "content": "hello"}]


class PacedUpstream:
    """An OpenAI-style upstream named ``name``: a stream of ``pieces`` content chunks, one
    every ``pace`` seconds (its first names the upstream), then usage and ``[DONE]``; a plain
    answer after ``pace`` seconds. Counts the calls that arrived and the ones it finished."""

    def __init__(self, name: str, *, pieces: int = 10, pace: float = 0.1) -> None:
        self.name = name
        self.pieces = pieces
        self.pace = pace
        self.arrived = 0
        self.finished = 0
        self.url = ""
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    def text(self) -> str:
        return f"[{self.name}]" + " tick" * (self.pieces - 1)

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.arrived += 1
        usage = {
            "prompt_tokens": 1,
            "completion_tokens": self.pieces,
            "total_tokens": 1 + self.pieces,
        }
        if not body.get("stream"):
            await asyncio.sleep(self.pace)
            self.finished += 1
            return JSONResponse(
                {
                    "id": "chatcmpl-paced",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.text()},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        include = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse(
                {
                    "id": "chatcmpl-paced",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        async def stream() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": f"[{self.name}]"})
            for _ in range(self.pieces - 1):
                await asyncio.sleep(self.pace)
                yield chunk({"content": " tick"})
            yield chunk({}, "stop")
            if include:
                yield sse(
                    {
                        "id": "chatcmpl-paced",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": MODEL,
                        "choices": [],
                        "usage": usage,
                    }
                )
            yield b"data: [DONE]\n\n"
            self.finished += 1

        return StreamingResponse(stream(), media_type="text/event-stream")


@dataclass
class Seen:
    """What one client saw of one call."""

    stream: bool
    request_id: str | None = None
    status: int | None = None
    text: str = ""
    complete: bool = False
    cut: bool = False  # a stream that ended with an error event, not [DONE]
    error: str | None = None
    cost: str | None = None
    closing: bool = False  # the answer asked the client to close its connection


async def chat(
    client: httpx.AsyncClient,
    url: str,
    *,
    stream: bool,
    model: str = "gpt-4o",
    headers: dict[str, str] | None = None,
) -> Seen:
    """One chat completion against the gateway at ``url`` (its root), read to the end."""
    seen = Seen(stream)
    body = {"model": model, "messages": HELLO, "stream": stream}
    try:
        async with client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=headers
        ) as resp:
            seen.request_id = resp.headers.get("x-request-id")
            seen.status = resp.status_code
            seen.cost = resp.headers.get("x-gateway-cost")
            seen.closing = resp.headers.get("connection") == "close"
            raw = (await resp.aread()).decode()
    except httpx.TransportError as exc:
        seen.error = repr(exc)
        return seen
    if not stream:
        seen.text = raw
        seen.complete = seen.status == 200
        return seen
    seen.text = raw
    seen.complete = raw.rstrip().endswith("data: [DONE]")
    seen.cut = not seen.complete and '"error"' in raw
    return seen


async def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def ledger_records(url: str) -> list[SpendRecord]:
    """Every record of the last hour in the ledger at ``url``, read with a fresh engine."""
    ledger = Ledger(LedgerConfig(url=url, migrate=False))
    try:
        now = datetime.now(UTC)
        page = await ledger.spend_records(now - timedelta(hours=1), now, limit=1000)
        return page.records
    finally:
        await ledger.engine.dispose()


@dataclass
class Served:
    """A gateway process and where it answers (its root URL)."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path


@contextmanager
def running(
    command: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """A gateway process, live; stopped at the end if the test left it running.

    It leads its own process group: a ``--workers`` supervisor killed outright would leave its
    workers running, so what SIGTERM does not end in time is killed as a group."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean, **(env or {})},
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_live(process, url, log)
        yield Served(process, url, log)
    finally:
        if process.poll() is None:
            process.terminate()  # a supervisor stops its workers, then itself
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Not reaped yet, so the group id is still this process's own.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def wait_until_live(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"llm-gateway serve exited early:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"llm-gateway serve did not start:\n{log.read_text()}")
