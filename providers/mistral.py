"""Mistral: La Plateforme, and Mistral models served on Azure AI (serverless and Foundry).

Mistral's chat API looks like OpenAI's but validates strictly: any field it does not know, at
any depth, is a 422. So requests are rebuilt from allow-lists copied from Mistral's OpenAPI spec
(``ChatCompletionRequest``, the four message schemas, ``EmbeddingRequest``) instead of being
passed through, and answers are normalised back to the OpenAI shape.
"""

from __future__ import annotations

import hashlib
import re
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, model_validator

from gateway.errors import (
    ContentFilterError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
    MalformedEventError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamError,
)
from gateway.wire import JSON, SSEEvent, UpstreamRequest
from providers.base import (
    Capabilities,
    Deployment,
    EchoedPrefix,
    Provider,
    ProviderSettings,
    StreamTranslator,
    TokenizerFamily,
    describe_body,
    parse_json_object,
    retry_headers,
)
from providers.mistral_batch import MistralBatches

LA_PLATEFORME_URL = "https://api.mistral.ai/v1"
Platform = Literal["la_plateforme", "azure_serverless", "azure_foundry"]
AZURE_AI_PLATFORMS = frozenset({"azure_serverless", "azure_foundry"})
_EXAMPLE_URL: dict[str, str] = {
    "azure_serverless": "https://<name>.<region>.inference.ai.azure.com",
    "azure_foundry": "https://<resource>.services.ai.azure.com",
}

# The properties of ChatCompletionRequest in Mistral's OpenAPI spec (additionalProperties: false).
CHAT_FIELDS = frozenset(
    {
        "model", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed",
        "metadata", "messages", "response_format", "tools", "tool_choice", "presence_penalty",
        "frequency_penalty", "n", "prediction", "parallel_tool_calls", "prompt_mode",
        "reasoning_effort", "guardrails", "prompt_cache_key", "safe_prompt",
    }
)  # fmt: skip
# SystemMessage, UserMessage, AssistantMessage and ToolMessage, by role.
MESSAGE_FIELDS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content"}),
    "user": frozenset({"role", "content"}),
    "assistant": frozenset({"role", "content", "tool_calls", "prefix"}),
    "tool": frozenset({"role", "content", "tool_call_id", "name"}),
}
FUNCTION_FIELDS = frozenset({"name", "description", "strict", "parameters"})
# FIMCompletionRequest (additionalProperties: false).
FIM_FIELDS = frozenset(
    {
        "model", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed",
        "metadata", "prompt", "suffix", "min_tokens", "prompt_cache_key",
    }
)  # fmt: skip
EMBEDDING_FIELDS = frozenset(
    {"model", "metadata", "input", "output_dimension", "output_dtype", "encoding_format"}
)
# OpenAI names with a Mistral equivalent. When a caller sends both, the Mistral name wins.
CHAT_RENAMES = {"max_completion_tokens": "max_tokens", "seed": "random_seed"}
EMBEDDING_RENAMES = {"dimensions": "output_dimension"}
REASONING_EFFORTS = frozenset({"high", "none"})
# The gateway honours these itself: Mistral always puts usage in a stream's last chunk.
_HANDLED = frozenset({"model", "stream", "stream_options"})
# The gateway's own answers carry this; callers echo it back in the conversation history.
_ECHOED_OUTPUT = frozenset({"reasoning_content"})

_MISTRAL_ID = re.compile(r"[a-zA-Z0-9]{9}")
_BASE62 = string.digits + string.ascii_letters
_CONTEXT_LENGTH = re.compile(r"too large for model|context length|maximum context", re.I)
_HTML_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)


def mistral_tool_call_id(call_id: str) -> str:
    """The id Mistral accepts (9 of ``[a-zA-Z0-9]``): unchanged if valid, else a stable hash."""
    if _MISTRAL_ID.fullmatch(call_id):
        return call_id
    number = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


class ToolCallIds:
    """One call's tool-call ids in Mistral's form, and the caller's originals, so that an
    answer quoting one of them gets the caller's id back. It lives as long as its request
    (``UpstreamRequest.context``): concurrent calls never share or evict each other's."""

    def __init__(self) -> None:
        self._original: dict[str, str] = {}

    def outbound(self, call_id: str) -> str:
        mapped = mistral_tool_call_id(call_id)
        if mapped != call_id:
            self._original[mapped] = call_id
        return mapped

    def inbound(self, call_id: str) -> str:
        return self._original.get(call_id, call_id)


