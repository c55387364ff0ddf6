"""Azure OpenAI: OpenAI's wire format behind Azure's URLs, auth and content-filter annotations.

Two URL styles are served. ``deployments`` (the classic one) names the deployment in the path
and needs an ``api-version`` query parameter; ``v1`` is OpenAI's own path under ``/openai/v1``
with the deployment name in the body's ``model``. In both, ``Deployment.model`` holds the
*deployment* name, which is chosen by whoever created it and is not the model's name.

Quirks handled here: streams open with a choices-less chunk that only carries
``prompt_filter_results`` (its results move to the next chunk), annotation chunks may lack
``delta``, ``stream_options`` is refused by api-versions before 2024-09-01-preview, error codes
repeat the HTTP status as a string, and a content-filter refusal says *which* category tripped
only in ``innererror``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import date
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import orjson
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gateway.errors import ContentFilterError, GatewayError, InvalidRequestError, UpstreamError
from gateway.wire import JSON, SSEEvent, UpstreamRequest
from providers.base import (
    Capabilities,
    Deployment,
    Provider,
    ProviderSettings,
    StreamTranslator,
    openai_style_error,
)
from providers.openai import OpenAIProvider, OpenAIStreamTranslator
from providers.openai_batch import OpenAIBatches

# A dated version, optionally "-preview", or the v1 API's "preview" / "latest".
_API_VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2})(-preview)?$|^(preview|latest)$")
# The first api-version that accepts stream_options (usage in streams).
STREAM_OPTIONS_SINCE = "2024-09-01"
# The first api-version with response_format json_schema (structured outputs).
JSON_SCHEMA_SINCE = "2024-08-01"
# The first api-version with the Responses API (/openai/responses).
RESPONSES_SINCE = "2025-03-01"


class AzureSettings(ProviderSettings):
    """``type: azure`` — one Azure OpenAI resource (or an API Management front for one)."""

    endpoint: str = Field(
        description="Resource root, e.g. https://contoso.openai.azure.com (no /openai path)."
    )
    api_version: str | None = Field(
        default=None,
        description='e.g. "2024-10-21"; required for api_style deployments, optional for v1.',
    )
    api_style: Literal["deployments", "v1"] = Field(
        default="deployments",
        description="deployments: /openai/deployments/{deployment}/…?api-version=…; "
        "v1: /openai/v1/… with the deployment name as the body's model.",
    )
    responses_api: bool | None = Field(
        default=None,
        description="Send Responses API requests to the resource's own /responses route; "
        "false: translate them to chat completions. Default: yes with api_style v1 or an "
        f"api-version from {RESPONSES_SINCE}-preview on.",
    )
    azure_ad_token: SecretStr | None = Field(
        default=None,
        description="A Microsoft Entra ID access token, sent as 'Authorization: Bearer'; "
        "instead of api_key (sent as the 'api-key' header).",
    )

    @field_validator("api_version", mode="before")
    @classmethod
    def _date_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2024-10-21 as a date; accept it rather than fail on quoting.
        return value.isoformat() if isinstance(value, date) else value

    @field_validator("api_version")
    @classmethod
    def _dated_version(cls, value: str | None) -> str | None:
        if value is not None and not _API_VERSION.match(value):
            raise PydanticCustomError(
                "azure_api_version",
                'expected an Azure OpenAI api-version such as "2024-10-21" or '
                '"2025-01-01-preview" (or "preview" / "latest" with api_style v1)',
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _resource_root(cls, value: str) -> str:
        value = value.rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PydanticCustomError(
                "azure_endpoint",
                "expected the resource URL, e.g. https://contoso.openai.azure.com",
            )
        if parts.query or re.search(r"/openai(/|$)", parts.path):
            raise PydanticCustomError(
                "azure_endpoint",
                "give the resource root only (e.g. https://contoso.openai.azure.com), without "
                "'/openai/…' or a query: the adapter builds the path from api_style",
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AzureSettings:
        problems = []
        if self.base_url is not None:
            problems.append("azure uses 'endpoint' (the resource URL), not 'base_url'")
        if self.api_style == "deployments" and self.api_version is None:
            problems.append(
                "api_version is required with api_style 'deployments' (e.g. "
                'api_version: "2024-10-21"); or use api_style: v1, which needs none'
            )
        if self.api_key is None and self.azure_ad_token is None:
            problems.append(
                "set api_key (the resource key) or azure_ad_token (an Entra ID access token)"
            )
        elif self.api_key is not None and self.azure_ad_token is not None:
            problems.append("set either api_key or azure_ad_token, not both")
        if problems:
            raise PydanticCustomError("azure_settings", "; ".join(problems))
        return self


def api_version_at_least(settings: AzureSettings, since: str) -> bool:
    """Whether the configured api-version is ``since`` or newer (v1 and undated: newest)."""
    if settings.api_style == "v1" or settings.api_version is None:
        return True
    dated = _API_VERSION.match(settings.api_version)
    return dated is None or dated.group(1) is None or dated.group(1) >= since


def accepts_stream_options(settings: AzureSettings) -> bool:
    """Whether this api-version knows ``stream_options`` (older ones answer 400 to it)."""
    return api_version_at_least(settings, STREAM_OPTIONS_SINCE)


class AzureStreamTranslator(OpenAIStreamTranslator):
    """Azure's stream made safe for OpenAI clients: every chunk a caller sees has choices.

    The opening ``choices: []`` chunk carries only ``prompt_filter_results``; those move onto
    the next chunk with choices. Annotation chunks (asynchronous filtering) lack ``delta`` and
    the stream's id/model; both are filled in. ``content_filter_results`` stay as they are.
    """

    _HEAD = ("id", "created", "model")

    def __init__(self, provider: Provider, deployment: Deployment) -> None:
        super().__init__(provider, deployment)
        self._pending: JSON = {}  # prompt filter results waiting for a chunk with choices
        self._head: JSON = {}  # id, created and model of the stream, once seen

    def feed(self, event: SSEEvent) -> list[JSON]:
        out: list[JSON] = []
        for chunk in super().feed(event):
            choices = chunk.get("choices")
            if choices == [] and not chunk.get("usage"):
                for key in ("prompt_filter_results", "prompt_annotations"):
                    if key in chunk:
                        self._pending[key] = chunk[key]
                continue
            self._fill_head(chunk)
            if choices:
                for choice in choices:
                    if isinstance(choice, dict):
                        choice.setdefault("delta", {})
                if self._pending:
                    chunk.update(self._pending)
                    self._pending = {}
            out.append(chunk)
        return out

    def _fill_head(self, chunk: JSON) -> None:
        for key in self._HEAD:
            if chunk.get(key):
                self._head.setdefault(key, chunk[key])
            elif key in self._head:
                chunk[key] = self._head[key]
        if not chunk.get("object"):
            chunk["object"] = "chat.completion.chunk"


class AzureProvider(OpenAIProvider):
    """Chat completions and embeddings on an Azure OpenAI resource, in either URL style."""

    type_name: ClassVar[str] = "azure"
    settings_model: ClassVar[type[ProviderSettings]] = AzureSettings
    # A deployment's name is chosen by whoever created it; its model is the base_model.
    deployment_names_model: ClassVar[bool] = False
    telemetry_name: ClassVar[str | None] = "azure.ai.openai"
    # For current api-versions; __init__ narrows it for older ones.
    capabilities = Capabilities(
        chat=True,
        streaming=True,
        tools=True,
        streamed_tool_call_deltas=True,
        json_object=True,
        json_schema=True,
        logprobs=True,
        multiple_choices=True,
        embeddings=True,
        usage_in_stream=True,
        assistant_prefill=False,
    )

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        if not isinstance(settings, AzureSettings):
            raise TypeError(f"provider '{name}' needs AzureSettings, got {type(settings)}")
        self.azure = settings
        super().__init__(name, settings)
        self.endpoint = settings.endpoint
        version = settings.api_version
        self._query = f"?api-version={quote(version, safe='')}" if version else ""
        self.stream_options_accepted = accepts_stream_options(settings)
        self.capabilities = replace(
            self.capabilities,
            json_schema=api_version_at_least(settings, JSON_SCHEMA_SINCE),
            usage_in_stream=self.stream_options_accepted,
        )
        self.batches = self.batch_dialect()

    def batch_dialect(self) -> OpenAIBatches:
        """Files and batches live at the resource, not under a deployment; the lines name the
        Global Batch deployment (``capabilities: {batch: true}`` on it) and say
        ``/chat/completions``."""
        if not hasattr(self, "_query"):  # called by OpenAIProvider.__init__, before ours ran
            return OpenAIBatches("", {})
        root = "openai/v1" if self.azure.api_style == "v1" else "openai"
        return OpenAIBatches(
            f"{self.endpoint}/{root}",
            self.headers,
            query=self._query,
            line_url="/chat/completions",
        )

    def auth_headers(self) -> dict[str, str]:
        if self.azure.api_key is not None:
            return {"api-key": self.azure.api_key.get_secret_value()}
        if self.azure.azure_ad_token is not None:
            return {"authorization": f"Bearer {self.azure.azure_ad_token.get_secret_value()}"}
        return {}

    def url(self, deployment: Deployment, operation: str) -> str:
        if self.azure.api_style == "v1":
            return f"{self.endpoint}/openai/v1/{operation}{self._query}"
        name = quote(deployment.model, safe="")
        return f"{self.endpoint}/openai/deployments/{name}/{operation}{self._query}"

    def serves_responses(self) -> bool:
        """The v1 API and api-versions from 2025-03-01-preview have /responses (unless
        ``responses_api`` says otherwise); older ones are translated to chat."""
        if self.azure.responses_api is not None:
            return self.azure.responses_api
        return api_version_at_least(self.azure, RESPONSES_SINCE)

    def responses_request(self, body: JSON, deployment: Deployment) -> UpstreamRequest | None:
        if not self.serves_responses():
            return None
        body["model"] = deployment.model  # the deployment's name, in both URL styles
        if self.azure.api_style == "v1":
            url = f"{self.endpoint}/openai/v1/responses{self._query}"
        else:
            url = f"{self.endpoint}/openai/responses{self._query}"
        return UpstreamRequest("POST", url, self.headers, orjson.dumps(body))

    def prepare_chat_body(self, body: JSON, deployment: Deployment, *, stream: bool) -> JSON:
        body = super().prepare_chat_body(body, deployment, stream=stream)
        if not self.stream_options_accepted:
            body.pop("stream_options", None)
        return body

    def chat_request(self, body: JSON, deployment: Deployment, *, stream: bool) -> UpstreamRequest:
        dropped: tuple[str, ...] = ()
        if stream and "stream_options" in body and not self.stream_options_accepted:
            if not self.settings.drop_unsupported_params:
                raise InvalidRequestError(
                    f"provider '{self.name}' uses api-version {self.azure.api_version}, which "
                    f"does not accept stream_options (needs {STREAM_OPTIONS_SINCE}-preview or "
                    "later); remove stream_options or raise api_version",
                    param="stream_options",
                    code="unsupported_parameter",
                    retryable=True,  # another deployment may accept it
                )
            dropped = ("stream_options",)
        request = super().chat_request(body, deployment, stream=stream)
        request.dropped_params = dropped
        return request

    def chat_stream(self, deployment: Deployment, request: UpstreamRequest) -> StreamTranslator:
        return AzureStreamTranslator(self, deployment)

    # -- errors ------------------------------------------------------------------------
    def error(
        self, status: int, headers: Mapping[str, str], body: bytes, deployment: Deployment
    ) -> GatewayError:
        """Azure's error body is OpenAI's with extras; add what the caller needs to act."""
        exc = openai_style_error(status, headers, body, self, deployment)
        if exc.code == str(status):  # Azure repeats the status as the code: say nothing new
            exc.code = type(exc).code
        if isinstance(exc, ContentFilterError):
            pass  # the shared mapping already names the tripped categories
        elif exc.code == "DeploymentNotFound":
            # Specific to this deployment (or one created minutes ago): let the Plan move on.
            return UpstreamError(
                f"{exc.message} [check that '{deployment.model}' is the name of a deployment "
                "in this Azure resource: the deployment's name, not its model's]",
                status=status,
                type="invalid_request_error",
                code=exc.code,
                provider=self.name,
                deployment=deployment.id,
                headers=exc.headers,
                retryable=False,  # 404: the Plan still fails over (GatewayError.failover)
            )
        elif status in (401, 403):
            key = "api_key" if self.azure.api_key is not None else "azure_ad_token"
            exc.message += f" [check providers.{self.name}.{key}]"
        elif status == 404:
            exc.message += f" [check providers.{self.name}.endpoint, api_style and api_version]"
        return exc
