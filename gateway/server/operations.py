"""Routes for whoever runs the gateway: ``/health/live``, ``/health/ready``, ``/metrics`` and
``/admin/reload``.

Probes come without keys, so ``/health/ready`` tells anyone only whether the process is
ready and which kinds of check fail; the master key also gets each check's details (model
names, deployment counts, the ledger writer's backlog and last error). Telling the master key
apart is a constant-time comparison, never a key-store lookup: a probe storm stays cheap.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import signal

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from gateway.auth import Authenticator
from gateway.engine import Engine
from gateway.errors import AuthenticationError, GatewayError, PermissionDeniedError
from gateway.observability import Observability
from gateway.reload import ConfigReloader
from gateway.server.http import JSON_TYPE, Gatekeeper, error_response
from gateway.server.lifecycle import log_reload, supervisor_pid
from gateway.server.readiness import Readiness

LIVE = b'{"status":"ok"}'


def presents_master_key(request: Request, auth: Authenticator) -> bool:
    """Whether the request carries the configured master key (False when none is set)."""
    if auth.master_key is None:
        return False
    header = request.headers.get("authorization") or ""
    scheme, _, value = header.partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else request.headers.get("api-key")
    if not token:
        return False
    return hmac.compare_digest(token.encode(), auth.master_key)


def add_operations_routes(
    app: FastAPI,
    engine: Engine,
    gate: Gatekeeper,
    readiness: Readiness,
    reloader: ConfigReloader,
    observability: Observability,
) -> None:
    """Register the health, metrics and reload routes."""

    async def live(request: Request) -> Response:
        return Response(LIVE, media_type=JSON_TYPE)

    async def ready(request: Request) -> Response:
        report = await readiness.report()
        body = (
            report.detailed_body()
            if presents_master_key(request, engine.auth)
            else report.public_body()
        )
        return Response(
            orjson.dumps(body),
            status_code=200 if report.ready else 503,
            media_type=JSON_TYPE,
            headers={"cache-control": "no-store"},
        )

    async def reload(request: Request) -> Response:
        try:
            if engine.auth.master_key is None:
                raise PermissionDeniedError(
                    "reloading over HTTP needs a master key (auth.master_key); without one, "
                    "send SIGHUP to the gateway process",
                    code="master_key_required",
                )
            if not presents_master_key(request, engine.auth):
                # A caller with no valid key is not authenticated (401); a valid key that is
                # not the master key is authenticated but not allowed (403).
                try:
                    await gate.authenticate(request)
                except AuthenticationError:
                    raise AuthenticationError(
                        "POST /admin/reload needs the master key: send 'Authorization: Bearer "
                        "<master key>'",
                        code="master_key_required",
                    ) from None
                raise PermissionDeniedError(
                    "POST /admin/reload needs the master key; this key is not the master key",
                    code="master_key_required",
                )
        except GatewayError as exc:
            return error_response(exc)
        address = request.client.host if request.client else None
        result = await reloader.reload("master", address)
        log_reload(result, "POST /admin/reload")
        if not result.applied:
            status = 409 if reloader.source is None else 422
            message = (
                result.errors[0]
                if reloader.source is None
                else f"the new config was rejected; the running one stays: {len(result.errors)} "
                "problem(s), listed in 'errors'"
            )
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_config" if reloader.source is not None else "no_config_file",
            }
            return Response(
                orjson.dumps({"error": error, **result.body()}),
                status_code=status,
                media_type=JSON_TYPE,
            )
        body = result.body()
        supervisor = supervisor_pid()
        if supervisor is not None:
            # Other workers hold their own engines: the supervisor replaces them all, one by
            # one, each reading the file this worker just found valid.
            os.kill(supervisor, signal.SIGHUP)
            body["workers"] = "restarting"
        return Response(orjson.dumps(body), media_type=JSON_TYPE)

    endpoint = observability.metrics

    async def metrics(request: Request) -> Response:
        assert endpoint is not None
        if engine.config.metrics.require_auth:
            try:
                principal = await gate.authenticate(request)
                if not principal.admin:
                    raise PermissionDeniedError(
                        "/metrics needs the master key or an admin key (metrics.require_auth)",
                        code="admin_required",
                    )
            except GatewayError as exc:
                return error_response(exc)
        endpoint.metrics.refresh()
        body = await asyncio.to_thread(endpoint.render)
        return Response(body, media_type=endpoint.content_type)

    app.add_route("/health/live", live, methods=["GET"])
    app.add_route("/health/ready", ready, methods=["GET"])
    if endpoint is not None:
        app.add_route("/metrics", metrics, methods=["GET"])
    app.add_route("/admin/reload", reload, methods=["POST"])
