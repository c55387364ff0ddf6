"""A serving process after start-up: draining on SIGTERM, reloading its config on SIGHUP.

uvicorn owns SIGTERM: it closes the listener, waits for the requests in flight (at most
``server.shutdown_timeout`` seconds, then cancels them), and runs the app's shutdown, which
writes the ledger. ``Lifecycle`` puts one step in front of that: readiness turns 503 the
moment the signal arrives, and with ``server.drain_delay`` the process keeps serving that
long before uvicorn starts closing — time for load balancers to see the 503 and stop sending.
A second SIGTERM goes straight through.

SIGHUP re-reads the config file in place (see ``gateway.reload``), when nothing else in the
process handles SIGHUP. Under ``serve --workers N`` the uvicorn supervisor takes SIGHUP
itself and replaces the workers one by one, each reading the file as it starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from gateway.reload import ConfigReloader, ReloadResult
from gateway.server.readiness import Readiness

log = logging.getLogger("gateway.lifecycle")

SignalHandler = Callable[[int, FrameType | None], object]
# Set by ``llm-gateway serve --workers N`` (N > 1) for its workers: the supervisor's pid.
SUPERVISOR_ENV = "GATEWAY_SUPERVISOR_PID"


class Lifecycle:
    """Installs the process's SIGTERM and SIGHUP handling for one app (main thread only)."""

    def __init__(
        self, readiness: Readiness, reloader: ConfigReloader, *, drain_delay: float = 0.0
    ) -> None:
        self.readiness = readiness
        self.reloader = reloader
        self.drain_delay = drain_delay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_term: SignalHandler | None = None
        self._hup = False
        self._reloads: set[asyncio.Task[None]] = set()

    def install(self) -> None:
        """Take over SIGTERM (passing it on) and SIGHUP (if unhandled); a no-op off the main
        thread, where signals cannot be handled (an app served from a test thread)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)
        if callable(previous):  # uvicorn's handler; without one nothing drains anyway
            self._previous_term = previous
            signal.signal(signal.SIGTERM, self._on_term)
        if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
            self._loop.add_signal_handler(signal.SIGHUP, self._on_hup)
            self._hup = True

    def uninstall(self) -> None:
        if self._hup and self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            self._hup = False
        if self._previous_term is not None and signal.getsignal(signal.SIGTERM) == self._on_term:
            signal.signal(signal.SIGTERM, self._previous_term)
        self._previous_term = None

    def _on_term(self, sig: int, frame: FrameType | None) -> None:
        previous = self._previous_term
        assert previous is not None and self._loop is not None
        first = not self.readiness.draining
        self.readiness.draining = True
        if not first or self.drain_delay <= 0:
            previous(sig, frame)
            return
        log.warning(
            "SIGTERM: draining; /health/ready answers 503, requests are still served for "
            "%gs (server.drain_delay), then the listener closes",
            self.drain_delay,
        )
        # A signal handler runs between two bytecodes of the loop's thread: schedule safely.
        self._loop.call_soon_threadsafe(
            self._loop.call_later, self.drain_delay, previous, sig, frame
        )

    def _on_hup(self) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._reload())
        self._reloads.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        log_reload(await self.reloader.reload(), "SIGHUP")


def log_reload(result: ReloadResult, trigger: str) -> None:
    """One line: what a reload applied, or why it was rejected."""
    if result.applied:
        log.warning("%s: %s", trigger, result.summary())
    else:
        log.error("%s: %s", trigger, result.summary())


def supervisor_pid() -> int | None:
    """The pid of the ``serve --workers N`` supervisor this worker runs under, if any."""
    value = os.environ.get(SUPERVISOR_ENV, "")
    if value.isdigit() and int(value) == os.getppid():
        return int(value)
    return None
