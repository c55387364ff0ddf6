"""Shared machinery of the emulators: request recording and scripted faults."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse


@dataclass
class Recorded:
    """One request as the emulator received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    """A scripted answer for the next request: a status with a raw body, a delay, or a
    stream that is cut after ``cut_after`` events."""

    status: int = 500
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None  # stream: go silent after this many events …
    stall_seconds: float = 0.0  # … for this long


class EmulatorBase:
    """Keeps what was received and the faults queued for the next requests."""

    def __init__(self) -> None:
        self.url = ""  # set by the fixture that serves it
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()

    def fail_next(self, fault: Fault) -> None:
        self.faults.append(fault)

    def reset(self) -> None:
        self.requests.clear()
        self.faults.clear()

    async def record(self, request: Request) -> Recorded:
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw
        rec = Recorded(
            request.method,
            request.url.path,
            dict(request.query_params),
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        self.requests.append(rec)
        return rec

    async def take_fault(self) -> Fault | None:
        if not self.faults:
            return None
        fault = self.faults.popleft()
        if fault.delay:
            await asyncio.sleep(fault.delay)
        return fault


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json"
    )


def fault_response(fault: Fault) -> Response:
    return Response(
        fault.body, status_code=fault.status, headers=fault.headers, media_type=fault.content_type
    )


def sse_response(
    events: list[bytes], cut_after: int | None = None, fault: Fault | None = None
) -> StreamingResponse:
    """Stream pre-encoded SSE events; with ``cut_after`` the connection ends early, with a
    fault's ``stall_after`` the stream goes silent for ``stall_seconds`` mid-way."""
    if fault is not None and fault.cut_after is not None:
        cut_after = fault.cut_after

    async def body() -> AsyncIterator[bytes]:
        for i, event in enumerate(events):
            if cut_after is not None and i >= cut_after:
                return
            if fault is not None and fault.stall_after == i:
                await asyncio.sleep(fault.stall_seconds)
            yield event
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="text/event-stream")


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"
