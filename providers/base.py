"""The provider interface: what an adapter must translate, and what it can do.

Adapters are sans-I/O. They build ``UpstreamRequest`` objects and parse bytes that the engine
got through the transport; they never open sockets. A new provider is one module with one
``Provider`` subclass, registered by its ``type_name`` (see ``providers/__init__.py``).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Protocol

import orjson

from gateway.config.schema import DeploymentConfig, ProviderSettings, TimeoutSettings
from gateway.errors import (
    ContentFilterError,
    ContextLengthExceededError,
    GatewayError,
    RateLimitError,
    UpstreamError,
)
from gateway.types import (
    TEXT_COMPLETION,
    TEXT_COMPLETION_NATIVE,
    TEXT_COMPLETION_SUFFIX,
    text_completion_needs,
)
from gateway.wire import JSON, SSEEvent, Timeouts, Transport, UpstreamRequest
from providers.text_completions import (
    NATIVE_COMPLETION,
    TEXT_COMPLETION_NEEDS,
    CompletionMode,
    chat_body,
    chat_chunk,
    chat_shaped,
    fim_body,
    serves,
)

# Which offline token table counts a provider's tokens when a model's name does not say.
TokenizerFamily = Literal["openai", "mistral"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider supports; the engine consults this instead of testing provider names."""

    chat: bool = True
    streaming: bool = True
    tools: bool = True
    streamed_tool_call_deltas: bool = True
    json_object: bool = True
    json_schema: bool = True
    logprobs: bool = True
    multiple_choices: bool = True
    embeddings: bool = True
    usage_in_stream: bool = True
    assistant_prefill: bool = False
    fim: bool = False  # fill-in-the-middle (Mistral's /v1/fim/completions)
    batch: bool = False  # runs batch jobs at batch prices (see ``Provider.batches``)

    def lacks(self, needs: frozenset[str]) -> list[str]:
        """The needed features (capability field names) this provider does not have."""
        return [n for n in sorted(needs) if not getattr(self, n, False)]


@dataclass(slots=True)
class Deployment:
    """One concrete place a public model can be served: a provider plus its model name."""

    id: str
    public_model: str
    provider: Provider
    model: str
    base_model: str | None = None
    weight: float = 1.0
    region: str | None = None
    rpm: int | None = None  # per-minute quotas (Azure deployments have TPM quotas)
    tpm: int | None = None
    config: DeploymentConfig | None = None  # the config entry it was built from

    @property
    def provider_name(self) -> str:
        return self.provider.name

    @property
    def can_prefill(self) -> bool:
        """Whether this deployment continues a final assistant message (its config's say,
        else its provider's)."""
        own = self.config.capabilities if self.config is not None else None
        if own is not None and own.assistant_prefill is not None:
            return own.assistant_prefill
        return self.provider.capabilities.assistant_prefill

    @property
    def can_batch(self) -> bool:
        """Whether batch jobs can run here (its config's say, else its provider's)."""
        if self.provider.batches is None:
            return False
        own = self.config.capabilities if self.config is not None else None
        if own is not None and own.batch is not None:
            return own.batch
        return self.provider.capabilities.batch

    def lacks(self, needs: frozenset[str]) -> list[str]:
        """The needed features its provider lacks, with this deployment's own config."""
        text = needs & TEXT_COMPLETION_NEEDS
        missing = [
            n for n in self.provider.capabilities.lacks(needs - text) if n != "assistant_prefill"
        ]
        if "assistant_prefill" in needs and not self.can_prefill:
            missing = sorted([*missing, "assistant_prefill"])
        if text and self.completion_mode(needs) is None:
            # The most demanding need names what is missing.
            order = (TEXT_COMPLETION_NATIVE, TEXT_COMPLETION_SUFFIX, TEXT_COMPLETION)
            missing.append(next(n for n in order if n in text))
        return missing

    def completion_modes(self) -> list[CompletionMode]:
        """How this deployment answers a legacy text completion, best first: its provider's
        own /completions route (its config's say, else its adapter's), FIM, chat."""
        modes: list[CompletionMode] = []
        own = self.config.capabilities if self.config is not None else None
        native = own.completions if own is not None else None
        if native is None:
            native = self.provider.settings.capabilities.completions
        if native is None:
            native = self.provider.native_completions(self)
        if native:
            modes.append("native")
        capabilities = self.provider.capabilities
        if capabilities.fim and self.provider.fim_model(self):
            modes.append("fim")
        if capabilities.chat:
            modes.append("chat")
        return modes

    def completion_mode(self, needs: frozenset[str]) -> CompletionMode | None:
        """The way this deployment answers a text completion with these needs (None: none)."""
        for mode in self.completion_modes():
            if serves(mode, needs):
                return mode
        return None


