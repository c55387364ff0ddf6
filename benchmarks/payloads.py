"""Fixed request and response bodies shared by the static upstream and the load generators.

Every proxy in a run forwards the same request to the same upstream and gets the same bytes
back, so differences in the numbers are the proxies' own.
"""

from __future__ import annotations

import json
from typing import Any

UPSTREAM_MODEL = "gpt-4o-mini"
# Public model names, one per upstream answer shape (the upstream cannot look at the body to
# choose JSON or SSE, so each shape has its own base path; see upstream.py).
# "responses" is the Responses API translated to chat (the upstream answers chat JSON);
# "responses-native" is sent to the upstream's own /responses route.
MODELS = {
    "chat": "bench-chat",
    "stream": "bench-stream",
    "embed": "bench-embed",
    "responses": "bench-chat",
    "responses-native": "bench-native",
}
# Upstream base path per mode; the "/v1" suffix is what an OpenAI base_url ends with.
BASE_PATHS = {
    "chat": "/json/v1",
    "stream": "/sse/v1",
    "embed": "/json/v1",
    "responses": "/json/v1",
    "responses-native": "/json/v1",
}
OPERATIONS = {
    "chat": "/chat/completions",
    "stream": "/chat/completions",
    "embed": "/embeddings",
    "responses": "/responses",
    "responses-native": "/responses",
}
API_KEY = "sk-bench-not-a-real-key"
# Both proxies require this key from the load generator (LiteLLM refuses to start without one).
MASTER_KEY = "sk-bench-" + "0123456789abcdef" * 4

_WORDS = (
    "Hello! This is a fixed answer from the benchmark upstream: the same bytes every time, "
    "whichever proxy asked."
).split()
_CREATED = 1_700_000_000
_ID = "chatcmpl-bench000000000000000000000001"
_USAGE: dict[str, Any] = {
    "prompt_tokens": 14,
    "completion_tokens": len(_WORDS),
    "total_tokens": 14 + len(_WORDS),
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def chat_completion() -> str:
    """A non-streaming chat.completion, as OpenAI sends it."""
    return _dumps(
        {
            "id": _ID,
            "object": "chat.completion",
            "created": _CREATED,
            "model": f"{UPSTREAM_MODEL}-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(_WORDS), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _USAGE,
            "system_fingerprint": "fp_bench",
        }
    )


def _chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": f"{UPSTREAM_MODEL}-2024-07-18",
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


def chat_stream() -> str:
    """An SSE body: a role chunk, one chunk per word, a finish chunk, a usage chunk, [DONE]."""
    chunks = [_chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    chunks += [_chunk({"content": (" " if i else "") + w}, None) for i, w in enumerate(_WORDS)]
    chunks.append(_chunk({}, "stop"))
    usage = _chunk({}, None)
    usage["choices"] = []
    usage["usage"] = _USAGE
    chunks.append(usage)
    return "".join(f"data: {_dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def embeddings(dimensions: int = 256) -> str:
    """An embeddings list with one vector of ``dimensions`` fixed floats."""
    vector = [round(((i * 7919) % 1000) / 1000.0 - 0.5, 6) for i in range(dimensions)]
    return _dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    )


def response_object() -> str:
    """A non-streaming Responses API answer, as OpenAI sends it."""
    text = " ".join(_WORDS)
    return _dumps(
        {
            "id": "resp_bench000000000000000000000001",
            "object": "response",
            "created_at": _CREATED,
            "status": "completed",
            "error": None,
            "incomplete_details": None,
            "model": f"{UPSTREAM_MODEL}-2024-07-18",
            "output": [
                {
                    "type": "message",
                    "id": "msg_bench0000000000000000000001",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                    ],
                }
            ],
            "usage": {
                "input_tokens": 14,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": len(_WORDS),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 14 + len(_WORDS),
            },
        }
    )


def request_body(mode: str, model: str) -> str:
    """What the load generator POSTs for ``mode`` (one of ``MODELS``)."""
    if mode == "embed":
        return _dumps({"model": model, "input": "The quick brown fox jumps over the lazy dog"})
    if mode.startswith("responses"):
        return _dumps(
            {
                "model": model,
                "instructions": "You are a helpful assistant.",
                "input": "Say hello to the benchmark.",
                "max_output_tokens": 64,
                "temperature": 0.2,
                "store": False,  # the added latency of the call, not of storing it
            }
        )
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello to the benchmark."},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    }
    if mode == "stream":
        body["stream"] = True
    return _dumps(body)


def upstream_bodies() -> dict[str, tuple[str, str]]:
    """Upstream path → (content type, body): everything the static upstream serves."""
    return {
        "/json/v1/chat/completions": ("application/json", chat_completion()),
        "/sse/v1/chat/completions": ("text/event-stream", chat_stream()),
        "/json/v1/embeddings": ("application/json", embeddings()),
        "/json/v1/responses": ("application/json", response_object()),
    }
