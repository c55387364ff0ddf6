"""Metrics, access log and traces, attached to one Engine as observers of finished calls.

The engine knows nothing of Prometheus or OpenTelemetry: it calls ``engine.observers`` once per
call as it ends (``Engine.observe``). What is switched off in the config adds no observer, and
tracing's modules are not even imported unless ``tracing.enabled`` is true. The server serves
what is attached here (``GET /metrics``, the trace-context middleware).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError
from gateway.observability.multiprocess import metrics_directory

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.engine import Engine
    from gateway.observability.metrics import MetricsEndpoint
    from gateway.observability.tracing import Tracing


class Observability:
    """What ``instrument`` attached to one gateway; started and stopped with the app."""

    def __init__(self) -> None:
        self.metrics: MetricsEndpoint | None = None
        self.tracing: Tracing | None = None
        # ASGI middleware the app must add (the caller's trace context), if any.
        self.middleware: Any = None

    async def start(self) -> None:
        if self.metrics is not None:
            await self.metrics.start()

    async def aclose(self) -> None:
        if self.metrics is not None:
            await self.metrics.aclose()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        from gateway.observability.logs import flush_handlers

        flush_handlers()  # the last access lines: a worker may end without exit handlers


def instrument(engine: Engine) -> Observability:
    """Attach what ``engine.config`` switches on: metrics, the access log, traces."""
    config = engine.config
    attached = Observability()
    if config.metrics.enabled:
        from gateway.observability.metrics import MetricsEndpoint

        attached.metrics = MetricsEndpoint(engine)
        engine.observers.append(attached.metrics.metrics.observe)
    if config.logging.access_log:
        from gateway.observability.logs import AccessLog

        engine.observers.append(AccessLog().observe)
    if config.tracing.enabled:
        attached.tracing = _tracing(engine, config)
        engine.observers.append(attached.tracing.observe)
        from gateway.observability.tracing import TraceContextMiddleware

        attached.middleware = TraceContextMiddleware
    return attached


def _tracing(engine: Engine, config: GatewayConfig) -> Tracing:
    try:
        from gateway.observability.tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            f"tracing.enabled needs OpenTelemetry ({exc.name} is missing): "
            "pip install 'llm-gateway[otel]', or set tracing.enabled: false"
        ) from None
    return Tracing(engine, config.tracing)


__all__ = ["Observability", "instrument", "metrics_directory"]