class StreamTranslator(ABC):
    """Turns one upstream SSE stream into canonical chat.completion.chunk dicts."""

    def __init__(self) -> None:
        self.finished = False  # saw the provider's end-of-stream marker

    @abstractmethod
    def feed(self, event: SSEEvent) -> list[JSON]:
        """Canonical chunks for one upstream event (often one, sometimes none or two)."""


class TextCompletionStream(StreamTranslator):
    """A stream from a provider's own ``/completions`` route as chat chunks: each choice's
    ``text`` becomes its delta's content (the provider's translator reads the events)."""

    def __init__(self, inner: StreamTranslator) -> None:
        super().__init__()
        self._inner = inner

    def feed(self, event: SSEEvent) -> list[JSON]:
        chunks = self._inner.feed(event)
        self.finished = self._inner.finished
        return [chat_chunk(chunk) for chunk in chunks]


class EchoFilter(Protocol):
    """Edits the chunks of a continued answer in place (see ``Provider.echo_filter``)."""

    def strip(self, chunk: JSON) -> None: ...


class EchoedPrefix:
    """Removes the already-sent text when a provider repeats it at the start of a continued
    answer (Mistral's ``prefix: true`` answers begin with the prefix, some OpenAI-compatible
    servers do the same); passes other answers unchanged."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen = ""
        self.done = False

    def strip(self, chunk: JSON) -> None:
        if self.done:
            return
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            if not content and not choice.get("finish_reason"):
                continue
            self.seen += content or ""
            still_echoing = self.prefix.startswith(self.seen) and len(self.seen) < len(self.prefix)
            if still_echoing and not choice.get("finish_reason"):
                delta["content"] = ""
                continue
            self.done = True
            rest = (
                self.seen[len(self.prefix) :]
                if self.seen.startswith(self.prefix)
                else ("" if self.prefix.startswith(self.seen) else self.seen)
            )
            delta["content"] = rest


class Provider(ABC):
    """One configured provider entry (e.g. ``azure-westeurope``) of some adapter type.

    Besides translating, an adapter answers what the rest of the gateway must know about its
    provider — how it is billed, how its tokens are counted, what telemetry calls it, how it
    continues an answer — so no other module tests a provider's type.
    """

    type_name: ClassVar[str]
    settings_model: ClassVar[type[ProviderSettings]] = ProviderSettings
    # What the adapter type supports; an instance may narrow it from its settings
    # (e.g. an old Azure api-version without json_schema).
    capabilities: Capabilities = Capabilities()
    # Providers that answer in-process (mock) bring their own transport.
    transport: Transport | None = None
    # How its files and batch jobs API is spoken; None: it runs no batch jobs.
    batches: BatchDialect | None = None
    # Whether a deployment's configured name is its model's name. Azure's is not (it is the
    # name its owner gave the deployment), so only its base_model or the model that answered
    # can price it.
    deployment_names_model: ClassVar[bool] = True
    # The offline token table for models whose name does not say which (an OpenAI-compatible
    # server may serve anything): OpenAI's, or Mistral's.
    tokenizer: ClassVar[TokenizerFamily] = "openai"
    # The OpenTelemetry GenAI name of the provider (gen_ai.provider.name); None: type_name.
    telemetry_name: ClassVar[str | None] = None

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        self.name = name
        self.settings = settings
        self.timeouts = Timeouts(connect=settings.timeouts.connect, read=settings.timeouts.read)
        prefill = settings.capabilities.assistant_prefill
        if prefill is not None:
            self.capabilities = replace(self.capabilities, assistant_prefill=prefill)

    @property
    def region(self) -> str | None:
        return self.settings.region

    # -- what the stages ask of a provider ----------------------------------------------
    @classmethod
    def price_family(cls, settings: ProviderSettings) -> str:
        """The price catalog family that bills calls to a provider with these settings."""
        return cls.type_name

    @classmethod
    def price_families(cls) -> tuple[str, ...]:
        """Every family ``price_family`` may answer (the ``prices:`` sections it can use)."""
        return (cls.type_name,)

    @classmethod
    def genai_name(cls) -> str:
        """The provider's name in OpenTelemetry's GenAI conventions."""
        return cls.telemetry_name or cls.type_name

    def echo_filter(self, prefix: str) -> EchoFilter | None:
        """When a stream cut short is continued here from ``prefix`` (assistant prefill):
        something that removes the prefix should this provider repeat it before the rest of
        the answer; None for providers that never repeat it."""
        return None

    # -- chat --------------------------------------------------------------------------
    @abstractmethod
    def chat_request(self, body: JSON, deployment: Deployment, *, stream: bool) -> UpstreamRequest:
        """Build the upstream request. ``body`` is the caller's body (OpenAI shape), a copy."""

    @abstractmethod
    def chat_response(self, body: bytes, deployment: Deployment, request: UpstreamRequest) -> JSON:
        """Parse a successful non-streaming answer to ``request`` into a chat.completion dict."""

    @abstractmethod
    def chat_stream(self, deployment: Deployment, request: UpstreamRequest) -> StreamTranslator:
        """A fresh translator for the streaming answer to ``request``."""

    # -- the Responses API -------------------------------------------------------------
    def responses_request(self, body: JSON, deployment: Deployment) -> UpstreamRequest | None:
        """A Responses API request (``POST /responses``, ``body`` in its own shape, a copy)
        to this deployment's own route; None when the provider has none, and the request is
        then translated to chat."""
        return None

    def responses_response(self, body: bytes, deployment: Deployment) -> JSON:
        """Parse a successful answer to ``responses_request``: a response object."""
        return parse_json_object(body, self, deployment)

    def responses_stream(
        self, deployment: Deployment, request: UpstreamRequest
    ) -> StreamTranslator:
        """A translator of the event stream answering a streamed ``responses_request`` into
        canonical chat chunks (only providers whose ``responses_request`` answers need it)."""
        raise NotImplementedError

    # -- fill-in-the-middle -------------------------------------------------------------
    def fim_request(self, body: JSON, deployment: Deployment, *, stream: bool) -> UpstreamRequest:
        """Build a FIM request (``prompt``, ``suffix``); its answer is parsed as chat's is.
        Only adapters that declare ``Capabilities.fim`` override this."""
        raise UpstreamError(
            f"provider '{self.name}' ({self.type_name}) does not serve fill-in-the-middle "
            "completions",
            status=400,
            type="invalid_request_error",
            code="unsupported_operation",
            retryable=False,
        )

    def fim_model(self, deployment: Deployment) -> bool:
        """Whether the deployment's model completes fill-in-the-middle, on a provider whose
        ``Capabilities.fim`` says it serves FIM at all."""
        return True

    # -- legacy text completions --------------------------------------------------------
    def native_completions(self, deployment: Deployment) -> bool:
        """Whether the deployment's model is served on the provider's own ``/completions``
        route (unless its config says; see ``Deployment.completion_modes``)."""
        return False

    def completions_request(
        self, body: JSON, deployment: Deployment, *, stream: bool
    ) -> UpstreamRequest:
        """Build a legacy text completion (``/v1/completions`` body): to the provider's own
        route, as FIM, or as chat, whichever of the deployment's ways serves it first."""
        mode = deployment.completion_mode(text_completion_needs(body))
        if mode == "native":
            return self.native_completions_request(body, deployment, stream=stream)
        if mode == "fim":
            return self.fim_request(fim_body(body), deployment, stream=stream)
        if mode == "chat":
            return self.chat_request(chat_body(body), deployment, stream=stream)
        raise self._unsupported("this text completion")

    def native_completions_request(
        self, body: JSON, deployment: Deployment, *, stream: bool
    ) -> UpstreamRequest:
        """The request to the provider's own ``/completions`` route, its ``context``
        ``NATIVE_COMPLETION``. Adapters whose providers have the route override this."""
        raise self._unsupported("legacy /completions requests")

    def completions_response(
        self, body: bytes, deployment: Deployment, request: UpstreamRequest
    ) -> JSON:
        """A text completion's answer to ``request`` as a chat.completion dict."""
        if request.context is NATIVE_COMPLETION:
            return chat_shaped(parse_json_object(body, self, deployment))
        return self.chat_response(body, deployment, request)

    def completions_stream(
        self, deployment: Deployment, request: UpstreamRequest
    ) -> StreamTranslator:
        """A fresh translator for the streaming answer to a text completion ``request``."""
        translator = self.chat_stream(deployment, request)
        if request.context is NATIVE_COMPLETION:
            return TextCompletionStream(translator)
        return translator

    def _unsupported(self, what: str) -> UpstreamError:
        return UpstreamError(
            f"provider '{self.name}' ({self.type_name}) does not serve {what}",
            status=400,
            type="invalid_request_error",
            code="unsupported_operation",
            retryable=False,
        )

    # -- embeddings --------------------------------------------------------------------
    def embeddings_request(self, body: JSON, deployment: Deployment) -> UpstreamRequest:
        raise UpstreamError(
            f"provider '{self.name}' ({self.type_name}) does not serve embeddings",
            status=400,
            type="invalid_request_error",
            code="unsupported_operation",
            retryable=False,
        )

    def embeddings_response(self, body: bytes, deployment: Deployment) -> JSON:
        return parse_json_object(body, self, deployment)

    # -- errors ------------------------------------------------------------------------
    def error(
        self, status: int, headers: Mapping[str, str], body: bytes, deployment: Deployment
    ) -> GatewayError:
        """Map an upstream error answer to a GatewayError (default: OpenAI error shape)."""
        return openai_style_error(status, headers, body, self, deployment)


