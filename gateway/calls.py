"""Every call ends exactly once: the calls still open, the bookkeeping left to do, draining.

A call is opened when its work starts and ended once, however it finishes — answered, failed,
cancelled because the caller went away, or cut at shutdown: ``end`` hands it to the engine's
``on_end`` (ledger record, limits settled, observers told) exactly one time. Bookkeeping that
can wait until the answer has gone out (settling limits, estimating a stream's usage) runs as
background tasks that ``drain`` waits for before the process stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from gateway.call import Call
from gateway.errors import ClientDisconnectedError, GatewayError, InternalError

T = TypeVar("T")
log = logging.getLogger("gateway.calls")


class OpenStream(Protocol):
    """A stream handed to a caller and not yet accounted for (``gateway.streams``)."""

    async def aclose(self) -> None: ...


def cancelled() -> ClientDisconnectedError:
    """How a call cancelled midway is recorded (nginx's 499)."""
    return ClientDisconnectedError(
        "the call was cancelled before it completed (the caller went away or the gateway shut down)"
    )


class Calls:
    """The calls of one engine that have started and not ended, and its background tasks."""

    def __init__(self, on_end: Callable[[Call, GatewayError | None], None]) -> None:
        self._on_end = on_end
        self._open: set[str] = set()  # request ids not yet ended
        self._all_ended = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.streams: set[OpenStream] = set()  # handed out, not yet accounted for

    async def run(self, call: Call, work: Awaitable[T]) -> T:
        """Run one call's work; if it fails or is cancelled, the call ends with that error.
        On success the work ends it, once it knows the usage.

        Whatever is raised ends the call: a ``GatewayError`` as itself, a cancellation as
        ``call.cancelled_by()`` says (the caller left: 499, the server stopped: 503), and any
        other exception — a fault of the gateway's own — is logged and becomes the 500
        ``InternalError`` that the caller then gets in its place."""
        self._open.add(call.request_id)
        self._all_ended.clear()
        try:
            return await work
        except GatewayError as exc:
            self.end(call, exc)
            raise
        except asyncio.CancelledError:
            self.end(call, call.cancelled_by() if call.cancelled_by else cancelled())
            raise
        except Exception as exc:
            log.exception("unexpected error in request %s", call.request_id)
            error = InternalError(call.request_id)
            self.end(call, error)
            raise error from exc

    @property
    def open(self) -> frozenset[str]:
        """The request ids of the calls started and not yet ended."""
        return frozenset(self._open)

    def end(self, call: Call, error: GatewayError | None = None) -> None:
        """The call is over: record and settle it (the first time only)."""
        self._open.discard(call.request_id)
        if not self._open:
            self._all_ended.set()
        if call.ended:
            return
        call.ended = True
        try:
            self._on_end(call, error)
        except Exception:  # the call has ended; a failing step must not fail the answer
            log.exception("ending request %s failed", call.request_id)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run bookkeeping after the answer has gone out; ``drain`` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, seconds: float) -> None:
        """Let calls still ending account for themselves (within ``seconds``) and finish the
        bookkeeping. Streams their readers abandoned are closed and billed."""
        for stream in list(self.streams):
            await stream.aclose()
        if self._open:  # cancelled calls record themselves as they unwind
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._all_ended.wait()
        if self._open:
            log.error("%d calls ended without a ledger record at shutdown", len(self._open))
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