def _ids_of(request: UpstreamRequest) -> ToolCallIds:
    context = request.context
    return context if isinstance(context, ToolCallIds) else ToolCallIds()


class MistralSettings(ProviderSettings):
    """``type: mistral`` — La Plateforme by default; ``platform`` selects Azure AI hosting."""

    platform: Platform = "la_plateforme"
    api_version: str = Field(
        default="2024-05-01-preview", description="azure_foundry: the api-version query value."
    )
    auth_header: Literal["authorization", "api-key"] | None = Field(
        default=None,
        description="How the key is sent: 'Authorization: Bearer' (default) or 'api-key' "
        "(default on azure_foundry).",
    )

    @model_validator(mode="after")
    def _endpoint_is_known(self) -> MistralSettings:
        if self.base_url is None:
            if self.platform != "la_plateforme":
                raise ValueError(
                    f"platform '{self.platform}' needs base_url, the endpoint's address "
                    f"(e.g. {_EXAMPLE_URL[self.platform]})"
                )
            self.base_url = LA_PLATEFORME_URL
        if "?" in self.base_url:
            raise ValueError("base_url must not contain a query; set api_version instead")
        return self


def _inert(value: Any) -> bool:
    """A value that asks for nothing (null, false, empty): removing it changes nothing."""
    return value is None or value is False or (isinstance(value, str | list | dict) and not value)


def _text_and_reasoning(content: list[Any]) -> tuple[str, str]:
    """Split Mistral content chunks into answer text and thinking text (reasoning models)."""
    text: list[str] = []
    thinking: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            text.append(str(part.get("text") or ""))
        elif part.get("type") == "thinking":
            for inner in part.get("thinking") or []:
                if isinstance(inner, dict) and inner.get("type") == "text":
                    thinking.append(str(inner.get("text") or ""))
    return "".join(text), "".join(thinking)


def openai_usage(usage: Any) -> JSON | None:
    """Mistral's UsageInfo in OpenAI's shape (cached tokens under prompt_tokens_details)."""
    if not isinstance(usage, dict):
        return None
    out: JSON = {
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "total_tokens": int(usage.get("total_tokens") or 0),
    }
    cached = usage.get("num_cached_tokens")
    for key in ("prompt_tokens_details", "prompt_token_details"):
        details = usage.get(key)
        if cached is None and isinstance(details, dict):
            cached = details.get("cached_tokens")
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    return out


class MistralStreamTranslator(StreamTranslator):
    """Mistral SSE → OpenAI chunks. Tool calls arrive whole and get OpenAI stream indexes;
    usage, which Mistral puts in its last content chunk, moves to a chunk of its own."""

    def __init__(self, provider: MistralProvider, deployment: Deployment, ids: ToolCallIds) -> None:
        super().__init__()
        self._provider = provider
        self._deployment = deployment
        self._ids = ids
        self._created = int(time.time())
        self._calls_seen: dict[int, int] = {}  # choice index → tool calls streamed so far

    def feed(self, event: SSEEvent) -> list[JSON]:
        if event.data == b"[DONE]":
            self.finished = True
            return []
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            where = self._provider.where(self._deployment)
            raise MalformedEventError(f"{where} sent an undecodable event") from exc
        if not isinstance(chunk, dict):
            return []
        if "choices" not in chunk and ("error" in chunk or "message" in chunk):
            info = read_error(chunk)
            where = self._provider.where(self._deployment)
            raise StreamInterruptedError(
                f"{where} reported an error mid-stream: {info.message or 'no message'}"
            )
        choices = chunk.get("choices") or []
        for choice in choices:
            self._choice(choice)
        chunk["object"] = "chat.completion.chunk"
        if "created" not in chunk:
            chunk["created"] = self._created
        usage = openai_usage(chunk.pop("usage")) if "usage" in chunk else None
        out = [chunk] if choices or usage is None else []
        if usage is not None:
            head = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
            out.append({**head, "choices": [], "usage": usage})
        return out

    def _choice(self, choice: JSON) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            index = int(choice.get("index") or 0)
            first = self._calls_seen.get(index, 0)
            calls = self._provider.normalise_message(delta, self._ids, first_call_index=first)
            self._calls_seen[index] = first + calls
        reason = choice.get("finish_reason")
        if reason == "error":
            raise StreamInterruptedError(
                f"{self._provider.where(self._deployment)} ended the answer with finish_reason "
                "'error'; the answer above is incomplete"
            )
        choice["finish_reason"] = "length" if reason == "model_length" else reason