@dataclass(slots=True)
class UpstreamBatch:
    """A provider's batch job, in OpenAI's terms: ``status`` is one of OpenAI's batch statuses
    and the file ids are the provider's own."""

    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[JSON] | None = None


class BatchDialect(ABC):
    """How one provider's files and batch jobs API is spoken (sans-I/O, like chat): requests
    to upload an input file, create, read and cancel a job and download a result file; its
    answers read back in OpenAI's terms. Input and result lines travel in OpenAI's batch line
    shape through the gateway and are translated here."""

    @abstractmethod
    def upload_request(
        self, deployment: Deployment, filename: str, content: bytes
    ) -> UpstreamRequest: ...

    def uploaded_id(self, body: bytes) -> str:
        """The id of the file an upload answer describes."""
        data = orjson.loads(body)
        return str(data["id"])

    @abstractmethod
    def input_line(self, custom_id: str, body: JSON, deployment: Deployment) -> JSON:
        """One input line for this deployment; ``body`` is the line's chat request as the
        provider's chat adapter translated it for ``deployment``."""

    @abstractmethod
    def create_request(
        self, deployment: Deployment, file_id: str, endpoint: str, metadata: dict[str, str]
    ) -> UpstreamRequest: ...

    @abstractmethod
    def get_request(self, deployment: Deployment, batch_id: str) -> UpstreamRequest: ...

    @abstractmethod
    def cancel_request(self, deployment: Deployment, batch_id: str) -> UpstreamRequest: ...

    @abstractmethod
    def read_batch(self, body: bytes) -> UpstreamBatch:
        """A batch job answer (create, read or cancel) in OpenAI's terms."""

    @abstractmethod
    def content_request(self, deployment: Deployment, file_id: str) -> UpstreamRequest: ...

    def result_line(self, line: JSON) -> JSON:
        """One result line in OpenAI's shape (``custom_id``, ``response.body``, ``error``)."""
        return line


