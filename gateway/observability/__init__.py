"""Metrics, access log and traces, attached to one Engine as observers of finished calls.

The engine knows nothing of Prometheus or OpenTelemetry: it calls ``engine.observers`` once per
call as it ends (``Engine.observe``). What is switched off in the config adds no observer, and
tracing's modules are not even imported unless ``tracing.enabled`` is true.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from gateway.errors import ConfigError, GatewayError, PermissionDeniedError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from gateway.auth import Principal
    from gateway.config import GatewayConfig
    from gateway.engine import Engine
    from gateway.observability.metrics import MetricsEndpoint
    from gateway.observability.tracing import Tracing

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Observability:
    """What ``instrument`` attached to one gateway; started and stopped with the app."""

    def __init__(self) -> None:
        self.metrics: MetricsEndpoint | None = None
        self.tracing: Tracing | None = None

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


def instrument(
    app: Starlette,
    engine: Engine,
    authenticate: Callable[[Request], Awaitable[Principal]],
) -> Observability:
    """Attach what ``engine.config`` switches on: metrics (and ``GET /metrics``), the access
    log, traces. ``authenticate`` guards ``/metrics`` when ``metrics.require_auth`` is set."""
    config = engine.config
    attached = Observability()
    if config.metrics.enabled:
        from gateway.observability.metrics import MetricsEndpoint

        attached.metrics = MetricsEndpoint(engine)
        engine.observers.append(attached.metrics.metrics.observe)
        app.add_route(
            "/metrics",
            _metrics_route(attached.metrics, config, authenticate),
            methods=["GET"],
        )
    if config.logging.access_log:
        from gateway.observability.logs import AccessLog

        engine.observers.append(AccessLog().observe)
    if config.tracing.enabled:
        attached.tracing = _tracing(engine, config)
        engine.observers.append(attached.tracing.observe)
        from gateway.observability.tracing import TraceContextMiddleware

        app.add_middleware(TraceContextMiddleware)
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


def _metrics_route(
    endpoint: MetricsEndpoint,
    config: GatewayConfig,
    authenticate: Callable[[Request], Awaitable[Principal]],
) -> Callable[[Request], Awaitable[Response]]:
    from starlette.responses import Response

    async def metrics(request: Request) -> Response:
        if config.metrics.require_auth:
            try:
                principal = await authenticate(request)
                if not principal.admin:
                    raise PermissionDeniedError(
                        "/metrics needs the master key or an admin key (metrics.require_auth)",
                        code="admin_required",
                    )
            except GatewayError as exc:
                from gateway.server.app import error_response  # the app builds on this module

                return error_response(exc)
        endpoint.metrics.refresh()
        body = await asyncio.to_thread(endpoint.render)
        return Response(body, media_type=endpoint.content_type)

    return metrics


@contextmanager
def metrics_directory(config: GatewayConfig, workers: int) -> Iterator[None]:
    """For several workers: a fresh ``PROMETHEUS_MULTIPROC_DIR`` for this run (removed after),
    so ``/metrics`` adds up every worker's values. A directory set by the operator is used as
    it is (empty it between runs). Must run before any worker imports prometheus_client."""
    if workers <= 1 or not config.metrics.enabled or os.environ.get(MULTIPROC_ENV):
        yield
        return
    path = tempfile.mkdtemp(prefix="llm-gateway-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["Observability", "instrument", "metrics_directory"]
