"""``LedgerWriter``: records leave the request path at once and reach the database in batches.

``submit`` only appends to a bounded in-memory queue. A background task takes batches (up to
``batch_size`` records, or whatever arrived within ``flush_interval``) and writes each in one
transaction, retrying with backoff while the database is slow or down. When the queue is
full, records spill into a bounded overflow buffer; past that they are counted as dropped and
logged as errors. A batch the database refuses for its content (a data or integrity error,
never a connection error) is split until the bad record stands alone; that record is stored
once more in its salvaged form (``gateway.ledger.storable``) and, refused again, set aside
(counted as rejected and logged with its request id) — the records behind it never wait.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.records import SpendRecord
from gateway.ledger.storable import salvaged
from gateway.ledger.store import write_batch

log = logging.getLogger("gateway.ledger")

DROP_LOG_INTERVAL = 5.0  # seconds between two "dropped" error lines while drops go on


def describe(exc: BaseException) -> str:
    """A one-line account of a database error (SQLAlchemy's own are several lines)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# SQLSTATE classes of errors about the data sent: 22 data exception (a NUL in text, a
# number out of range), 23 integrity constraint violation.
_CONTENT_SQLSTATE_CLASSES = ("22", "23")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE code the database gave for ``exc`` (PostgreSQL drivers), if any."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def is_permanent(exc: BaseException) -> bool:
    """A failure the same records would meet again: a value the database (or the driver,
    or SQLAlchemy binding it) refuses. Anything else — connection refused, locked, timeout,
    missing table — may pass, so it is retried."""
    if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
        return True
    code = sqlstate(exc)
    if code is not None:
        return code.startswith(_CONTENT_SQLSTATE_CLASSES)
    if isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError):
        return True
    return isinstance(exc, TypeError | ValueError | OverflowError)


