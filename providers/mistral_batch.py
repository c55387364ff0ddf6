"""Mistral's files and batch jobs API (``/v1/files``, ``/v1/batch/jobs``) in OpenAI's terms:
the job names its model and input files, the lines carry only ``custom_id`` and ``body``,
and its statuses are read as OpenAI's."""

from __future__ import annotations

import orjson

from gateway.wire import JSON, UpstreamRequest
from providers.base import BatchDialect, Deployment, UpstreamBatch, multipart_body

# Mistral's job statuses, as OpenAI names them.
STATUSES = {
    "QUEUED": "validating",
    "RUNNING": "in_progress",
    "SUCCESS": "completed",
    "FAILED": "failed",
    "TIMEOUT_EXCEEDED": "expired",
    "CANCELLATION_REQUESTED": "cancelling",
    "CANCELLED": "cancelled",
}


class MistralBatches(BatchDialect):
    """La Plateforme's files (purpose ``batch``) and batch jobs."""

    def __init__(self, root: str, headers: dict[str, str]) -> None:
        self.root = root
        self.headers = headers

    def upload_request(
        self, deployment: Deployment, filename: str, content: bytes
    ) -> UpstreamRequest:
        body, ctype = multipart_body({"purpose": "batch"}, filename, content)
        return UpstreamRequest(
            "POST", f"{self.root}/files", {**self.headers, "content-type": ctype}, body
        )

    def input_line(self, custom_id: str, body: JSON, deployment: Deployment) -> JSON:
        body = {k: v for k, v in body.items() if k not in ("model", "stream")}
        return {"custom_id": custom_id, "body": body}

    def create_request(
        self, deployment: Deployment, file_id: str, endpoint: str, metadata: dict[str, str]
    ) -> UpstreamRequest:
        body: JSON = {
            "input_files": [file_id],
            "endpoint": "/v1/chat/completions",
            "model": deployment.model,
        }
        if metadata:
            body["metadata"] = metadata
        return UpstreamRequest("POST", f"{self.root}/batch/jobs", self.headers, orjson.dumps(body))

    def get_request(self, deployment: Deployment, batch_id: str) -> UpstreamRequest:
        return UpstreamRequest("GET", f"{self.root}/batch/jobs/{batch_id}", self.headers)

    def cancel_request(self, deployment: Deployment, batch_id: str) -> UpstreamRequest:
        return UpstreamRequest("POST", f"{self.root}/batch/jobs/{batch_id}/cancel", self.headers)

    def read_batch(self, body: bytes) -> UpstreamBatch:
        data = orjson.loads(body)
        status = str(data.get("status"))
        errors = data.get("errors")
        return UpstreamBatch(
            id=str(data["id"]),
            status=STATUSES.get(status, "in_progress"),
            output_file_id=data.get("output_file"),
            error_file_id=data.get("error_file"),
            total=int(data.get("total_requests") or 0),
            completed=int(data.get("succeeded_requests") or 0),
            failed=int(data.get("failed_requests") or 0),
            errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else None,
        )

    def content_request(self, deployment: Deployment, file_id: str) -> UpstreamRequest:
        return UpstreamRequest("GET", f"{self.root}/files/{file_id}/content", self.headers)
