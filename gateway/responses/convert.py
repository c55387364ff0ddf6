"""The Responses API in terms of chat completions, both ways, with no I/O.

A ``POST /v1/responses`` body becomes a canonical chat request (instructions → a system
message, input items → messages, function tools and calls, ``text.format`` → response_format,
``max_output_tokens`` → the output cap), which every provider serves; the chat answer, or its
chunks, become the response object, or the Responses stream's typed events.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from gateway.errors import InvalidRequestError
from gateway.types import GATEWAY_FIELDS, ChatCompletionRequest, _Open
from gateway.wire import JSON, UpstreamRequest
from providers.openai import chat_usage

# What a response echoes of its request when the request left it out.
_DEFAULTS: JSON = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": None,
    "temperature": None,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": None,
    "truncation": "disabled",
    "user": None,
}
# Responses request fields that chat completions take as they are.
CHAT_TOO = ("service_tier", "prompt_cache_key", "safety_identifier")
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


class ResponsesRequest(_Open):
    """POST /v1/responses body (the spec's CreateResponse)."""

    model: str = Field(min_length=1)
    input: str | list[JSON] | None = None
    instructions: str | list[JSON] | None = None
    tools: list[JSON] | None = None
    tool_choice: str | JSON | None = None
    parallel_tool_calls: bool | None = None
    text: JSON | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    reasoning: JSON | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    stream: bool | None = None
    user: str | None = None
    fallbacks: list[str] | None = None
    gateway_timeout: float | None = Field(default=None, gt=0)

    def input_items(self) -> list[JSON]:
        """This turn's input as a list of items (a string input is one user message)."""
        if self.input is None:
            return []
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return [dict(item) for item in self.input]

    def echo(self) -> JSON:
        """The request's fields a response object repeats."""
        given = self.model_dump(exclude_unset=True, exclude={"input", "stream", *GATEWAY_FIELDS})
        echoed = {
            k: given.get(k, v) if given.get(k) is not None else v for k, v in _DEFAULTS.items()
        }
        echoed["store"] = self.store is not False
        return echoed


# The key under which a chat.completion made from a native answer carries that answer.
NATIVE = "gateway_native_response"


class ResponsesChatRequest(ChatCompletionRequest):
    """The chat request a Responses request is run as; its calls are recorded as
    ``operation: responses``. Where a deployment has its own Responses API (OpenAI, Azure
    OpenAI), the request goes there as it came instead (``native``: its body, with the
    conversation's items as ``input``), and the answer is read back as chat for accounting."""

    operation: ClassVar[Literal["chat", "fim", "responses"]] = "responses"
    _native: JSON | None = PrivateAttr(default=None)
    _builtin_tools: list[str] = PrivateAttr(default_factory=list)
    _responses_body: JSON | None = PrivateAttr(default=None)

    def drop_native(self) -> None:
        self._native = None

    def cache_body(self) -> JSON:
        """The Responses request as it came, the conversation's earlier items in ``input``
        (``native_body``): what the response cache keys it by."""
        if self._responses_body is None:
            return super().cache_body()
        return self._responses_body

    def native_request(self, deployment: Any) -> UpstreamRequest | None:
        if self._native is None:
            return None
        upstream: UpstreamRequest | None = deployment.provider.responses_request(
            dict(self._native), deployment
        )
        if upstream is None and self._builtin_tools:
            raise InvalidRequestError(
                f"tool type {', '.join(map(repr, self._builtin_tools))} needs a deployment "
                f"with its own Responses API (OpenAI, or Azure OpenAI from api-version "
                f"2025-03-01-preview); deployment '{deployment.id}' is served through chat "
                "completions, which take function tools only",
                param="tools",
                code="unsupported_tool",
                retryable=False,
            )
        return upstream

    def native_answer(self, body: bytes, deployment: Any) -> JSON:
        native: JSON = deployment.provider.responses_response(body, deployment)
        return chat_of_native(native)


# --- request → chat -------------------------------------------------------------------------


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or p.get("refusal") or "") for p in content if isinstance(p, dict)
        )
    return ""