class MistralProvider(Provider):
    """Chat completions and embeddings on Mistral's API, on La Plateforme or Azure AI."""

    type_name: ClassVar[str] = "mistral"
    settings_model: ClassVar[type[ProviderSettings]] = MistralSettings
    capabilities = Capabilities(
        streamed_tool_call_deltas=False,
        logprobs=False,
        assistant_prefill=True,
        fim=True,
        batch=True,
    )
    tokenizer: ClassVar[TokenizerFamily] = "mistral"
    telemetry_name: ClassVar[str | None] = "mistral_ai"

    @classmethod
    def price_family(cls, settings: ProviderSettings) -> str:
        """Mistral models bought through Azure AI are sold by Azure, at Azure's prices."""
        if getattr(settings, "platform", None) in AZURE_AI_PLATFORMS:
            return "azure-ai"
        return "mistral"

    @classmethod
    def price_families(cls) -> tuple[str, ...]:
        return ("mistral", "azure-ai")

    def echo_filter(self, prefix: str) -> EchoedPrefix:
        """Mistral's ``prefix: true`` answers start by repeating the prefix."""
        return EchoedPrefix(prefix)

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        super().__init__(name, settings)
        assert isinstance(settings, MistralSettings)
        self.platform: Platform = settings.platform
        self.api_version = settings.api_version
        self.root = self._root(settings.base_url or LA_PLATEFORME_URL)
        if self.platform == "azure_foundry":  # Azure's inference API has no FIM route
            self.capabilities = replace(self.capabilities, fim=False)
        headers = {"content-type": "application/json"}
        if settings.api_key is not None:
            key = settings.api_key.get_secret_value()
            default = "api-key" if self.platform == "azure_foundry" else "authorization"
            if (settings.auth_header or default) == "api-key":
                headers["api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        if self.platform == "azure_foundry":
            # Azure's inference layer rejects parameters outside its own schema unless told to
            # hand them to the model; ours are already in Mistral's schema.
            headers["extra-parameters"] = "pass-through"
        headers.update(settings.headers)
        self.json_headers = {**headers, "accept": "application/json"}
        self.stream_headers = {**headers, "accept": "text/event-stream"}
        if self.platform == "la_plateforme":  # Azure AI's Mistral models have no batch API
            self.batches = MistralBatches(self.root, self.json_headers)

    def _root(self, base_url: str) -> str:
        root = base_url.rstrip("/").removesuffix("/chat/completions")
        if self.platform == "azure_serverless" and not root.endswith("/v1"):
            root += "/v1"
        elif self.platform == "azure_foundry" and not root.endswith("/models"):
            root += "/models"
        return root

    def url(self, operation: str) -> str:
        if self.platform == "azure_foundry":
            return f"{self.root}/{operation}?api-version={self.api_version}"
        return f"{self.root}/{operation}"

    def where(self, deployment: Deployment) -> str:
        return f"provider '{self.name}' (deployment '{deployment.id}')"

    # -- requests ----------------------------------------------------------------------
    def chat_request(self, body: JSON, deployment: Deployment, *, stream: bool) -> UpstreamRequest:
        ids = ToolCallIds()

        def field(key: str, value: Any, dropped: list[str]) -> Any:
            return self._chat_field(key, value, dropped, deployment, ids)

        return self._rebuilt("chat/completions", body, CHAT_FIELDS, field, deployment, stream, ids)

    def fim_request(self, body: JSON, deployment: Deployment, *, stream: bool) -> UpstreamRequest:
        """``/fim/completions``: the body rebuilt from the spec's allow-list, like chat's."""
        return self._rebuilt(
            "fim/completions", body, FIM_FIELDS, lambda _, v, __: v, deployment, stream, None
        )

    def fim_model(self, deployment: Deployment) -> bool:
        """Mistral completes fill-in-the-middle with its codestral models only."""
        return (deployment.base_model or deployment.model).lower().startswith("codestral")

    def _rebuilt(
        self,
        operation: str,
        body: JSON,
        fields: frozenset[str],
        field: Callable[[str, Any, list[str]], Any],
        deployment: Deployment,
        stream: bool,
        context: ToolCallIds | None,
    ) -> UpstreamRequest:
        """A request whose body keeps only what Mistral's spec allows (under Mistral's names),
        each value passed through ``field``; the rest is dropped and reported."""
        dropped: list[str] = []
        out: JSON = {"model": deployment.model}
        for key, value in body.items():
            if key in _HANDLED or value is None:
                continue
            target = CHAT_RENAMES.get(key, key)
            if _accepted(key, target, value, body, fields):
                out[target] = field(target, value, dropped)
            else:
                _note(dropped, key, value)
        if stream:
            out["stream"] = True
        self._check_dropped(dropped, deployment)
        return UpstreamRequest(
            "POST",
            self.url(operation),
            self.stream_headers if stream else self.json_headers,
            orjson.dumps(out),
            dropped_params=tuple(dropped),
            context=context,
        )

    def _chat_field(
        self, key: str, value: Any, dropped: list[str], dep: Deployment, ids: ToolCallIds
    ) -> Any:
        if key == "messages" and isinstance(value, list):
            return [
                self._message(m, dropped, dep, ids) if isinstance(m, dict) else m for m in value
            ]
        if key == "tools" and isinstance(value, list):
            return [_tool(t) if isinstance(t, dict) else t for t in value]
        if key == "tool_choice" and value == "required":
            return "any"
        if key == "prediction" and isinstance(value, dict):
            content = value.get("content")
            if isinstance(content, list):  # OpenAI allows text parts; Mistral a string
                value = {**value, "content": _text_and_reasoning(content)[0]}
        return value

    def _message(
        self, message: JSON, dropped: list[str], deployment: Deployment, ids: ToolCallIds
    ) -> JSON:
        role = message.get("role")
        if role == "developer":
            role = "system"
        elif role == "function":
            raise InvalidRequestError(
                f"{self.where(deployment)}: Mistral has no 'function' role (deprecated by "
                "OpenAI); send the result as a 'tool' message with its tool_call_id",
                param="messages",
                provider=self.name,
                deployment=deployment.id,
            )
        allowed = MESSAGE_FIELDS.get(str(role))
        if allowed is None:
            return message  # an unknown role: Mistral's own validation names it
        out: JSON = {"role": role}
        for key, value in message.items():
            if key == "role" or key in _ECHOED_OUTPUT:
                continue
            if key not in allowed:
                _note(dropped, f"messages.{key}", value)
            elif key == "tool_calls" and isinstance(value, list):
                out[key] = [_tool_call(c, ids) for c in value if isinstance(c, dict)] or None
            elif key == "tool_call_id" and isinstance(value, str):
                out[key] = ids.outbound(value)
            else:
                out[key] = value
        return {k: v for k, v in out.items() if v is not None or k == "content"}

    def _check_dropped(self, dropped: list[str], deployment: Deployment) -> None:
        if dropped and not self.settings.drop_unsupported_params:
            names = ", ".join(f"'{n}'" for n in dropped)
            raise InvalidRequestError(
                f"{self.where(deployment)}: Mistral does not support {names}; remove "
                f"{'them' if len(dropped) > 1 else 'it'} from the request, or set "
                f"drop_unsupported_params: true on provider '{self.name}' to have the gateway "
                "drop unsupported parameters",
                param=dropped[0],
                code="unsupported_parameter",
                provider=self.name,
                deployment=deployment.id,
            )

    # -- answers -----------------------------------------------------------------------
    def chat_response(self, body: bytes, deployment: Deployment, request: UpstreamRequest) -> JSON:
        data = parse_json_object(body, self, deployment)
        ids = _ids_of(request)
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise UpstreamError(
                f"{self.where(deployment)} sent an answer without 'choices'",
                status=502,
                code="bad_upstream_response",
            )
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if isinstance(choice.get("message"), dict):
                self.normalise_message(choice["message"], ids, first_call_index=None)
            reason = choice.get("finish_reason")
            if reason == "error":
                raise UpstreamError(
                    f"{self.where(deployment)} ended the answer with finish_reason 'error'; "
                    "no complete answer was produced",
                    status=502,
                    code="upstream_generation_error",
                )
            choice["finish_reason"] = "length" if reason == "model_length" else reason
        data["object"] = "chat.completion"
        data.setdefault("created", int(time.time()))
        if "usage" in data:
            data["usage"] = openai_usage(data["usage"])
        return data

    def normalise_message(
        self, message: JSON, ids: ToolCallIds, *, first_call_index: int | None
    ) -> int:
        """Make a Mistral message or delta OpenAI-shaped in place; returns its tool-call count.

        ``first_call_index`` is given for stream deltas, whose tool calls need an ``index``."""
        if (
            "tool_calls" not in message
            and "prefix" not in message
            and not isinstance(message.get("content"), list)
        ):
            return 0  # the commonest, a piece of text: OpenAI-shaped already
        message.pop("prefix", None)
        content = message.get("content")
        if isinstance(content, list):
            text, reasoning = _text_and_reasoning(content)
            message["content"] = text
            if reasoning:
                message["reasoning_content"] = reasoning
        calls = message.get("tool_calls")
        if not calls:
            message.pop("tool_calls", None)
            return 0
        out = []
        for i, call in enumerate(c for c in calls if isinstance(c, dict)):
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if not isinstance(arguments, str):  # the spec allows an object
                arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
            call_id = call.get("id")
            item: JSON = {
                "id": ids.inbound(call_id) if isinstance(call_id, str) else None,
                "type": "function",
                "function": {"name": function.get("name"), "arguments": arguments},
            }
            if first_call_index is not None:
                item = {"index": first_call_index + i, **item}
            out.append(item)
        message["tool_calls"] = out
        return len(out)

    def chat_stream(self, deployment: Deployment, request: UpstreamRequest) -> StreamTranslator:
        return MistralStreamTranslator(self, deployment, _ids_of(request))

    # -- embeddings --------------------------------------------------------------------
    def embeddings_request(self, body: JSON, deployment: Deployment) -> UpstreamRequest:
        dropped: list[str] = []
        out: JSON = {"model": deployment.model}
        for key, value in body.items():
            if key == "model" or value is None or (key, value) == ("encoding_format", "base64"):
                continue  # Mistral answers floats: the gateway encodes them as base64 itself
            target = EMBEDDING_RENAMES.get(key, key)
            if not _accepted(key, target, value, body, EMBEDDING_FIELDS):
                _note(dropped, key, value)
                continue
            if key == "input" and not (
                isinstance(value, str) or all(isinstance(v, str) for v in value)
            ):
                raise InvalidRequestError(
                    f"{self.where(deployment)}: Mistral embeds text only; send 'input' as a "
                    "string or a list of strings, not token ids",
                    param="input",
                    provider=self.name,
                    deployment=deployment.id,
                )
            out[target] = value
        self._check_dropped(dropped, deployment)
        return UpstreamRequest(
            "POST",
            self.url("embeddings"),
            self.json_headers,
            orjson.dumps(out),
            dropped_params=tuple(dropped),
        )

    def embeddings_response(self, body: bytes, deployment: Deployment) -> JSON:
        data = parse_json_object(body, self, deployment)
        data["object"] = "list"
        usage = openai_usage(data.get("usage"))
        if usage is not None:
            data["usage"] = {
                "prompt_tokens": usage["prompt_tokens"],
                "total_tokens": usage["total_tokens"],
            }
        return data

    # -- errors ------------------------------------------------------------------------
    def error(
        self, status: int, headers: Mapping[str, str], body: bytes, deployment: Deployment
    ) -> GatewayError:
        """Any of Mistral's (and Azure's) error shapes → the matching GatewayError."""
        info = read_error_body(body, headers)
        text = f"{self.where(deployment)} answered {status}: {info.message}"
        common: dict[str, Any] = {
            "provider": self.name,
            "deployment": deployment.id,
            "param": info.param,
            "headers": retry_headers(headers),
        }
        if info.code == "content_filter" or info.content_filtered:
            return ContentFilterError(text, **common)
        if status == 429 or info.type == "rate_limited":
            return RateLimitError(text, **common)
        if status < 500 and _CONTEXT_LENGTH.search(info.message):
            return ContextLengthExceededError(text, **common)
        if status in (401, 403):
            text += (
                f"; the gateway's key for provider '{self.name}' was refused (check its api_key)"
            )
        if status == 422:
            # OpenAI answers validation failures with 400; SDKs and frameworks expect that.
            return InvalidRequestError(text, code=info.code, **common)
        return UpstreamError(
            text,
            status=status,
            type="invalid_request_error" if status < 500 else "upstream_error",
            code=info.code,
            **common,
        )


def _accepted(key: str, target: str, value: Any, body: JSON, fields: frozenset[str]) -> bool:
    """Whether Mistral takes ``key`` (sent as ``target``, its Mistral name) with this value.
    A Mistral name given with a value wins over the OpenAI one; given as null, it is absent."""
    if target not in fields or (target != key and body.get(target) is not None):
        return False
    return key != "reasoning_effort" or value in REASONING_EFFORTS


def _note(dropped: list[str], name: str, value: Any) -> None:
    if not _inert(value) and name not in dropped:
        dropped.append(name)


def _tool_call(call: JSON, ids: ToolCallIds) -> JSON:
    function = call.get("function") or {}
    out: JSON = {
        "type": "function",
        "function": {
            "name": function.get("name"),
            "arguments": function.get("arguments") or "{}",
        },
    }
    if isinstance(call.get("id"), str):
        out["id"] = ids.outbound(call["id"])
    return out


def _tool(tool: JSON) -> JSON:
    function = tool.get("function")
    if tool.get("type", "function") != "function" or not isinstance(function, dict):
        return tool  # not a function tool: Mistral's own validation names it
    out = {k: v for k, v in function.items() if k in FUNCTION_FIELDS and v is not None}
    out.setdefault("parameters", {"type": "object", "properties": {}})  # required by Mistral
    return {"type": "function", "function": out}


# --- error bodies -----------------------------------------------------------------------


@dataclass(slots=True)
class ErrorInfo:
    """What an error body says, whatever its shape."""

    message: str = ""
    type: str | None = None
    code: str | None = None
    param: str | None = None
    content_filtered: bool = False


def read_error_body(body: bytes, headers: Mapping[str, str]) -> ErrorInfo:
    """Parse JSON in any of its shapes; describe HTML and plain text; never fail."""
    if not body.strip():
        return ErrorInfo("an empty body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        info = ErrorInfo()
        ctype = headers.get("content-type", "")
        if "html" in ctype or body.lstrip()[:1] == b"<":
            title = _HTML_TITLE.search(body)
            name = _clip(title.group(1).decode("utf-8", "replace")) if title else ""
            info.message = f"an HTML page{f' titled {name!r}' if name else ''} ({len(body)} bytes)"
        else:
            info.message = _clip(body.decode("utf-8", "replace")) or describe_body(body, headers)
        return info
    info = read_error(data)
    info.message = info.message or _clip(body.decode("utf-8", "replace"))
    return info


def read_error(data: Any, depth: int = 0) -> ErrorInfo:
    """What a decoded error says: ``{"detail": [...]}``, ``{"object": "error", "message": ...}``
    (the message a string, a JSON string, a dict or a detail list), ``{"message", "type":
    "rate_limited", "code"}``, or Azure's ``{"error": {"message", "details"}}``."""
    info = ErrorInfo()
    if depth > 4:
        return info
    if isinstance(data, str):
        stripped = data.strip()
        if stripped[:1] in ("{", "["):
            try:
                return read_error(orjson.loads(stripped), depth + 1)
            except orjson.JSONDecodeError:
                pass
        info.message = _clip(stripped)
    elif isinstance(data, list):
        info.message, info.param = _read_detail(data)
    elif isinstance(data, dict):
        parts = [
            read_error(data[key], depth + 1)
            for key in ("error", "message", "detail", "details")
            if data.get(key) is not None
        ]
        said: list[str] = []
        for part in parts:
            if part.message and part.message not in said:
                said.append(part.message)
        info.message = "; ".join(said)
        info.param = data["param"] if isinstance(data.get("param"), str) else None
        if isinstance(data.get("type"), str):
            info.type = data["type"]
        if data.get("code") is not None and not isinstance(data["code"], dict | list):
            info.code = str(data["code"])
        inner = data.get("innererror")
        info.content_filtered = isinstance(inner, dict) and (
            inner.get("code") == "ResponsibleAIPolicyViolation"
        )
        for part in parts:
            info.param = info.param or part.param
            info.type = info.type or part.type
            info.code = info.code or part.code
            info.content_filtered = info.content_filtered or part.content_filtered
    return info


def _read_detail(items: list[Any]) -> tuple[str, str | None]:
    """FastAPI-style validation items (``{"loc": ["body", ...], "msg": ...}``) as one line,
    and the first field they name."""
    parts: list[str] = []
    param: str | None = None
    for item in items:
        if isinstance(item, dict) and ("loc" in item or "msg" in item):
            loc = ".".join(str(p) for p in item.get("loc") or [] if p != "body")
            param = param or loc or None
            parts.append(f"{loc}: {item.get('msg', 'invalid')}" if loc else str(item.get("msg")))
        elif item is not None:
            parts.append(_clip(str(item)))
    more = f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""
    return "; ".join(parts[:5]) + more, param


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["MistralProvider", "MistralSettings", "mistral_tool_call_id"]
