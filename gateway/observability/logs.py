"""Log lines: JSON (one object per line) or text, and the access log, one line per request.

The access log (logger ``gateway.access``) says who called (key id and team, never the key),
what was asked and who answered, the status, timings, attempts and cost. Prompts, answers,
error messages (which may quote an upstream's view of the request) and the request's tags
are left out unless the caller's key or team carries the metadata ``log_content: true``.
Each line is built as one dict on the request path; a thread serializes it (once, with
orjson) and writes lines in batches, so a slow standard error never holds up the event loop.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import orjson

from gateway.wire import JSON

if TYPE_CHECKING:
    from gateway.call import Call
    from gateway.config import LoggingConfig
    from gateway.errors import GatewayError

ACCESS_LOGGER = "gateway.access"
CLOSE_SECONDS = 5.0  # at exit, the longest wait for queued lines to be written


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, then the message, or the
    access log's fields."""

    def format(self, record: logging.LogRecord) -> str:
        head: JSON = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields: JSON | None = getattr(record, "access", None)
        if fields is not None:
            return orjson.dumps({**head, **fields}, default=str).decode()
        head["message"] = record.getMessage()
        if record.exc_info:
            head["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(head, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time level logger message``; access lines as ``key=value`` pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields: JSON | None = getattr(record, "access", None)
        if fields is not None:
            record.message = " ".join(
                f"{k}={_text(v)}" for k, v in fields.items() if v is not None and k != "event"
            )
        return super().formatMessage(record)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return orjson.dumps(value, default=str).decode()


class BackgroundHandler(logging.Handler):
    """Access log lines are kept in a list that a thread formats and writes to ``stream`` in
    batches, every ``interval`` seconds: a request only appends (no lock, no thread wake-up),
    and a stream that blocks (a full pipe to a log shipper) delays them, not requests. Past
    ``capacity`` lines waiting, they are dropped and counted (``dropped``). Other records are
    few and may be a process's last words (uvicorn ends a worker by re-raising SIGTERM, which
    runs no exit handlers): they are written at once, after the access lines before them.
    The app flushes the access lines when it shuts down (``flush_handlers``)."""

    def __init__(
        self, stream: IO[str] | None = None, capacity: int = 10_000, interval: float = 0.05
    ) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.capacity = capacity
        self.interval = interval
        self.pending: deque[logging.LogRecord] = deque()
        self.dropped = 0
        self._writing = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.pending) >= self.capacity:
            self.dropped += 1
            return
        self.pending.append(record)
        if not hasattr(record, "access"):
            self._write_pending()

    def flush(self) -> None:
        """Write what waits now (giving up after ``CLOSE_SECONDS`` if the stream is stuck)."""
        self._write_pending(timeout=CLOSE_SECONDS)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(CLOSE_SECONDS)
        super().close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write_pending()
        self._write_pending()

    def _write_pending(self, timeout: float = -1) -> None:
        if not self._writing.acquire(timeout=timeout):
            return
        try:
            pending = self.pending
            lines = []
            while pending:
                record = pending.popleft()
                try:
                    lines.append(self.format(record))
                except Exception:
                    self.handleError(record)
            if not lines:
                return
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # closed or broken: nowhere left to say so
                self.dropped += len(lines)
        finally:
            self._writing.release()


def flush_handlers(name: str = ACCESS_LOGGER) -> None:
    """Write what the handlers of logger ``name`` (and of its ancestors it propagates to)
    hold: the last access lines, before the process ends."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        for handler in logger.handlers:
            handler.flush()
        logger = logger.parent if logger.propagate else None


class AccessLog:
    """Engine observer: one ``gateway.access`` line per finished request."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

    def observe(self, info: Call, error: GatewayError | None) -> None:
        logger = self.logger
        if logger.isEnabledFor(logging.INFO):
            # A record made here rather than by logger.info(), which would walk the stack
            # for the caller's file and line (a third of the cost, and useless here).
            record = logging.LogRecord(logger.name, logging.INFO, "", 0, "request", None, None)
            record.access = access_fields(info, error)
            logger.handle(record)


def access_fields(info: Call, error: GatewayError | None) -> JSON:
    """The access log's view of one finished call: facts only, no content (see module)."""
    usage = info.usage or {}
    cost = info.cost
    ttft = info.ttft_seconds
    fields: JSON = {
        "event": "request",
        "request_id": info.request_id,
        "client_request_id": info.client_request_id,
        "key_id": info.key_id,
        "team": info.team,
        "operation": info.operation,
        "surface": info.surface,
        "stream": info.stream,
        "model": info.model,
        "upstream_model": info.upstream_model,
        "provider": info.provider,
        "deployment": info.deployment,
        "status": 200 if error is None else error.status,
        "error_type": None if error is None else (error.code or error.type),
        "latency_ms": round(info.elapsed_seconds() * 1000.0, 2),
        "ttft_ms": None if ttft is None else round(ttft * 1000.0, 2),
        "attempts": info.attempts,
        "fallback_used": info.fallback_used,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cost_usd": None if cost is None or cost.total is None else float(cost.total),
        "usage_estimated": cost is not None and cost.estimated,
    }
    if info.keeps_content:
        fields["end_user"] = info.end_user
        fields["tags"] = info.tags
        fields["error_message"] = None if error is None else error.message
        fields["content"] = info.content
    return fields


def log_config(config: LoggingConfig) -> JSON:
    """A ``logging.config.dictConfig`` mapping for the gateway's and uvicorn's loggers (uvicorn
    applies it in every worker process)."""
    level = config.level.upper()
    formatter = "json" if config.format == "json" else "text"
    handler = {
        "()": "gateway.observability.logs.BackgroundHandler",
        "formatter": formatter,
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "gateway.observability.logs.JsonFormatter"},
            "text": {"()": "gateway.observability.logs.TextFormatter"},
        },
        "handlers": {"default": handler},
        "loggers": {
            "gateway": {"handlers": ["default"], "level": level, "propagate": False},
            ACCESS_LOGGER: {
                "handlers": ["default"],
                "level": "INFO" if config.access_log else "WARNING",
                "propagate": False,
            },
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["default"], "level": "INFO", "propagate": False},
        },
    }