def multipart_body(fields: Mapping[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with text ``fields`` and one ``file`` part, and its
    content type (the adapters build upload bodies themselves: they import no HTTP client)."""
    boundary = f"gateway-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(f"{head}{value}\r\n".encode())
    safe = filename.replace('"', "").replace("\r", "").replace("\n", "") or "input.jsonl"
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def parse_json_object(body: bytes, provider: Provider, deployment: Deployment) -> JSON:
    """Decode a JSON object from upstream, or say clearly that upstream sent something else."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise UpstreamError(
            f"provider '{provider.name}' (deployment '{deployment.id}') sent a response that is "
            f"not a JSON object ({len(body)} bytes)",
            status=502,
            code="bad_upstream_response",
            provider=provider.name,
            deployment=deployment.id,
        )
    return data


def describe_body(body: bytes, headers: Mapping[str, str]) -> str:
    ctype = headers.get("content-type", "unknown content type").split(";")[0]
    return f"a non-JSON body ({ctype}, {len(body)} bytes)"


def openai_style_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    provider: Provider,
    deployment: Deployment,
) -> GatewayError:
    """Parse ``{"error": {...}}`` (or a bare ``{"message": ...}``) into the right error class."""
    message: str | None = None
    code: str | None = None
    etype: str | None = None
    param: str | None = None
    extra: JSON = {}
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = _str_or_none(err.get("message"))
            code = _str_or_none(err.get("code"))
            etype = _str_or_none(err.get("type"))
            param = _str_or_none(err.get("param"))
            extra = err
        elif isinstance(err, str):
            message = err
    where = f"provider '{provider.name}' (deployment '{deployment.id}')"
    detail = message or (describe_body(body, headers) if body else "an empty body")
    text = f"{where} answered {status}: {detail}"
    common: dict[str, Any] = {
        "provider": provider.name,
        "deployment": deployment.id,
        "param": param,
        "headers": retry_headers(headers),
    }
    if code in ("content_filter", "content_policy_violation") or (
        isinstance(extra.get("innererror"), dict)
        and extra["innererror"].get("code") == "ResponsibleAIPolicyViolation"
    ):
        return ContentFilterError(
            f"{text} [filtered: {filtered_categories(body)}]", status=status, **common
        )
    if code == "context_length_exceeded":
        return ContextLengthExceededError(text, status=status, **common)
    if status == 429:
        # insufficient_quota is a billing problem, not a transient one.
        return RateLimitError(
            text,
            code=code or "rate_limit_exceeded",
            retryable=code != "insufficient_quota",
            **common,
        )
    return UpstreamError(
        text,
        status=status,
        type=etype or ("invalid_request_error" if status < 500 else "upstream_error"),
        code=code,
        **common,
    )


