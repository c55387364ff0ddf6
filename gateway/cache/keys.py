"""The canonical form of a request, and the cache key made of it.

Two requests that ask for the same answer must have the same key: JSON key order does not
matter (the form is serialised with sorted keys), nor does a field set to the value a provider
assumes when it is absent (``n: 1``, ``top_p: 1``, ``tool_choice: "auto"`` with tools, …), nor
a ``null``. Fields that do not change the answer (``stream``, ``stream_options``, ``user``,
``metadata`` and the gateway's own options) are left out. A content given as a list of text
parts equals the same text given as one string.

One function per operation (``chat_form``, ``responses_form``, ``fim_form``,
``embeddings_form``); a new operation adds its own and calls ``cache_key`` with it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.wire import JSON

# What does not change the answer: how it is delivered, who is billed, the gateway's options.
_NOT_THE_ANSWER = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "fallbacks",
        "gateway_timeout",
        "prompt_cache_key",
        "safety_identifier",
    }
)
# A field set to the value a provider assumes when it is missing says nothing.
_DEFAULTS: dict[str, Any] = {
    "n": 1,
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "parallel_tool_calls": True,
    "response_format": {"type": "text"},
    "encoding_format": "float",
    "stop": [],
    "suffix": "",
}


def _pruned(value: Any) -> Any:
    """``value`` without ``null`` members (at any depth)."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _text_content(content: Any) -> Any:
    """A content of text parts only, as the one string it stands for."""
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and set(p) <= {"type", "text"}
        for p in content
    ):
        return "".join(str(p.get("text", "")) for p in content)
    return content


def _common(body: JSON) -> JSON:
    form: JSON = {}
    for name, value in _pruned(body).items():
        if name in _NOT_THE_ANSWER or _DEFAULTS.get(name, ...) == value:
            continue
        if name == "stop" and isinstance(value, str):
            value = [value]
        form[name] = value
    return form


def chat_form(body: JSON) -> JSON:
    """The canonical form of a chat completion request body (``upstream_body()``)."""
    form = _common(body)
    form["messages"] = [
        {**m, "content": _text_content(m["content"])} if "content" in m else m
        for m in form.get("messages") or ()
    ]
    choice = form.get("tool_choice")
    if choice == ("auto" if form.get("tools") else "none"):
        del form["tool_choice"]
    if form.get("max_completion_tokens") is not None and "max_tokens" not in form:
        # The two caps mean the same to a non-reasoning model; one name for both.
        form["max_tokens"] = form.pop("max_completion_tokens")
    return form


# What the Responses API assumes when a field is missing.
_RESPONSES_DEFAULTS: dict[str, Any] = {
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "truncation": "disabled",
    "include": [],
}
# Text parts of a Responses message's content.
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _item(item: JSON) -> JSON:
    """An input item in one shape: a message by its type, its text parts as one string."""
    if item.get("type", "message") != "message":
        return item
    item = {k: v for k, v in item.items() if k not in ("id", "status")}
    item["type"] = "message"
    content = item.get("content")
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") in _TEXT_PARTS and set(p) <= {"type", "text"}
        for p in content
    ):
        item["content"] = "".join(str(p.get("text", "")) for p in content)
    return item


def responses_form(body: JSON) -> JSON:
    """The canonical form of a Responses API request (``ResponsesChatRequest.cache_body``: the
    request with the conversation's earlier items in ``input``, no ``previous_response_id``)."""
    form = {
        k: v
        for k, v in _common(body).items()
        if _RESPONSES_DEFAULTS.get(k, ...) != v and not (k == "instructions" and v == "")
    }
    form["input"] = [_item(i) for i in form.get("input") or () if isinstance(i, dict)]
    return form


def fim_form(body: JSON) -> JSON:
    """The canonical form of a fill-in-the-middle request body."""
    return _common(body)


def embeddings_form(body: JSON) -> JSON:
    """The canonical form of an embeddings request body (one input = a list of one)."""
    form = _common(body)
    if isinstance(form.get("input"), str):
        form["input"] = [form["input"]]
    return form


def canonical_bytes(form: JSON) -> bytes:
    """``form`` serialised the one way: sorted keys, no spaces."""
    return orjson.dumps(form, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def cache_key(scope: str, operation: str, form: JSON) -> str:
    """The key of an answer: who may share it, the operation, the request's canonical form."""
    digest = hashlib.sha256(canonical_bytes(form)).hexdigest()
    return f"{operation}:{hashlib.sha256(scope.encode()).hexdigest()[:16]}:{digest}"