class LedgerWriter:
    """Writes ``SpendRecord``\\ s off the request path: ``submit`` is O(1) and never blocks or
    raises; ``aclose`` writes what is still held. Counters and the last error are properties,
    for metrics and health checks."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = 100,
        flush_interval: float = 0.2,
        queue_size: int = 10_000,
        overflow_size: int | None = None,
        retry_initial: float = 0.1,
        retry_max: float = 10.0,
        write_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
    ) -> None:
        if batch_size < 1 or queue_size < 1:
            raise ValueError("batch_size and queue_size must be at least 1")
        self.engine = engine
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.overflow_size = queue_size if overflow_size is None else overflow_size
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.write_timeout = write_timeout
        self.shutdown_timeout = shutdown_timeout

        self._queue: deque[SpendRecord] = deque()
        self._overflow: deque[SpendRecord] = deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._flush_now = False
        self._closing = False
        self._closed = False
        self._accepted = 0  # records taken in by submit
        self._settled = 0  # of those: written, found already written, rejected or abandoned
        self._drops_unlogged = 0
        self._drop_logged_at = -DROP_LOG_INTERVAL
        self._progress_at = time.monotonic()  # last write, or when the backlog began

        self.written = 0
        self.duplicates = 0
        self.dropped = 0
        self.rejected = 0  # refused by the database even in salvaged form: not stored
        self.salvaged = 0  # stored in salvaged form (tags replaced by a note)
        self.failing = False
        self.last_error: str | None = None
        self.last_write_seconds: float | None = None

    # -- state, for metrics and health --------------------------------------------------
    @property
    def backlog(self) -> int:
        """Records held and not yet written: queued, spilled over, or in the batch in hand."""
        return self._accepted - self._settled

    @property
    def stalled_seconds(self) -> float:
        """How long records have been held without any being written (0 with none held):
        how stuck the writer is, for readiness."""
        if not self.backlog:
            return 0.0
        return time.monotonic() - self._progress_at

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the background task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("the ledger writer is already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._task = self._loop.create_task(self._run(), name="ledger-writer")
        self._task.add_done_callback(self._ended)

    def submit(self, record: SpendRecord) -> None:
        """Hand over a record to be written; returns at once, whatever the database does."""
        if self._closed:
            self._drop(1, "the ledger writer is closed")
            return
        if len(self._queue) < self.queue_size:
            self._queue.append(record)
        elif len(self._overflow) < self.overflow_size:
            self._overflow.append(record)
        else:
            self._drop(1, f"queue ({self.queue_size}) and overflow ({self.overflow_size}) full")
            return
        if not self.backlog:
            self._progress_at = time.monotonic()
        self._accepted += 1
        if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
            self._signal()

    async def flush(self) -> None:
        """Wait until every record submitted so far is written (or rejected); while the
        database is down that is until it is back (bound it with ``asyncio.timeout``)."""
        if self._task is None:
            raise RuntimeError("the ledger writer is not started")
        target = self._accepted
        while self._settled < target:
            if self._task.done():
                raise RuntimeError("the ledger writer has stopped")
            self._flush_now = True
            self._progress.clear()
            self._wake.set()
            await self._progress.wait()

    async def aclose(self) -> None:
        """Write everything held, within ``shutdown_timeout`` seconds; what cannot be written
        by then is counted as dropped and logged. Later submits are dropped. Idempotent."""
        timeout = self.shutdown_timeout
        self._closed = True
        self._closing = True
        task = self._task
        reason = "the ledger writer was closed without being started"
        if task is not None and not task.done():
            reason = "the writer task failed"
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
                reason = f"not written within the {timeout:g}s shutdown timeout"
            except Exception:
                pass  # logged by _ended
        elif task is not None:
            reason = "the writer task had stopped"
        if self.backlog:
            self._abandon(self.backlog, f"{reason} (last error: {self.last_error or 'none'})")

    # -- the background task ------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._flush_now = False
                self._progress.set()
                if self._closing:
                    return
                await self._wait(None)
                continue
            if not self._batch_ready():
                await self._wait(self.flush_interval)
            await self._write_until_done(self._take())
            self._progress.set()

    def _batch_ready(self) -> bool:
        return len(self._queue) >= self.batch_size or self._flush_now or self._closing

    async def _wait(self, seconds: float | None) -> None:
        """Sleep until signalled (a full batch, a flush, close) or ``seconds`` pass."""
        self._wake.clear()
        if self._batch_ready() and self._queue:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _take(self) -> list[SpendRecord]:
        batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
        while self._overflow and len(self._queue) < self.queue_size:
            self._queue.append(self._overflow.popleft())
        return batch

    async def _write_until_done(
        self,
        batch: Sequence[SpendRecord],
        refused: Callable[[Sequence[SpendRecord], Exception], Awaitable[None]] | None = None,
    ) -> None:
        """Write ``batch``, retrying while the database is away; a batch it refuses for its
        content goes to ``refused`` (default: split it and salvage the bad records)."""
        delay = self.retry_initial
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.write_timeout):
                    new = await write_batch(self.engine, batch)
            except Exception as exc:
                if is_permanent(exc):
                    await (refused or self._isolate)(batch, exc)
                    return
                failures += 1
                self.failing = True
                self.last_error = describe(exc)
                level = logging.WARNING if failures == 1 or failures % 10 == 0 else logging.DEBUG
                log.log(
                    level,
                    "ledger: writing %d records failed (%s, try %d); retrying in %.1fs, "
                    "%d records held",
                    len(batch),
                    self.last_error,
                    failures,
                    delay,
                    self.backlog,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            self.last_write_seconds = time.perf_counter() - started
            if self.failing:
                log.warning("ledger: writing again after %d failed tries", failures)
            self.failing = False
            self.written += new
            self.duplicates += len(batch) - new
            self._settled += len(batch)
            self._progress_at = time.monotonic()
            return

    async def _isolate(self, batch: Sequence[SpendRecord], exc: Exception) -> None:
        """Split a batch the database refused until the bad records stand alone; store each
        of those in its salvaged form, or set it aside."""
        if len(batch) == 1:
            await self._salvage(batch[0], exc)
            return
        middle = len(batch) // 2
        await self._write_until_done(batch[:middle])
        await self._write_until_done(batch[middle:])

    async def _salvage(self, record: SpendRecord, exc: Exception) -> None:
        """Store a record the database refused in its salvaged form (retried like any batch
        while the database is away); refused again, it is rejected, with a log line."""
        reason = describe(exc)
        rejected = self.rejected
        await self._write_until_done([salvaged(record, reason)], refused=self._reject)
        if self.rejected == rejected:
            self.salvaged += 1
            log.warning(
                "ledger: spend record %s stored without its tags, which the database refused "
                "(%d salvaged in all): %s",
                record.request_id,
                self.salvaged,
                reason,
            )

    async def _reject(self, batch: Sequence[SpendRecord], exc: Exception) -> None:
        """Set aside records the database refuses even salvaged: counted and logged."""
        self.rejected += len(batch)
        self._settled += len(batch)
        self._progress_at = time.monotonic()
        self.failing = False  # the database answered
        self.last_error = describe(exc)
        for record in batch:
            log.error(
                "ledger: spend record %s refused by the database and not stored (%d rejected "
                "in all): %s",
                record.request_id,
                self.rejected,
                self.last_error,
            )

    # -- losses, never silent -----------------------------------------------------------
    def _drop(self, count: int, reason: str) -> None:
        self.dropped += count
        self._drops_unlogged += count
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_INTERVAL:
            log.error(
                "ledger: dropped %d spend records (%d in all): %s; database: %s",
                self._drops_unlogged,
                self.dropped,
                reason,
                self.last_error or "no error",
            )
            self._drops_unlogged = 0
            self._drop_logged_at = now

    def _abandon(self, count: int, reason: str) -> None:
        """Records accepted earlier that will never be written."""
        self._queue.clear()
        self._overflow.clear()
        self._settled += count
        self.dropped += count
        log.error("ledger: %d spend records lost: %s", count, reason)

    def _signal(self) -> None:
        if self._loop is None or threading.get_ident() == self._thread:
            self._wake.set()
        else:  # submitted from another thread: wake the writer on its own loop
            self._loop.call_soon_threadsafe(self._wake.set)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("ledger: the writer task failed", exc_info=task.exception())
