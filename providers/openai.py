"""OpenAI, and any server that speaks its chat-completions wire format (vLLM, Ollama, …)."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

import orjson
from pydantic import Field

from gateway.errors import MalformedEventError, StreamInterruptedError
from gateway.wire import JSON, SSEEvent, UpstreamRequest
from providers.base import (
    Capabilities,
    Deployment,
    EchoedPrefix,
    Provider,
    ProviderSettings,
    StreamTranslator,
    parse_json_object,
)
from providers.openai_batch import OpenAIBatches
from providers.text_completions import NATIVE_COMPLETION, has_native_route


class OpenAISettings(ProviderSettings):
    """``type: openai`` — ``base_url`` points at any OpenAI-compatible ``/v1`` root."""

    base_url: str | None = "https://api.openai.com/v1"
    organization: str | None = None
    project: str | None = None
    responses_api: bool | None = Field(
        default=None,
        description="Send Responses API requests (POST /v1/responses) to this server's own "
        "/responses route; false: translate them to chat completions. Default: only for "
        "api.openai.com (OpenAI-compatible servers such as vLLM may lack the route).",
    )


class OpenAIStreamTranslator(StreamTranslator):
    """OpenAI streams are already canonical: decode each event, stop at ``[DONE]``."""

    def __init__(self, provider: Provider, deployment: Deployment) -> None:
        super().__init__()
        self._provider = provider
        self._deployment = deployment

    def feed(self, event: SSEEvent) -> list[JSON]:
        data = event.data
        if data == b"[DONE]":
            self.finished = True
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedEventError(f"undecodable event: {data[:80]!r}") from exc
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk:
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise StreamInterruptedError(
                f"provider '{self._provider.name}' (deployment '{self._deployment.id}') "
                f"reported an error mid-stream: {message}",
                provider=self._provider.name,
                deployment=self._deployment.id,
            )
        return [chunk]


def chat_usage(usage: object) -> JSON | None:
    """Responses API usage (``input_tokens``, ``output_tokens``, their details) in chat's
    shape, which pricing reads."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


