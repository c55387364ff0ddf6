"""Canonical request and response models: the OpenAI chat-completions wire shape.

Requests are validated into these models at the edge. Responses travel through the engine as
plain dicts in the same shape (cheap to pass through and to serialise with orjson) and become
these models only where a typed object is handed to a library user.
Every model allows extra fields: providers add fields over time and the gateway must not drop them.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from gateway.facts import GatewayFacts
from gateway.wire import JSON, UpstreamRequest

# Fields a caller may put in the body for the gateway itself; never sent upstream.
GATEWAY_FIELDS = frozenset({"fallbacks", "gateway_timeout"})


def json_size(value: JSON) -> int:
    """Bytes of ``value`` as JSON: a bound of its tokens were it sent as text."""
    return len(orjson.dumps(value))


def content_part_bound(part: JSON, media: Callable[[JSON], int]) -> int:
    """Tokens one content part can take at most: text by its UTF-8 size, the rest by ``media``."""
    for field in ("text", "refusal"):  # {"type": "text", "text": …}, {"type": "refusal", …}
        if part.get("type") == field and isinstance(part.get(field), str):
            return len(part[field].encode())
    return media(part)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _WithFacts(_Open):
    """A response that carries the gateway's facts about the call that produced it."""

    _facts: GatewayFacts = PrivateAttr(default_factory=GatewayFacts)

    @property
    def facts(self) -> GatewayFacts:
        """Request id, provider, deployment, attempts, fallback use, cost and whether the usage
        was estimated, in-process or from a running gateway alike."""
        return self._facts

    @property
    def gateway(self) -> object | None:
        """In-process results only (``gateway.sdk.local``): the engine's record of the call."""
        return None


# --- requests -------------------------------------------------------------------------------


class FunctionCall(_Open):
    name: str | None = None
    arguments: str | None = None


class ToolCall(_Open):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[JSON] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    """POST /v1/chat/completions body. Unknown fields are kept and passed to the adapter."""

    operation: ClassVar[Literal["chat", "fim", "responses"]] = "chat"

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=128)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    tools: list[JSON] | None = None
    tool_choice: str | JSON | None = None
    response_format: JSON | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = None
    user: str | None = None
    fallbacks: list[str] | None = None
    gateway_timeout: float | None = Field(default=None, gt=0)

    def upstream_body(self) -> JSON:
        """The body as the caller sent it, less the gateway's own fields."""
        body = self.model_dump(exclude_unset=True, exclude=set(GATEWAY_FIELDS))
        return body

    def prompt_messages(self) -> list[JSON]:
        """The prompt as chat messages, for counting its tokens when the provider did not."""
        messages: list[JSON] = self.upstream_body()["messages"]
        return messages

    def estimated_tokens(self) -> int:
        """A rough token count (4 characters a token) plus the output cap, for quotas."""
        chars = 0
        for m in self.messages:
            if isinstance(m.content, str):
                chars += len(m.content)
            elif isinstance(m.content, list):
                chars += sum(len(str(p.get("text", ""))) for p in m.content)
        return chars // 4 + (self.max_completion_tokens or self.max_tokens or 0)

    def prompt_token_bound(self, media: Callable[[JSON], int] = json_size) -> int:
        """An upper bound of the prompt's tokens (a token is at least one UTF-8 byte), for
        budget reservations that must never be below the real cost. Content parts other than
        text (images, audio, files) count ``media(part)``: the model's bound for them."""
        size = 0
        for m in self.messages:
            size += 16  # role, separators and names
            if isinstance(m.content, str):
                size += len(m.content.encode())
            elif isinstance(m.content, list):
                size += sum(content_part_bound(p, media) for p in m.content)
            for call in m.tool_calls or ():
                size += len((call.function.arguments or "").encode()) + 16
        if self.tools:
            size += len(str(self.tools).encode())
        return size

    def needs(self) -> frozenset[str]:
        """Capabilities (see providers.base.Capabilities) a deployment must have to serve this."""
        needs = {"chat"}
        if self.stream:
            needs.add("streaming")
        if self.tools:
            needs.add("tools")
        fmt = (self.response_format or {}).get("type")
        if fmt in ("json_object", "json_schema"):
            needs.add(fmt)
        if self.n is not None and self.n > 1:
            needs.add("multiple_choices")
        last = self.messages[-1]
        if last.role == "assistant" and (last.model_extra or {}).get("prefix"):
            needs.add("assistant_prefill")
        return frozenset(needs)

    @property
    def wants_stream_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def drop_native(self) -> None:
        """Serve this request through chat only: its native form would carry what the gateway
        has changed in the messages (personal data it redacted)."""

    def cache_body(self) -> JSON:
        """The body the response cache keys this request by: the one sent upstream."""
        return self.upstream_body()

    def native_request(self, deployment: Any) -> UpstreamRequest | None:
        """The request in another API a deployment serves natively (a Responses API request
        sent to the provider's own route; streamed if this request is), or None: it is sent
        as chat. A native stream is read with ``deployment.provider.responses_stream``."""
        return None

    def native_answer(self, body: bytes, deployment: Any) -> JSON:
        """The answer to ``native_request`` as a chat.completion dict."""
        raise NotImplementedError