def retry_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's retry hints, kept so retries and callers can honour them."""
    out: dict[str, str] = {}
    for name in ("retry-after", "retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value is not None:
            out[name] = value
    return out


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def filtered_categories(body: bytes) -> str:
    """The content-filter categories that tripped, e.g. ``violence (medium), jailbreak``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    inner = err.get("innererror") if isinstance(err, dict) else None
    results = None
    if isinstance(inner, dict):
        results = inner.get("content_filter_result") or inner.get("content_filter_results")
    reasons = []
    for category, result in results.items() if isinstance(results, dict) else ():
        if not (isinstance(result, dict) and result.get("filtered")):
            continue
        if result.get("severity"):
            reasons.append(f"{category} ({result['severity']})")
        elif isinstance(result.get("details"), list):  # custom blocklists name themselves
            ids = [str(d.get("id")) for d in result["details"] if isinstance(d, dict)]
            reasons.append(f"{category} ({', '.join(ids)})" if ids else category)
        else:
            reasons.append(category)
    return ", ".join(reasons) or "the provider did not say which category"


__all__ = [
    "BatchDialect",
    "Capabilities",
    "Deployment",
    "EchoFilter",
    "EchoedPrefix",
    "Provider",
    "ProviderSettings",
    "StreamTranslator",
    "TextCompletionStream",
    "TimeoutSettings",
    "TokenizerFamily",
    "UpstreamBatch",
    "describe_body",
    "filtered_categories",
    "multipart_body",
    "openai_style_error",
    "parse_json_object",
    "retry_headers",
]
