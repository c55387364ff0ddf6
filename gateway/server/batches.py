"""OpenAI's Files and Batches routes under ``/v1``: ``/files`` (upload, list, read, delete,
content) and ``/batches`` (create, list, read, cancel), answered in OpenAI's shapes whatever
provider runs the job (see gateway/batch/ and docs/batch.md)."""

from __future__ import annotations

import orjson
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from gateway.auth import Principal
from gateway.batch import Batches, BatchPoller, batch_headers, batch_object
from gateway.engine import Engine
from gateway.errors import GatewayError, InvalidRequestError
from gateway.server.asgi import GatewayApp
from gateway.server.http import JSON_TYPE, Gatekeeper, error_response, new_call


def _json(body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type=JSON_TYPE, headers=headers)


def _limit(request: Request, default: int, most: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidRequestError(f"limit must be a whole number from 1 to {most}", param="limit")
    return int(raw)


def _regions(request: Request) -> frozenset[str] | None:
    raw = request.headers.get("x-gateway-regions")
    if not raw:
        return None
    return frozenset(r.strip() for r in raw.split(",") if r.strip())


def add_batch_routes(app: GatewayApp, engine: Engine, gate: Gatekeeper) -> BatchPoller | None:
    """Register the Files and Batches routes; the poller that follows the jobs (None when
    batches are off or there is no ledger database to keep them in)."""
    if engine.ledger is None or not engine.config.batches.enabled:
        return None
    batches = Batches(engine)
    poller = BatchPoller(batches)
    app.state.batches = batches
    app.state.batch_poller = poller

    async def who(request: Request) -> Principal:
        return await gate.authenticate(request)

    def failed(exc: GatewayError, request_id: str) -> Response:
        return error_response(exc, {"x-request-id": request_id})

    async def upload_file(request: Request) -> Response:
        call = new_call(request)
        try:
            principal = await who(request)
            length = request.headers.get("content-length")
            limit = engine.config.batches.max_file_bytes
            if length is not None and length.isdigit() and int(length) > limit + 64 * 1024:
                raise InvalidRequestError(
                    f"the upload is larger than batches.max_file_bytes ({limit})", param="file"
                )
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception as exc:
                raise InvalidRequestError(
                    "send the file as multipart/form-data with fields 'file' and 'purpose'"
                ) from exc
            upload = form.get("file")
            purpose = form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise InvalidRequestError("a 'file' part is required", param="file")
            if not isinstance(purpose, str):
                raise InvalidRequestError("a 'purpose' field is required", param="purpose")
            content = await upload.read()
            result = await batches.upload(
                principal, upload.filename or "input.jsonl", purpose, content
            )
        except GatewayError as exc:
            return failed(exc, call.request_id)
        return _json(result)

    async def list_files(request: Request) -> Response:
        call = new_call(request)
        try:
            principal = await who(request)
            files = await batches.files(principal, _limit(request, 100, 10_000))
        except GatewayError as exc:
            return failed(exc, call.request_id)
        return _json({"object": "list", "data": files, "has_more": False})

    async def get_file(request: Request) -> Response:
        call = new_call(request)
        try:
            principal = await who(request)
            file = await batches.file(principal, request.path_params["file_id"])
        except GatewayError as exc:
            return failed(exc, call.request_id)
        from gateway.batch import file_object

        return _json(file_object(file))

    async def delete_file(request: Request) -> Response:
        call = new_call(request)
        try:
            principal = await who(request)
            result = await batches.delete_file(principal, request.path_params["file_id"])
        except GatewayError as exc:
            return failed(exc, call.request_id)
        return _json(result)

    async def file_content(request: Request) -> Response:
        call = new_call(request)
        try:
            principal = await who(request)
            content = await batches.content(principal, request.path_params["file_id"])
        except GatewayError as exc:
            return failed(exc, call.request_id)
        return Response(content, media_type="application/octet-stream")

    async def create_batch(request: Request) -> Response:
        call = new_call(request)
        try:
            principal = await who(request)
            body = await gate.json(request)
            input_file_id = body.get("input_file_id")
            endpoint = body.get("endpoint")
            metadata = body.get("metadata")
            if not isinstance(input_file_id, str) or not isinstance(endpoint, str):
                raise InvalidRequestError(
                    "input_file_id and endpoint are required strings", param="input_file_id"
                )
            if metadata is not None and not (
                isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
            ):
                raise InvalidRequestError("metadata maps names to strings", param="metadata")
            row = await batches.create(
                principal,
                input_file_id,
                endpoint,
                str(body.get("completion_window") or "24h"),
                metadata,
                _regions(request),
            )
        except GatewayError as exc:
            return failed(exc, call.request_id)
        return _json(batch_object(row), batch_headers(row))

    async def list_batches(request: Request) -> Response:
        call = new_call(request)
        try:
            principal = await who(request)
            limit = _limit(request, 20, 100)
            rows = await batches.list(principal, limit + 1, request.query_params.get("after"))
        except GatewayError as exc:
            return failed(exc, call.request_id)
        data = [batch_object(r) for r in rows[:limit]]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(rows) > limit,
            }
        )

    async def get_batch(request: Request) -> Response:
        call = new_call(request)
        try:
            principal = await who(request)
            batch_id = request.path_params["batch_id"]
            row = await batches.get(principal, batch_id)
            if not row.settled:  # a caller asking sees the job as it stands upstream
                await batches.sync(batch_id)
                row = await batches.get(principal, batch_id)
        except GatewayError as exc:
            return failed(exc, call.request_id)
        return _json(batch_object(row), batch_headers(row))

    async def cancel_batch(request: Request) -> Response:
        call = new_call(request)
        try:
            principal = await who(request)
            row = await batches.cancel(principal, request.path_params["batch_id"])
        except GatewayError as exc:
            return failed(exc, call.request_id)
        poller.poke()
        return _json(batch_object(row), batch_headers(row))

    for prefix in ("/v1", ""):
        app.add_route(f"{prefix}/files", upload_file, methods=["POST"])
        app.add_route(f"{prefix}/files", list_files, methods=["GET"])
        app.add_route(f"{prefix}/files/{{file_id}}", get_file, methods=["GET"])
        app.add_route(f"{prefix}/files/{{file_id}}", delete_file, methods=["DELETE"])
        app.add_route(f"{prefix}/files/{{file_id}}/content", file_content, methods=["GET"])
        app.add_route(f"{prefix}/batches", create_batch, methods=["POST"])
        app.add_route(f"{prefix}/batches", list_batches, methods=["GET"])
        app.add_route(f"{prefix}/batches/{{batch_id}}", get_batch, methods=["GET"])
        app.add_route(f"{prefix}/batches/{{batch_id}}/cancel", cancel_batch, methods=["POST"])
    return poller