class FimCompletionRequest(_Open):
    """POST /v1/fim/completions body (Mistral's fill-in-the-middle): complete ``prompt`` so
    that it leads into ``suffix``. The answer is a chat.completion, so it takes the chat path
    through the engine; only the upstream request differs (``Provider.fim_request``)."""

    operation: ClassVar[Literal["chat", "fim", "responses"]] = "fim"

    model: str = Field(min_length=1)
    prompt: str
    suffix: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    min_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=1.5)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    random_seed: int | None = Field(default=None, ge=0)
    fallbacks: list[str] | None = None
    gateway_timeout: float | None = Field(default=None, gt=0)

    # What the engine reads from a chat request; a FIM request has none of these.
    max_completion_tokens: ClassVar[None] = None
    n: ClassVar[None] = None
    tools: ClassVar[None] = None
    user: ClassVar[None] = None

    def upstream_body(self) -> JSON:
        return self.model_dump(exclude_unset=True, exclude=set(GATEWAY_FIELDS))

    def prompt_messages(self) -> list[JSON]:
        return [{"role": "user", "content": self.prompt + (self.suffix or "")}]

    def estimated_tokens(self) -> int:
        return (len(self.prompt) + len(self.suffix or "")) // 4 + (self.max_tokens or 0)

    def prompt_token_bound(self, media: Callable[[JSON], int] = json_size) -> int:
        return len(self.prompt.encode()) + len((self.suffix or "").encode()) + 16

    def needs(self) -> frozenset[str]:
        return frozenset({"fim", "streaming"} if self.stream else {"fim"})

    @property
    def wants_stream_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def native_request(self, deployment: Any) -> UpstreamRequest | None:
        return None

    def native_answer(self, body: bytes, deployment: Any) -> JSON:
        raise NotImplementedError


# What a legacy text completion needs of a deployment (see providers.base.Deployment):
# any way to answer it (OpenAI's /completions route, FIM, or chat), a way that honours a
# suffix (the route or FIM), or the route itself (echo, best_of, logprobs, several prompts).
TEXT_COMPLETION = "text_completion"
TEXT_COMPLETION_SUFFIX = "text_completion_suffix"
TEXT_COMPLETION_NATIVE = "text_completion_native"

TokenPrompt = Annotated[list[int], Field(min_length=1)]


def text_completion_needs(body: JSON) -> frozenset[str]:
    """What a /v1/completions body needs of a deployment (the adapter decides with it how to
    send the request, the router which deployments may)."""
    needs = {TEXT_COMPLETION}
    if body.get("stream"):
        needs.add("streaming")
    if body.get("suffix"):
        needs.add(TEXT_COMPLETION_SUFFIX)
    prompt = body.get("prompt")
    several = isinstance(prompt, list) and any(not isinstance(p, str) for p in prompt[:2])
    several = several or (isinstance(prompt, list) and len(prompt) > 1)
    if (
        several
        or body.get("echo")
        or (body.get("best_of") or 1) > 1
        or body.get("logprobs") is not None
    ):
        needs.add(TEXT_COMPLETION_NATIVE)
    if (body.get("n") or 1) > 1:
        needs.add("multiple_choices")
    return frozenset(needs)


