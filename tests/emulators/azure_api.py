"""An Azure OpenAI emulator: both URL styles, api-key and Entra ID auth, content filtering.

Quirks kept from the real service:

- ``/openai/deployments/{deployment}/…?api-version=…`` names the deployment in the path;
  ``/openai/v1/…`` takes it as the body's ``model`` and needs no api-version.
- Answers name the base model (``gpt-4o-2024-08-06``), never the deployment.
- Streams open with a ``choices: []`` chunk carrying only ``prompt_filter_results`` (with empty
  id/model and no ``usage``); choices carry
  ``content_filter_results``; api-versions before 2024-09-01-preview refuse ``stream_options``.
- Error codes repeat the HTTP status as a string (``"401"``, ``"404"``), except the named ones
  (``DeploymentNotFound``, ``content_filter``, ``OperationNotSupported``).

Prompt markers script content filtering: ``PROMPT_FILTER_MARKER`` gets the 400 refusal,
``OUTPUT_FILTER_MARKER`` an answer cut with ``finish_reason: "content_filter"``, and
``ASYNC_FILTER_MARKER`` an extra annotation chunk without ``delta`` (asynchronous filtering).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.emulators.common import EmulatorBase, fault_response, json_response, sse, sse_response
from tests.emulators.openai_api import chunks, completion, text_of

API_KEY = "azure-test-key"
ENTRA_TOKEN = "entra-test-token"
# deployment name → the model behind it (what answers report as "model")
DEPLOYMENTS = {
    "gpt-4o-prod": "gpt-4o-2024-08-06",
    "embed-prod": "text-embedding-3-small",
}
EMBEDDING_MODELS = frozenset({"text-embedding-3-small"})
API_VERSIONS = frozenset({"2024-02-01", "2024-06-01", "2024-10-21", "2025-01-01-preview"})
V1_API_VERSIONS = frozenset({"preview", "latest"})
STREAM_OPTIONS_SINCE = "2024-09-01"

PROMPT_FILTER_MARKER = "forbidden-fight"
OUTPUT_FILTER_MARKER = "filtered-answer"
ASYNC_FILTER_MARKER = "annotate-later"

SAFE = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
OUTPUT_FILTERED = {**SAFE, "violence": {"filtered": True, "severity": "high"}}
PROMPT_FILTERED = {
    **SAFE,
    "violence": {"filtered": True, "severity": "medium"},
    "jailbreak": {"filtered": False, "detected": False},
}
CONTENT_FILTER_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry. To learn more about our content filtering "
    "policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)


def azure_error(http_status: int, code: str, message: str, **extra: Any) -> Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, http_status)


def content_filter_error() -> Response:
    return azure_error(
        400,
        "content_filter",
        CONTENT_FILTER_MESSAGE,
        type=None,
        param="prompt",
        status=400,
        innererror={
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": PROMPT_FILTERED,
        },
    )


def prompt_text(body: dict[str, Any]) -> str:
    return " ".join(text_of(m.get("content")) for m in body.get("messages") or [])


class AzureEmulator(EmulatorBase):
    """Serves an Azure OpenAI resource under /openai, in both URL styles."""

    def __init__(self) -> None:
        super().__init__()
        self.app = Starlette(
            routes=[
                Route(
                    "/openai/deployments/{deployment}/chat/completions",
                    self.chat,
                    methods=["POST"],
                ),
                Route(
                    "/openai/deployments/{deployment}/embeddings", self.embeddings, methods=["POST"]
                ),
                Route("/openai/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/openai/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )

    # -- gatekeeping, in the service's order: route, auth, deployment ----------------------
    def check(self, request: Request, body: Any) -> tuple[str, Response | None]:
        """The deployment addressed, or the error Azure would answer instead."""
        v1 = request.url.path.startswith("/openai/v1/")
        version = request.query_params.get("api-version")
        known = (version is None or version in V1_API_VERSIONS) if v1 else version in API_VERSIONS
        if not known:
            return "", azure_error(404, "404", "Resource not found")
        key = request.headers.get("api-key")
        bearer = request.headers.get("authorization")
        if key != API_KEY and bearer != f"Bearer {ENTRA_TOKEN}":
            return "", azure_error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make "
                "sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
            )
        if v1:
            name = body.get("model") if isinstance(body, dict) else None
            if not name:
                return "", azure_error(400, "BadRequest", "'model' is a required property")
        else:
            name = request.path_params["deployment"]
        if name not in DEPLOYMENTS:
            return "", azure_error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        return str(name), None

    def operation_mismatch(self, deployment: str, embeddings: bool) -> Response | None:
        model = DEPLOYMENTS[deployment]
        if (model in EMBEDDING_MODELS) == embeddings:
            return None
        operation = "embeddings" if embeddings else "chatCompletion"
        return azure_error(
            400,
            "OperationNotSupported",
            f"The {operation} operation does not work with the specified model, {model}. "
            "Please choose different model and try again.",
        )

    # -- chat --------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        rec = await self.record(request)
        deployment, denied = self.check(request, rec.body)
        if denied is not None:
            return denied
        if (wrong := self.operation_mismatch(deployment, embeddings=False)) is not None:
            return wrong
        fault = await self.take_fault()
        if fault is not None and fault.cut_after is None:
            return fault_response(fault)
        body = rec.body
        if not isinstance(body, dict) or not body.get("messages"):
            return azure_error(400, "BadRequest", "'messages' is a required property")
        if body.get("stream_options") is not None:
            if not body.get("stream"):
                return azure_error(
                    400,
                    "BadRequest",
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    param="stream_options",
                )
            version = request.query_params.get("api-version") or "latest"
            if version < STREAM_OPTIONS_SINCE:
                return azure_error(
                    400,
                    "BadRequest",
                    "Unrecognized request argument supplied: stream_options",
                    param="stream_options",
                )
        text = prompt_text(body)
        if PROMPT_FILTER_MARKER in text:
            return content_filter_error()
        answer = completion(body, DEPLOYMENTS[deployment])
        output_filtered = OUTPUT_FILTER_MARKER in text
        for choice in answer["choices"]:
            choice["content_filter_results"] = OUTPUT_FILTERED if output_filtered else SAFE
            if output_filtered:
                # The service stops the answer where the filter tripped.
                choice["finish_reason"] = "content_filter"
                content = choice["message"]["content"] or ""
                choice["message"]["content"] = " ".join(content.split(" ")[:2])
        prompt_filter = [{"prompt_index": 0, "content_filter_results": SAFE}]
        if not body.get("stream"):
            answer["prompt_filter_results"] = prompt_filter
            return json_response(answer)
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        events = [sse(c) for c in self.stream(answer, prompt_filter, include, text)]
        events.append(b"data: [DONE]\n\n")
        return sse_response(events, fault.cut_after if fault else None)

    def stream(
        self, answer: dict[str, Any], prompt_filter: list[Any], include_usage: bool, text: str
    ) -> list[dict[str, Any]]:
        """Azure's chunks for ``answer``: the prompt-filter chunk first, then OpenAI's chunks
        with content filter results on their choices."""
        anonymous = {"created": 0, "id": "", "model": "", "object": ""}
        usage = {"usage": None} if include_usage else {}
        out = [{"choices": [], **anonymous, "prompt_filter_results": prompt_filter}]
        for chunk in chunks(answer, include_usage):
            for choice in chunk["choices"]:
                final = answer["choices"][choice["index"]]
                if choice["finish_reason"] == "content_filter":
                    choice["content_filter_results"] = final["content_filter_results"]
                elif choice["finish_reason"] or "role" in choice["delta"]:
                    choice["content_filter_results"] = {}
                else:
                    choice["content_filter_results"] = SAFE
                if choice["finish_reason"] and ASYNC_FILTER_MARKER in text:
                    # Asynchronous filtering annotates text already sent: no delta, no id.
                    annotation = {
                        "index": choice["index"],
                        "finish_reason": None,
                        "content_filter_results": SAFE,
                        "content_filter_offsets": {
                            "check_offset": 0,
                            "start_offset": 0,
                            "end_offset": 40,
                        },
                    }
                    out.append({"choices": [annotation], **anonymous, **usage})
            out.append(chunk)
        return out

    # -- embeddings --------------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        rec = await self.record(request)
        deployment, denied = self.check(request, rec.body)
        if denied is not None:
            return denied
        if (wrong := self.operation_mismatch(deployment, embeddings=True)) is not None:
            return wrong
        fault = await self.take_fault()
        if fault is not None:
            return fault_response(fault)
        body = rec.body
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions") or 4
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float(len(str(x))) / (k + 1) for k in range(dims)],
            }
            for i, x in enumerate(inputs)
        ]
        tokens = sum(len(str(x).split()) for x in inputs)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": DEPLOYMENTS[deployment],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
