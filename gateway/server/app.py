"""The FastAPI app: one Engine, its routes wired together, errors as OpenAI JSON.

This module only assembles: the route modules (``openai``, ``native``, ``spend``, ``admin``,
``operations``, the dashboard) register themselves on the app, and the shared route kit lives
in ``gateway.server.http``.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.config import GatewayConfig, resolve_config
from gateway.engine import Engine
from gateway.errors import GatewayError, InvalidRequestError
from gateway.observability import instrument
from gateway.reload import ConfigReloader
from gateway.server.admin import add_admin_routes
from gateway.server.alerts import BudgetAlerts
from gateway.server.asgi import CALLER, Caller, GatewayApp
from gateway.server.batches import add_batch_routes
from gateway.server.completions import add_completions_routes
from gateway.server.governance import add_governance_routes, retention_task
from gateway.server.http import Gatekeeper, cut_response, error_response, internal_error
from gateway.server.lifecycle import Lifecycle
from gateway.server.mistral_models import add_mistral_model_routes
from gateway.server.native import add_native_routes
from gateway.server.openai import add_openai_routes
from gateway.server.operations import add_operations_routes
from gateway.server.readiness import Readiness
from gateway.server.responses import add_responses_routes
from gateway.server.route_map import unknown_route
from gateway.server.spend import add_spend_routes

log = logging.getLogger("gateway.server")

# Young-generation threshold while serving: a request allocates a few thousand container
# objects, so the default of 700 ran a collection several times per request.
GC_THRESHOLDS = (20_000, 50, 100)


def settle_heap() -> None:
    """Take what start-up built (modules, config, price catalog, pools) out of the cyclic
    collector's reach, and collect young objects less often. Under load the collector spent
    ~15 % of the worker's time re-scanning that long-lived heap (py-spy --native)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def config_source(
    config: GatewayConfig | str | dict[str, Any] | None, engine: Engine | None
) -> str | None:
    """The file a reload re-reads: the one the app was built from, if it was a file."""
    if isinstance(config, str | os.PathLike):
        return os.fspath(config)
    if config is None and engine is None:
        return os.environ.get("GATEWAY_CONFIG") or None
    return None


def serve_app() -> FastAPI:
    """The app as ``llm-gateway serve`` runs it in each worker (config from the environment),
    with the collector tuned for a long-running server process."""
    return create_app(settle_gc=True)


def create_app(
    config: GatewayConfig | str | dict[str, Any] | None = None,
    *,
    engine: Engine | None = None,
    settle_gc: bool = False,
) -> FastAPI:
    """The proxy app. ``engine`` may be shared (tests, library); otherwise one is built."""
    cfg = engine.config if engine is not None else resolve_config(config)
    owned = engine is None
    eng = engine or Engine(cfg)
    gate = Gatekeeper(cfg, eng.auth)
    readiness = Readiness(eng)
    reloader = ConfigReloader(eng, config_source(config, engine))
    lifecycle = Lifecycle(readiness, reloader, drain_delay=cfg.server.drain_delay)
    observability = instrument(eng)
    batch_poller = None
    alerts = BudgetAlerts(eng, cfg.alerts)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await eng.start()
        retention = retention_task(eng)
        lifecycle.install()
        await observability.start()
        if batch_poller is not None:
            batch_poller.start()
        alerts.start()
        if settle_gc:
            settle_heap()
        yield
        readiness.draining = True
        if retention is not None:
            await retention.aclose()
        await alerts.aclose()
        lifecycle.uninstall()
        if batch_poller is not None:
            await batch_poller.aclose()
        if owned:
            await eng.aclose()
            await reloader.aclose()
        await observability.aclose()

    app = GatewayApp(
        title="llm-gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.engine = eng
    app.state.observability = observability
    app.state.alerts = alerts
    app.closing = lambda: readiness.draining  # answers ask clients to close once draining
    app.internal_error = internal_error
    app.cut_response = cut_response
    app.trust_proxies(cfg.server.trusted_proxies)
    if observability.middleware is not None:
        app.add_middleware(observability.middleware)

    # The handlers read and validate the body themselves: the hot ones are served without the
    # framework (see gateway/server/asgi.py), the others as plain Starlette routes.
    add_openai_routes(app, eng, gate)
    add_completions_routes(app, eng, gate)
    add_responses_routes(app, eng, gate)
    add_spend_routes(app, eng, gate)
    add_admin_routes(app, eng, gate)
    add_governance_routes(app, eng, gate)
    add_native_routes(app, eng, gate)
    batch_poller = add_batch_routes(app, eng, gate)
    add_mistral_model_routes(app, eng, gate)
    if cfg.ui.enabled:
        from gateway.ui import add_ui_routes  # the dashboard at /ui (Jinja2, loaded only then)

        add_ui_routes(app, eng)
    add_operations_routes(app, eng, gate, readiness, reloader, observability)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            err = unknown_route(app, request.method, request.url.path)
        else:
            err = GatewayError(
                str(exc.detail), status=exc.status_code, type="invalid_request_error"
            )
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidRequestError(f"invalid request: {exc.errors()[:3]}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        caller = request.scope.get(CALLER)
        return internal_error(caller.call if isinstance(caller, Caller) else None)

    return app
