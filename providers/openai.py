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


class OpenAIProvider(Provider):
    """Chat completions and embeddings against an OpenAI-compatible ``/v1`` API."""

    type_name: ClassVar[str] = "openai"
    settings_model: ClassVar[type[ProviderSettings]] = OpenAISettings
    capabilities = Capabilities()

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        super().__init__(name, settings)
        self.base_url = (settings.base_url or "").rstrip("/")
        self.headers = self.auth_headers()
        self.headers["content-type"] = "application/json"
        self.headers.update(settings.headers)

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

    def embeddings_request(self, body: JSON, deployment: Deployment) -> UpstreamRequest:
        body["model"] = deployment.model
        return UpstreamRequest(
            "POST", self.url(deployment, "embeddings"), self.headers, orjson.dumps(body)
        )