class TextCompletionRequest(_Open):
    """POST /v1/completions body (OpenAI's legacy text completions). Inside the gateway it is
    answered as a chat.completion (``text`` as the message's content), so it takes the chat
    path through the engine; the adapter sends it to the provider's own /completions route,
    as FIM, or as one user message (``Provider.completions_request``)."""

    operation: ClassVar[Literal["completions"]] = "completions"

    model: str = Field(min_length=1)
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | TokenPrompt
        | Annotated[list[TokenPrompt], Field(min_length=1)]
    )
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = Field(default=None, ge=0, le=20)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    # The wire's ``n`` (answers per prompt); ``n`` below is what the call can be billed for.
    per_prompt: int | None = Field(default=None, ge=1, le=128, alias="n")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    fallbacks: list[str] | None = None
    gateway_timeout: float | None = Field(default=None, gt=0)

    # What the engine reads from a chat request; a text completion has none of these.
    max_completion_tokens: ClassVar[None] = None
    tools: ClassVar[None] = None

    @property
    def n(self) -> int:
        """The answers the call generates, and may be billed for: ``n`` (or ``best_of``, the
        candidates generated to pick from) for each prompt."""
        return max(self.per_prompt or 1, self.best_of or 1) * len(self.prompts())

    def native_request(self, deployment: Any) -> UpstreamRequest | None:
        return None  # its own route is the adapter's business (``completions_request``)

    def native_answer(self, body: bytes, deployment: Any) -> JSON:
        raise NotImplementedError

    def prompts(self) -> list[str | list[int]]:
        """The prompts, one per item (a string, or a list of token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        out: list[str | list[int]] = []
        for item in prompt:
            if isinstance(item, int):
                return [[i for i in prompt if isinstance(i, int)]]  # one prompt as token ids
            out.append(item)
        return out

    def upstream_body(self) -> JSON:
        return self.model_dump(exclude_unset=True, exclude=set(GATEWAY_FIELDS), by_alias=True)

    def prompt_messages(self) -> list[JSON]:
        texts = [p if isinstance(p, str) else " ".join(map(str, p)) for p in self.prompts()]
        return [{"role": "user", "content": "\n".join(texts) + (self.suffix or "")}]

    def estimated_tokens(self) -> int:
        return self.prompt_token_bound() // 4 + (self.max_tokens or 0) * self.n

    def prompt_token_bound(self, media: Callable[[JSON], int] = json_size) -> int:
        size = len((self.suffix or "").encode()) + 16
        for p in self.prompts():
            # A token id is one token; text at most one a byte.
            size += len(p) if isinstance(p, list) else len(p.encode())
        return size

    def needs(self) -> frozenset[str]:
        return text_completion_needs(self.upstream_body())

    @property
    def wants_stream_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# A request that is answered with a chat.completion (or its chunks).
CompletionRequest = ChatCompletionRequest | FimCompletionRequest | TextCompletionRequest


class EmbeddingRequest(_Open):
    """POST /v1/embeddings body."""

    operation: ClassVar[Literal["embeddings"]] = "embeddings"

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    fallbacks: list[str] | None = None
    gateway_timeout: float | None = Field(default=None, gt=0)

    def upstream_body(self) -> JSON:
        return self.model_dump(exclude_unset=True, exclude=set(GATEWAY_FIELDS))

    def needs(self) -> frozenset[str]:
        return frozenset({"embeddings"})


def embeddings_encoded(answer: JSON, encoding_format: str | None) -> JSON:
    """``answer``'s vectors, in place, in the format the caller asked for, whatever the provider
    sent: ``base64`` is the bytes of little-endian float32 values (as OpenAI sends them), any
    other format a list of floats. A vector that is neither is left as it is."""
    base64_asked = encoding_format == "base64"
    for item in answer.get("data") or ():
        vector = item.get("embedding") if isinstance(item, dict) else None
        try:
            if base64_asked and isinstance(vector, list):
                values = array("f", vector)
                if sys.byteorder == "big":
                    values.byteswap()
                item["embedding"] = base64.b64encode(values.tobytes()).decode()
            elif not base64_asked and isinstance(vector, str):
                values = array("f", base64.b64decode(vector, validate=True))
                if sys.byteorder == "big":
                    values.byteswap()
                item["embedding"] = values.tolist()
        except (TypeError, ValueError, OverflowError):
            continue  # not a vector of numbers: passed on unchanged
    return answer


# --- responses ------------------------------------------------------------------------------


class PromptTokensDetails(_Open):
    cached_tokens: int | None = None


class CompletionTokensDetails(_Open):
    reasoning_tokens: int | None = None


class Usage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ResponseMessage(_Open):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class Choice(_Open):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = None
    logprobs: JSON | None = None


class ChatCompletion(_WithFacts):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChoiceDelta(_Open):
    role: str | None = None
    content: str | None = None
    tool_calls: list[JSON] | None = None
    refusal: str | None = None


class ChunkChoice(_Open):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: JSON | None = None


class ChatCompletionChunk(_Open):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Embedding(_Open):
    object: str = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Open):
    prompt_tokens: int = 0
    total_tokens: int = 0


class CreateEmbeddingResponse(_WithFacts):
    object: str = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage | None = None


class Model(_Open):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "llm-gateway"


class ModelList(_Open):
    object: str = "list"
    data: list[Model]


# --- the Responses API ----------------------------------------------------------------------


class ResponseUsage(_Open):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: JSON | None = None
    output_tokens_details: JSON | None = None


class ResponseItem(_Open):
    """An output (or input) item: a ``message``, a ``function_call``, … (fields by type)."""

    type: str
    id: str | None = None
    status: str | None = None
    role: str | None = None
    content: list[JSON] | str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


class ResponseObject(_WithFacts):
    """A Responses API response (``object: response``)."""

    id: str
    object: str = "response"
    created_at: int
    status: str
    model: str
    output: list[ResponseItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    previous_response_id: str | None = None
    error: JSON | None = None
    incomplete_details: JSON | None = None

    @property
    def output_text(self) -> str:
        """The text of every ``output_text`` part of the output's messages, joined."""
        return "".join(
            str(part.get("text") or "")
            for item in self.output
            if item.type == "message" and isinstance(item.content, list)
            for part in item.content
            if part.get("type") == "output_text"
        )


class ResponseStreamEvent(_Open):
    """One event of a streamed response (``response.output_text.delta``, …); the ones that
    carry the whole response (``response.created``, ``response.completed``, …) have it in
    ``response``."""

    type: str
    sequence_number: int = 0
    response: ResponseObject | None = None
    delta: str | None = None


class ResponseDeleted(_Open):
    id: str
    object: str = "response.deleted"
    deleted: bool = True
