"""A Mistral API emulator: La Plateforme, and Mistral models on Azure AI (serverless, Foundry).

Strict like the real service. Bodies are validated against models that mirror the schemas of
Mistral's OpenAPI spec, with extra fields forbidden at every level, so an OpenAI-only field, a
``developer`` role or a ``name`` on a user message is a 422 with a FastAPI ``detail`` list.
Tool-call ids must be 9 characters of ``[a-zA-Z0-9]`` (400, code 3280, as Mistral answers).
Streams carry tool calls whole in one chunk and usage in the last chunk, then ``data: [DONE]``.

``/v1/fim/completions`` (fill-in-the-middle) answers codestral models only, as a
``chat.completion`` whose content is ``<fill between 'PROMPT_END' and 'SUFFIX_START'>``
(the last word of the prompt, the first of the suffix); other models get a 400.

Flavors: ``la_plateforme`` (``/v1/...``, Bearer key), ``azure_serverless`` (``/v1/...``, Bearer
or ``api-key``) and ``azure_foundry`` (``/models/...?api-version=...``, ``api-key``, model name
in the body, Azure's ``extra-parameters`` rule and its ``{"error": {...}}`` envelope).
"""

from __future__ import annotations

import base64
import hashlib
import re
import string
import struct
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.emulators.common import (
    EmulatorBase,
    Fault,
    fault_response,
    json_response,
    sse,
    sse_response,
)

API_KEY = "mistral-test-key"
SERVERLESS_KEY = "azure-serverless-test-key"
FOUNDRY_KEY = "azure-foundry-test-key"
FOUNDRY_API_VERSION = "2024-05-01-preview"
FOUNDRY_MODELS = frozenset({"mistral-large-2411", "mistral-small-2503"})
# What Azure's inference layer accepts before the extra-parameters header comes into play.
AZURE_PARAMS = frozenset(
    {
        "messages", "model", "frequency_penalty", "presence_penalty", "temperature", "top_p",
        "max_tokens", "stop", "stream", "tools", "tool_choice", "response_format", "seed",
    }
)  # fmt: skip
TOOL_CALL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
Flavor = Literal["la_plateforme", "azure_serverless", "azure_foundry"]


# --- Mistral's request schemas (components/schemas in the spec) -----------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Content = str | list[dict[str, Any]]


class FunctionCall(_Strict):
    name: str
    arguments: dict[str, Any] | str


class ToolCall(_Strict):
    id: str = "null"
    type: Literal["function"] = "function"
    function: FunctionCall
    index: int = 0


class SystemMessage(_Strict):
    role: Literal["system"]
    content: Content


class UserMessage(_Strict):
    role: Literal["user"]
    content: Content | None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCall] | None = None
    prefix: bool = False


class ToolMessage(_Strict):
    role: Literal["tool"]
    content: Content | None
    tool_call_id: str | None = None
    name: str | None = None


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class Function(_Strict):
    name: str
    description: str = ""
    strict: bool = False
    parameters: dict[str, Any]


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: Function


class FunctionName(_Strict):
    name: str


class ToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: FunctionName


class JsonSchema(_Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchema | None = None


class Prediction(_Strict):
    type: Literal["content"] = "content"
    content: str = ""


class ChatCompletionRequest(_Strict):
    model: str
    temperature: float | None = Field(default=None, ge=0, le=1.5)
    top_p: float = Field(default=1.0, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=0)
    stream: bool = False
    stop: str | list[str] | None = None
    random_seed: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    messages: list[Message]
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | Literal["auto", "none", "any", "required"] = "auto"
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    n: int | None = Field(default=None, ge=1)
    prediction: Prediction | None = None
    parallel_tool_calls: bool = True
    prompt_mode: Literal["reasoning"] | None = None
    reasoning_effort: Literal["high", "none"] | None = None
    guardrails: list[dict[str, Any]] | None = None
    prompt_cache_key: str | None = None
    safe_prompt: bool = False


class FIMCompletionRequest(_Strict):
    model: str
    temperature: float | None = Field(default=None, ge=0, le=1.5)
    top_p: float = Field(default=1.0, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=0)
    stream: bool = False
    stop: str | list[str] | None = None
    random_seed: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    prompt: str
    suffix: str | None = ""
    min_tokens: int | None = Field(default=None, ge=0)
    prompt_cache_key: str | None = None


class EmbeddingRequest(_Strict):
    model: str
    metadata: dict[str, Any] | None = None
    input: str | list[str]
    output_dimension: int | None = Field(default=None, gt=0)
    output_dtype: Literal["float", "int8", "uint8", "binary", "ubinary"] = "float"
    encoding_format: Literal["float", "base64"] = "float"


# --- answers --------------------------------------------------------------------------------


def rate_limited(retry_after: str = "1") -> Fault:
    """The 429 La Plateforme sends when a workspace goes over its rate limit."""
    body = {"message": "Requests rate limit exceeded", "type": "rate_limited", "code": "1300"}
    return Fault(status=429, body=orjson.dumps(body), headers={"retry-after": retry_after})


def mistral_id(seed: str) -> str:
    """A deterministic id in Mistral's tool-call form."""
    alphabet = string.ascii_letters + string.digits
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:9])