def _part(part: JSON) -> JSON:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not url:
            raise InvalidRequestError(
                "input_image parts need an image_url (a URL or a data: URL); file_id images "
                "are not served by this gateway",
                param="input",
            )
        image: JSON = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise InvalidRequestError(
        f"input content of type '{kind}' is not supported by this gateway; use input_text "
        "or input_image",
        param="input",
    )


def _message(item: JSON) -> JSON:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise InvalidRequestError(
            f"input message role '{role}' is not one of user, system, developer, assistant",
            param="input",
        )
    content = item.get("content")
    if role == "assistant" or not isinstance(content, list):
        return {"role": role, "content": _text_of(content)}
    parts = [_part(p) for p in content if isinstance(p, dict)]
    if all(p["type"] == "text" for p in parts):  # text alone is sent as a string
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def chat_messages(items: list[JSON]) -> list[JSON]:
    """Responses input items as chat messages: consecutive function calls become one
    assistant message's tool calls, their outputs tool messages; reasoning items are the
    model's own and are not sent back."""
    messages: list[JSON] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item))
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item.get("id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": output if isinstance(output, str) else _text_of(output),
                }
            )
        elif kind == "reasoning":
            continue
        else:
            raise InvalidRequestError(
                f"input item of type '{kind}' is not supported by this gateway; use message, "
                "function_call or function_call_output items",
                param="input",
            )
    return messages


def _tools(tools: list[JSON]) -> list[JSON]:
    """The function tools in chat's shape (built-in tools are left out)."""
    out: list[JSON] = []
    for tool in tools:
        if tool.get("type") != "function":
            continue
        function = {
            k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool
        }
        out.append({"type": "function", "function": function})
    return out


def builtin_tools(tools: list[JSON] | None) -> list[str]:
    """The types of the built-in (non-function) tools among ``tools``."""
    return [str(t.get("type")) for t in tools or () if t.get("type") != "function"]


def native_body(request: ResponsesRequest, history: list[JSON]) -> JSON:
    """The request for a provider's own Responses API: as it came, with the conversation's
    earlier items in ``input`` (the gateway keeps the state, so nothing is stored upstream;
    reasoning items and the gateway's item ids mean nothing there and are left out)."""
    body = request.model_dump(
        exclude_unset=True,
        exclude={"previous_response_id", "stream", "store", "metadata", *GATEWAY_FIELDS},
    )
    if request.stream:
        body["stream"] = True
    earlier = [
        {k: v for k, v in item.items() if k != "id"}
        for item in history
        if item.get("type") != "reasoning"
    ]
    body["input"] = [*earlier, *request.input_items()]
    body["store"] = False
    return body


def _tool_choice(choice: str | JSON) -> str | JSON:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequestError(
        f"tool_choice {choice!r} is not supported; use auto, none, required or "
        '{"type": "function", "name": …}',
        param="tool_choice",
    )


def _response_format(text: JSON) -> JSON | None:
    fmt = text.get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequestError(
        f"text.format type '{fmt['type']}' is not one of text, json_object, json_schema",
        param="text.format",
    )