class ResponsesStreamTranslator(StreamTranslator):
    """A Responses API event stream as canonical chat chunks: text and function-call deltas,
    the finish and the usage (from ``response.completed``), so a native stream is guarded,
    accounted for and billed as a chat stream is. Other events (built-in tool calls,
    reasoning summaries) carry nothing chat can say and are left out."""

    def __init__(self, provider: Provider, deployment: Deployment) -> None:
        super().__init__()
        self._provider = provider
        self._deployment = deployment
        self._head: JSON = {"id": "", "object": "chat.completion.chunk", "created": 0, "model": ""}
        self._calls: dict[str, int] = {}  # function call item id → tool-call index
        self._opened = False

    def _chunk(self, delta: JSON, finish: str | None = None) -> JSON:
        if not self._opened:
            delta = {"role": "assistant", **delta}
            self._opened = True
        return {**self._head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def feed(self, event: SSEEvent) -> list[JSON]:
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise MalformedEventError(f"undecodable event: {event.data[:80]!r}") from exc
        if not isinstance(payload, dict):
            return []
        kind = payload.get("type")
        found = payload.get("response")
        response: JSON = found if isinstance(found, dict) else {}
        if kind == "response.created":
            self._head.update(
                id=response.get("id") or "",
                created=response.get("created_at") or 0,
                model=response.get("model") or "",
            )
        elif kind == "response.output_text.delta":
            return [self._chunk({"content": str(payload.get("delta") or "")})]
        elif kind == "response.output_item.added":
            item = payload.get("item") or {}
            if item.get("type") == "function_call":
                index = self._calls[str(item.get("id"))] = len(self._calls)
                call = {
                    "index": index,
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {
                        "name": item.get("name"),
                        "arguments": item.get("arguments") or "",
                    },
                }
                return [self._chunk({"tool_calls": [call]})]
        elif kind == "response.function_call_arguments.delta":
            index = self._calls.get(str(payload.get("item_id")), 0)
            arguments = {"arguments": str(payload.get("delta") or "")}
            return [self._chunk({"tool_calls": [{"index": index, "function": arguments}]})]
        elif kind in ("response.completed", "response.incomplete"):
            self.finished = True
            reason = str((response.get("incomplete_details") or {}).get("reason") or "")
            finish = "tool_calls" if self._calls else "length" if reason else "stop"
            if reason == "content_filter":
                finish = "content_filter"
            chunks = [self._chunk({}, finish)]
            usage = chat_usage(response.get("usage"))
            if usage is not None:
                chunks.append({**self._head, "choices": [], "usage": usage})
            return chunks
        elif kind in ("response.failed", "error"):
            error = response.get("error") if kind == "response.failed" else payload
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise StreamInterruptedError(
                f"provider '{self._provider.name}' (deployment '{self._deployment.id}') "
                f"reported an error mid-stream: {message}",
                provider=self._provider.name,
                deployment=self._deployment.id,
            )
        return []


class OpenAIProvider(Provider):
    """Chat completions and embeddings against an OpenAI-compatible ``/v1`` API."""

    type_name: ClassVar[str] = "openai"
    settings_model: ClassVar[type[ProviderSettings]] = OpenAISettings
    capabilities = Capabilities(batch=True)

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        super().__init__(name, settings)
        self.base_url = (settings.base_url or "").rstrip("/")
        self.headers = self.auth_headers()
        self.headers["content-type"] = "application/json"
        self.headers.update(settings.headers)
        self.batches = self.batch_dialect()

    def batch_dialect(self) -> OpenAIBatches:
        """Its files and batches API: ``/files`` and ``/batches`` beside chat."""
        return OpenAIBatches(self.base_url, self.headers)

    def auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.settings.api_key is not None:
            headers["authorization"] = f"Bearer {self.settings.api_key.get_secret_value()}"
        if isinstance(self.settings, OpenAISettings):
            if self.settings.organization:
                headers["openai-organization"] = self.settings.organization
            if self.settings.project:
                headers["openai-project"] = self.settings.project
        return headers

    def url(self, deployment: Deployment, operation: str) -> str:
        return f"{self.base_url}/{operation}"

    def prepare_chat_body(self, body: JSON, deployment: Deployment, *, stream: bool) -> JSON:
        body["model"] = deployment.model
        if stream:
            body["stream"] = True
            # Always ask for usage so the gateway can account for every stream; the engine
            # hides the usage chunk from callers who did not ask for it.
            options = body.get("stream_options") or {}
            options["include_usage"] = True
            body["stream_options"] = options
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if (
            isinstance(messages, list)
            and isinstance(last, dict)
            and last.get("role") == "assistant"
            and last.get("prefix")
        ):
            # An assistant prefill (Mistral's ``prefix: true``) in the words of vLLM and
            # other OpenAI-compatible servers that continue a final assistant message.
            messages[-1] = {k: v for k, v in last.items() if k != "prefix"}
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body

    def serves_responses(self) -> bool:
        """Whether this provider has its own Responses API route (see ``responses_api``)."""
        wanted = getattr(self.settings, "responses_api", None)
        if wanted is not None:
            return bool(wanted)
        return urlsplit(self.base_url).hostname == "api.openai.com"

    def responses_request(self, body: JSON, deployment: Deployment) -> UpstreamRequest | None:
        if not self.serves_responses():
            return None
        body["model"] = deployment.model
        return UpstreamRequest(
            "POST", self.url(deployment, "responses"), self.headers, orjson.dumps(body)
        )

    def responses_stream(
        self, deployment: Deployment, request: UpstreamRequest
    ) -> StreamTranslator:
        return ResponsesStreamTranslator(self, deployment)

    def chat_request(self, body: JSON, deployment: Deployment, *, stream: bool) -> UpstreamRequest:
        body = self.prepare_chat_body(body, deployment, stream=stream)
        return UpstreamRequest(
            "POST", self.url(deployment, "chat/completions"), self.headers, orjson.dumps(body)
        )

    def chat_response(self, body: bytes, deployment: Deployment, request: UpstreamRequest) -> JSON:
        return parse_json_object(body, self, deployment)

    def chat_stream(self, deployment: Deployment, request: UpstreamRequest) -> StreamTranslator:
        return OpenAIStreamTranslator(self, deployment)

    def echo_filter(self, prefix: str) -> EchoedPrefix:
        """OpenAI-compatible servers that continue a prefill differ: some repeat it first."""
        return EchoedPrefix(prefix)

    def native_completions(self, deployment: Deployment) -> bool:
        return has_native_route(deployment.base_model or deployment.model)

    def native_completions_request(
        self, body: JSON, deployment: Deployment, *, stream: bool
    ) -> UpstreamRequest:
        """``/completions``, the body as chat's is prepared (model, stream, usage asked)."""
        body = self.prepare_chat_body(body, deployment, stream=stream)
        return UpstreamRequest(
            "POST",
            self.url(deployment, "completions"),
            self.headers,
            orjson.dumps(body),
            context=NATIVE_COMPLETION,
        )

    def embeddings_request(self, body: JSON, deployment: Deployment) -> UpstreamRequest:
        body["model"] = deployment.model
        return UpstreamRequest(
            "POST", self.url(deployment, "embeddings"), self.headers, orjson.dumps(body)
        )
