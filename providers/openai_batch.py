"""OpenAI's files and batches API, and Azure OpenAI's (Global Batch deployments): the input
lines already are OpenAI's, so only the model and the URLs change."""

from __future__ import annotations

import orjson

from gateway.wire import JSON, UpstreamRequest
from providers.base import BatchDialect, Deployment, UpstreamBatch, multipart_body


class OpenAIBatches(BatchDialect):
    """``/files`` (purpose ``batch``) and ``/batches`` under ``root`` (OpenAI's ``/v1``;
    Azure's ``/openai`` or ``/openai/v1``, with its api-version ``query``)."""

    def __init__(
        self,
        root: str,
        headers: dict[str, str],
        *,
        query: str = "",
        line_url: str = "/v1/chat/completions",
    ) -> None:
        self.root = root
        self.headers = headers
        self.query = query
        self.line_url = line_url  # Azure's lines and jobs say /chat/completions

    def url(self, operation: str) -> str:
        return f"{self.root}/{operation}{self.query}"

    def upload_request(
        self, deployment: Deployment, filename: str, content: bytes
    ) -> UpstreamRequest:
        body, ctype = multipart_body({"purpose": "batch"}, filename, content)
        headers = {**self.headers, "content-type": ctype}
        return UpstreamRequest("POST", self.url("files"), headers, body)

    def input_line(self, custom_id: str, body: JSON, deployment: Deployment) -> JSON:
        return {
            "custom_id": custom_id,
            "method": "POST",
            "url": self.line_url,
            "body": body,
        }

    def create_request(
        self, deployment: Deployment, file_id: str, endpoint: str, metadata: dict[str, str]
    ) -> UpstreamRequest:
        body: JSON = {
            "input_file_id": file_id,
            "endpoint": self.line_url,
            "completion_window": "24h",
        }
        if metadata:
            body["metadata"] = metadata
        return UpstreamRequest("POST", self.url("batches"), self.headers, orjson.dumps(body))

    def get_request(self, deployment: Deployment, batch_id: str) -> UpstreamRequest:
        return UpstreamRequest("GET", self.url(f"batches/{batch_id}"), self.headers)

    def cancel_request(self, deployment: Deployment, batch_id: str) -> UpstreamRequest:
        return UpstreamRequest("POST", self.url(f"batches/{batch_id}/cancel"), self.headers)

    def read_batch(self, body: bytes) -> UpstreamBatch:
        data = orjson.loads(body)
        counts = data.get("request_counts") or {}
        errors = data.get("errors")
        return UpstreamBatch(
            id=str(data["id"]),
            status=str(data["status"]),
            output_file_id=data.get("output_file_id"),
            error_file_id=data.get("error_file_id"),
            total=int(counts.get("total") or 0),
            completed=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
            errors=(errors.get("data") if isinstance(errors, dict) else None),
        )

    def content_request(self, deployment: Deployment, file_id: str) -> UpstreamRequest:
        return UpstreamRequest("GET", self.url(f"files/{file_id}/content"), self.headers)