def chat_request(request: ResponsesRequest, history: list[JSON]) -> ResponsesChatRequest:
    """The chat request that answers ``request``, after the conversation's earlier items."""
    messages: list[JSON] = []
    if request.instructions:
        instructions = request.instructions
        if isinstance(instructions, str):
            messages.append({"role": "system", "content": instructions})
        else:
            messages.extend(chat_messages(instructions))
    messages.extend(chat_messages([*history, *request.input_items()]))
    if not messages:
        raise InvalidRequestError("input must not be empty", param="input")
    body: JSON = {"model": request.model, "messages": messages}
    builtin = builtin_tools(request.tools)
    if request.tools and len(builtin) < len(request.tools):
        body["tools"] = _tools(request.tools)
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is not None and request.tools:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.text:
        fmt = _response_format(request.text)
        if fmt is not None:
            body["response_format"] = fmt
    effort = (request.reasoning or {}).get("effort")
    if effort:
        body["reasoning_effort"] = effort
    if request.max_output_tokens is not None:
        cap = "max_completion_tokens" if effort else "max_tokens"
        body[cap] = request.max_output_tokens
    for name in ("temperature", "top_p", "user", "fallbacks", "gateway_timeout"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    extra = request.model_extra or {}
    for name in CHAT_TOO:  # fields chat has under the same name (the tier is billed)
        if extra.get(name) is not None:
            body[name] = extra[name]
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if "tools" not in body:
        body.pop("tool_choice", None)  # a choice among built-in tools, if any
    chat = ResponsesChatRequest.model_validate(body)
    chat._native = chat._responses_body = native_body(request, history)
    chat._builtin_tools = builtin
    return chat


def stored_item(item: JSON) -> JSON:
    """An input item as ``GET …/input_items`` lists it: with an id, and a message's text as
    typed content parts."""
    item = dict(item)
    kind = item.setdefault("type", "message")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": content}]
        item.setdefault("status", "completed")
    if not item.get("id"):
        item["id"] = new_id("msg" if kind == "message" else "item")
    return item


# --- chat → response ------------------------------------------------------------------------


def usage_of(usage: JSON | None) -> JSON | None:
    """Chat usage in the Responses shape."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def message_item(text: str, item_id: str, status: str = "completed") -> JSON:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    }


def text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_item(call: JSON, item_id: str, status: str = "completed") -> JSON:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.get("id") or item_id,
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
        "status": status,
    }


def output_items(result: JSON) -> list[JSON]:
    """The output items of a chat completion's first choice."""
    choices = result.get("choices") or [{}]
    message = choices[0].get("message") or {}
    items: list[JSON] = []
    if message.get("refusal"):
        items.append(
            {
                "type": "message",
                "id": new_id("msg"),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "refusal", "refusal": message["refusal"]}],
            }
        )
    content = message.get("content")
    if content:
        items.append(message_item(_text_of(content), new_id("msg")))
    for call in message.get("tool_calls") or ():
        items.append(function_item(call, new_id("fc")))
    return items


def response_object(
    response_id: str,
    request: ResponsesRequest,
    created_at: int,
    *,
    status: str = "completed",
    output: list[JSON] | None = None,
    usage: JSON | None = None,
    finish_reason: str | None = None,
    error: JSON | None = None,
) -> JSON:
    """A response object in the spec's shape."""
    incomplete = _INCOMPLETE.get(finish_reason or "")
    if status == "completed" and incomplete is not None:
        status = "incomplete"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete} if status == "incomplete" else None,
        "model": request.model,
        "output": output or [],
        "usage": usage,
        **request.echo(),
    }


def from_chat(response_id: str, request: ResponsesRequest, created_at: int, result: JSON) -> JSON:
    """The response object for a chat completion."""
    choices = result.get("choices") or [{}]
    return response_object(
        response_id,
        request,
        created_at,
        output=output_items(result),
        usage=usage_of(result.get("usage")),
        finish_reason=choices[0].get("finish_reason"),
    )


def chat_of_native(native: JSON) -> JSON:
    """A native response object as the chat.completion the engine accounts for (the
    response itself rides along under ``NATIVE``)."""
    text = ""
    calls: list[JSON] = []
    for item in native.get("output") or ():
        if item.get("type") == "message":
            text += _text_of(item.get("content"))
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                }
            )
    reason = str((native.get("incomplete_details") or {}).get("reason") or "")
    finish = (
        "tool_calls" if calls else {"max_output_tokens": "length", "": "stop"}.get(reason, reason)
    )
    message: JSON = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    answer: JSON = {
        "id": native.get("id"),
        "object": "chat.completion",
        "created": native.get("created_at"),
        "model": native.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": chat_usage(native.get("usage")),
        NATIVE: native,
    }
    if native.get("service_tier"):
        answer["service_tier"] = native["service_tier"]
    return answer


def from_native(response_id: str, request: ResponsesRequest, native: JSON) -> JSON:
    """A provider's own response object, as the gateway answers it: under the gateway's id
    (the conversation is the gateway's), for the public model, with the caller's ``store``,
    ``previous_response_id`` and ``metadata``."""
    echoed = request.echo()
    return {
        **native,
        "id": response_id,
        "model": request.model,
        "previous_response_id": request.previous_response_id,
        "store": echoed["store"],
        "metadata": echoed["metadata"],
    }


# --- chat chunks → stream events ------------------------------------------------------------