def text_of(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content or ""


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as FastAPI reports them: ``loc`` starts with ``"body"``."""
    return [
        {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"], "input": e.get("input")}
        for e in exc.errors(include_url=False)
    ]


class MistralEmulator(EmulatorBase):
    """Serves one flavor of Mistral's API; see the module docstring."""

    def __init__(self, flavor: Flavor = "la_plateforme") -> None:
        super().__init__()
        self.flavor: Flavor = flavor
        self.next_finish_reason: str | None = None  # scripted, e.g. "model_length"
        self.tool_arguments_as_object = False  # the spec allows an object as well as a string
        prefix = "/models" if flavor == "azure_foundry" else "/v1"
        routes = [
            Route(f"{prefix}/chat/completions", self.chat, methods=["POST"]),
            Route(f"{prefix}/embeddings", self.embeddings, methods=["POST"]),
        ]
        if flavor != "azure_foundry":  # Azure's model inference API has no FIM route
            routes.append(Route(f"{prefix}/fim/completions", self.fim, methods=["POST"]))
        self.app = Starlette(routes=routes)

    def reset(self) -> None:
        super().reset()
        self.next_finish_reason = None
        self.tool_arguments_as_object = False

    # -- the shapes each flavor answers errors in -------------------------------------------
    def error(self, status: int, message: str, type_: str, code: str | None = None) -> Response:
        if self.flavor == "azure_foundry":
            return json_response({"error": {"code": code or type_, "message": message}}, status)
        body = {"object": "error", "message": message, "type": type_, "param": None, "code": code}
        return json_response(body, status)

    def invalid(self, exc: ValidationError) -> Response:
        detail = validation_detail(exc)
        if self.flavor == "azure_foundry":
            err = {"code": "Invalid input", "message": "invalid input error", "status": 422}
            return json_response({"error": {**err, "details": detail}}, 422)
        return Response(
            orjson.dumps({"detail": detail}, default=str),
            status_code=422,
            media_type="application/json",
        )

    def gate(self, request: Request, body: Any) -> Response | None:
        """Auth, and on Foundry the api-version, model and extra-parameters checks."""
        bearer = request.headers.get("authorization", "")
        api_key = request.headers.get("api-key")
        if self.flavor == "la_plateforme":
            if bearer != f"Bearer {API_KEY}":
                return json_response({"message": "Unauthorized", "request_id": "emulated"}, 401)
            return None
        key = SERVERLESS_KEY if self.flavor == "azure_serverless" else FOUNDRY_KEY
        if key not in (api_key, bearer.removeprefix("Bearer ")):
            return self.error(401, "Access denied due to invalid key.", "Unauthorized", "401")
        if self.flavor != "azure_foundry":
            return None
        if request.query_params.get("api-version") != FOUNDRY_API_VERSION:
            return self.error(
                400, "Missing or unsupported api-version query parameter.", "BadRequest"
            )
        if not isinstance(body, dict) or body.get("model") not in FOUNDRY_MODELS:
            model = body.get("model") if isinstance(body, dict) else None
            return self.error(400, f"Unknown model: {model}", "unknown_model")
        extra = sorted(k for k in body if k not in AZURE_PARAMS)
        mode = request.headers.get("extra-parameters", "error")
        if extra and mode == "drop":
            for k in extra:
                del body[k]
        elif extra and mode != "pass-through":
            return self.error(
                400,
                f"Extra parameters {extra} are not allowed when extra-parameters is not set or "
                "set to be 'error'. Set extra-parameters to 'pass-through' to pass to the model.",
                "BadRequest",
            )
        return None

    # -- chat ---------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        rec = await self.record(request)
        body = dict(rec.body) if isinstance(rec.body, dict) else rec.body
        if (denied := self.gate(request, body)) is not None:
            return denied
        fault = await self.take_fault()
        if fault is not None and fault.cut_after is None:
            return fault_response(fault)
        try:
            req = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            return self.invalid(exc)
        for msg in req.messages:
            ids = [c.id for c in msg.tool_calls or []] if isinstance(msg, AssistantMessage) else []
            if isinstance(msg, ToolMessage) and msg.tool_call_id is not None:
                ids.append(msg.tool_call_id)
            for call_id in ids:
                if not TOOL_CALL_ID.match(call_id):
                    return self.error(
                        400,
                        f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length "
                        "of 9.",
                        "invalid_function_call",
                        "3280",
                    )
        answer = self.completion(req)
        if req.stream:
            events = [sse(c) for c in self.chunks(answer)] + [b"data: [DONE]\n\n"]
            return sse_response(events, fault.cut_after if fault else None)
        return json_response(answer)

    def completion(self, req: ChatCompletionRequest) -> dict[str, Any]:
        """A deterministic chat.completion in Mistral's shape."""
        last = req.messages[-1]
        prompt_tokens = sum(len(text_of(m.content).split()) for m in req.messages)
        choices = []
        completion_tokens = 0
        for i in range(req.n or 1):
            message: dict[str, Any] = {"role": "assistant", "tool_calls": None, "prefix": False}
            finish = "stop"
            if req.tools and req.tool_choice != "none" and isinstance(last, UserMessage):
                message["content"] = ""
                message["tool_calls"] = self.tool_calls(req, i)
                finish = "tool_calls"
            else:
                text = self.text(req)
                words = text.split(" ")
                if req.max_tokens is not None and len(words) > req.max_tokens:
                    text, finish = " ".join(words[: req.max_tokens]), "length"
                message["content"] = text
                if req.model.startswith("magistral"):
                    thinking = {"type": "text", "text": "The user wants an echo."}
                    message["content"] = [
                        {"type": "thinking", "thinking": [thinking]},
                        {"type": "text", "text": text},
                    ]
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "finish_reason": self.next_finish_reason or finish,
                }
            )
            completion_tokens += len(text_of(message["content"]).split()) or 3
        return {
            "id": "cmpl-" + hashlib.sha256(req.model_dump_json().encode()).hexdigest()[:32],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "num_cached_tokens": 0,
                "prompt_audio_seconds": None,
            },
            "choices": choices,
        }

    def text(self, req: ChatCompletionRequest) -> str:
        last = req.messages[-1]
        if isinstance(last, AssistantMessage) and last.prefix:
            return f"{text_of(last.content)} and so on"
        if isinstance(last, ToolMessage):
            return f"the tool said: {text_of(last.content)}"
        if req.response_format and req.response_format.type != "text":
            return '{"answer": "echo"}'
        return f"echo: {text_of(last.content)}"

    def tool_calls(self, req: ChatCompletionRequest, choice: int) -> list[dict[str, Any]]:
        tools = req.tools or []
        if isinstance(req.tool_choice, ToolChoice):
            tools = [t for t in tools if t.function.name == req.tool_choice.function.name]
        elif not req.parallel_tool_calls:
            tools = tools[:1]
        calls = []
        for k, tool in enumerate(tools):
            args: dict[str, Any] | str = {"city": "Paris"}
            if not self.tool_arguments_as_object:
                args = orjson.dumps(args).decode()
            calls.append(
                {
                    "id": mistral_id(f"{tool.function.name}/{choice}/{k}/{len(req.messages)}"),
                    "function": {"name": tool.function.name, "arguments": args},
                    "index": k,
                }
            )
        return calls

    @staticmethod
    def chunks(answer: dict[str, Any]) -> list[dict[str, Any]]:
        """The SSE chunks Mistral sends: tool calls whole, usage in the last chunk."""
        head = {k: answer[k] for k in ("id", "object", "created", "model")}
        head["object"] = "chat.completion.chunk"
        out: list[dict[str, Any]] = []

        def add(i: int, delta: dict[str, Any], finish: str | None = None) -> None:
            choice = {"index": i, "delta": delta, "finish_reason": finish}
            out.append({**head, "choices": [choice]})

        for choice in answer["choices"]:
            i, msg = choice["index"], choice["message"]
            add(i, {"role": "assistant", "content": ""})
            content = msg["content"]
            if isinstance(content, list):
                add(i, {"content": [content[0]]})
                content = content[1]["text"]
            if msg["tool_calls"]:
                add(i, {"tool_calls": msg["tool_calls"]}, choice["finish_reason"])
                continue
            words = content.split(" ")
            for k, word in enumerate(words):
                last = k == len(words) - 1
                add(i, {"content": word if k == 0 else " " + word})
                if last:
                    out[-1]["choices"][0]["finish_reason"] = choice["finish_reason"]
        out[-1]["usage"] = answer["usage"]
        return out

    # -- fill-in-the-middle ------------------------------------------------------------------
    async def fim(self, request: Request) -> Response:
        rec = await self.record(request)
        body = dict(rec.body) if isinstance(rec.body, dict) else rec.body
        if (denied := self.gate(request, body)) is not None:
            return denied
        fault = await self.take_fault()
        if fault is not None and fault.cut_after is None:
            return fault_response(fault)
        try:
            req = FIMCompletionRequest.model_validate(body)
        except ValidationError as exc:
            return self.invalid(exc)
        if not req.model.startswith("codestral"):
            return self.error(
                400, f"Model {req.model} does not support FIM completions", "invalid_request_fim"
            )
        before = (req.prompt.split() or [""])[-1]
        after = ((req.suffix or "").split() or [""])[0]
        text = f"<fill between {before!r} and {after!r}>"
        words = text.split(" ")
        finish = "stop"
        if req.max_tokens is not None and len(words) > req.max_tokens:
            text, finish = " ".join(words[: req.max_tokens]), "length"
        prompt_tokens = len(req.prompt.split()) + len((req.suffix or "").split())
        completion_tokens = len(text.split())
        answer = {
            "id": "fim-" + hashlib.sha256(req.model_dump_json().encode()).hexdigest()[:32],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "content": text,
                        "tool_calls": None,
                        "prefix": False,
                        "role": "assistant",
                    },
                    "finish_reason": self.next_finish_reason or finish,
                }
            ],
        }
        if req.stream:
            events = [sse(c) for c in self.chunks(answer)] + [b"data: [DONE]\n\n"]
            return sse_response(events, fault.cut_after if fault else None)
        return json_response(answer)

    # -- embeddings ---------------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        rec = await self.record(request)
        body = dict(rec.body) if isinstance(rec.body, dict) else rec.body
        if (denied := self.gate(request, body)) is not None:
            return denied
        fault = await self.take_fault()
        if fault is not None:
            return fault_response(fault)
        try:
            req = EmbeddingRequest.model_validate(body)
        except ValidationError as exc:
            return self.invalid(exc)
        inputs = [req.input] if isinstance(req.input, str) else req.input
        dims = req.output_dimension or 8
        data = []
        for i, text in enumerate(inputs):
            vector: list[float] | str = [round(len(text) / (k + 1), 4) for k in range(dims)]
            if req.encoding_format == "base64":
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "embedding": vector, "index": i})
        tokens = sum(len(text.split()) for text in inputs)
        return json_response(
            {
                "id": "embd-emulated",
                "object": "list",
                "data": data,
                "model": req.model,
                "usage": {
                    "prompt_tokens": tokens,
                    "completion_tokens": 0,
                    "total_tokens": tokens,
                    "prompt_audio_seconds": None,
                },
            }
        )