class EventWriter:
    """The Responses stream's typed events for a chat stream's chunks: ``opening`` first,
    ``feed`` each chunk, then ``finish`` (or ``fail``). Items are numbered in the order they
    open; the text message is finished before a function call opens."""

    def __init__(self, response_id: str, request: ResponsesRequest, created_at: int) -> None:
        self.response_id = response_id
        self.request = request
        self.created_at = created_at
        self.sequence = 0
        self.output: list[JSON] = []
        self.text: list[str] = []
        self.message: JSON | None = None  # the open text item
        self.calls: dict[int, JSON] = {}  # open function call items by chunk tool index
        self.usage: JSON | None = None
        self.finish_reason: str | None = None

    def _event(self, kind: str, **fields: Any) -> JSON:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def snapshot(self, status: str, **fields: Any) -> JSON:
        return response_object(
            self.response_id, self.request, self.created_at, status=status, **fields
        )

    def opening(self) -> Iterator[JSON]:
        yield self._event("response.created", response=self.snapshot("in_progress"))
        yield self._event("response.in_progress", response=self.snapshot("in_progress"))

    def feed(self, chunk: JSON) -> Iterator[JSON]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                yield from self._text(content)
            for call in delta.get("tool_calls") or ():
                yield from self._call(call)

    def _text(self, delta: str) -> Iterator[JSON]:
        if self.message is None:
            self.message = message_item("", new_id("msg"), "in_progress")
            self.message["content"] = []
            index = len(self.output)
            self.output.append(self.message)
            yield self._event("response.output_item.added", output_index=index, item=self.message)
            yield self._event(
                "response.content_part.added",
                item_id=self.message["id"],
                output_index=index,
                content_index=0,
                part=text_part(""),
            )
        self.text.append(delta)
        yield self._event(
            "response.output_text.delta",
            item_id=self.message["id"],
            output_index=self.output.index(self.message),
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def _close_text(self) -> Iterator[JSON]:
        message = self.message
        if message is None:
            return
        self.message = None
        index = self.output.index(message)
        text = "".join(self.text)
        part = text_part(text)
        yield self._event(
            "response.output_text.done",
            item_id=message["id"],
            output_index=index,
            content_index=0,
            text=text,
            logprobs=[],
        )
        yield self._event(
            "response.content_part.done",
            item_id=message["id"],
            output_index=index,
            content_index=0,
            part=part,
        )
        message.update(status="completed", content=[part])
        yield self._event("response.output_item.done", output_index=index, item=message)

    def _call(self, delta: JSON) -> Iterator[JSON]:
        at = int(delta.get("index") or 0)
        item = self.calls.get(at)
        function = delta.get("function") or {}
        if item is None:
            yield from self._close_text()
            item = function_item(
                {"id": delta.get("id"), "function": {"name": function.get("name")}},
                new_id("fc"),
                "in_progress",
            )
            self.calls[at] = item
            self.output.append(item)
            yield self._event(
                "response.output_item.added", output_index=len(self.output) - 1, item=item
            )
        elif function.get("name") and not item["name"]:
            item["name"] = function["name"]
        arguments = function.get("arguments")
        if arguments:
            item["arguments"] += arguments
            yield self._event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=self.output.index(item),
                delta=arguments,
            )

    def _close_calls(self) -> Iterator[JSON]:
        for item in self.calls.values():
            index = self.output.index(item)
            yield self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
            item["status"] = "completed"
            yield self._event("response.output_item.done", output_index=index, item=item)
        self.calls = {}

    def finish(self) -> Iterator[JSON]:
        """The closing events; ``self.final`` is then the finished response object."""
        yield from self._close_text()
        yield from self._close_calls()
        final = self.final()
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        yield self._event(kind, response=final)

    def final(self) -> JSON:
        return self.snapshot(
            "completed",
            output=self.output,
            usage=usage_of(self.usage),
            finish_reason=self.finish_reason,
        )

    def fail(self, code: str, message: str) -> Iterator[JSON]:
        error = {"code": code, "message": message}
        yield self._event("error", code=code, message=message, param=None)
        yield self._event(
            "response.failed",
            response=self.snapshot("failed", output=self.output, error=error),
        )
