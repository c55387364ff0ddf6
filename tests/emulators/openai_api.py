"""An OpenAI API emulator: /v1/chat/completions (JSON and SSE), /v1/embeddings, auth.

Quirks kept from the real API: ``stream_options`` is rejected unless ``stream`` is true;
``usage: null`` rides on every chunk when ``include_usage`` is set, followed by a final chunk
with ``choices: []`` and the usage; tool-call arguments stream in pieces.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.emulators.common import (
    EmulatorBase,
    fault_response,
    json_response,
    sse,
    sse_response,
)

API_KEY = "sk-test-openai"


def error(
    status: int, message: str, type_: str, code: str | None = None, param: str | None = None
) -> Response:
    return json_response(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}, status
    )


def text_of(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def image_tokens(content: Any) -> int:
    """What gpt-4o bills for the images of ``content``: 85 tokens at ``detail: low``, else 765,
    as for a 1024x1024 image (4 tiles of 170 + 85; the emulator decodes no image)."""
    if not isinstance(content, list):
        return 0
    images = [p.get("image_url") for p in content if isinstance(p, dict)]
    return sum(85 if isinstance(i, dict) and i.get("detail") == "low" else 765 for i in images if i)


def completion(body: dict[str, Any], model_name: str) -> dict[str, Any]:
    """A deterministic chat.completion for ``body``."""
    messages = body["messages"]
    last = messages[-1]
    prompt_tokens = sum(
        len(text_of(m.get("content")).split()) + image_tokens(m.get("content")) for m in messages
    )
    n = body.get("n") or 1
    choices = []
    for i in range(n):
        msg: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if body.get("tools") and body.get("tool_choice") != "none" and last["role"] == "user":
            fn = body["tools"][0]["function"]["name"]
            msg["tool_calls"] = [
                {
                    "id": f"call_{i}abcdefghijklmnopqrstuvw",
                    "type": "function",
                    "function": {"name": fn, "arguments": '{"city": "Paris", "unit": "c"}'},
                }
            ]
            finish = "tool_calls"
        else:
            text = f"echo: {text_of(last.get('content'))}"
            if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
                text = '{"answer": "echo"}'
            msg["content"] = text
            finish = "stop"
        choice: dict[str, Any] = {
            "index": i,
            "message": msg,
            "finish_reason": finish,
            "logprobs": None,
        }
        if body.get("logprobs"):
            choice["logprobs"] = {
                "content": [{"token": "echo", "logprob": -0.1, "bytes": None, "top_logprobs": []}],
                "refusal": None,
            }
        choices.append(choice)
    completion_tokens = sum(len((c["message"]["content"] or "x y").split()) for c in choices)
    return {
        "id": "chatcmpl-emulated",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": "fp_emulated",
    }


def chunks(answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The SSE chunks OpenAI would send for ``answer``."""
    head = {
        "id": answer["id"],
        "object": "chat.completion.chunk",
        "created": answer["created"],
        "model": answer["model"],
        "system_fingerprint": answer["system_fingerprint"],
    }
    extra = {"usage": None} if include_usage else {}
    out: list[dict[str, Any]] = []

    def add(i: int, delta: dict[str, Any], finish: str | None = None) -> None:
        out.append(
            {
                **head,
                "choices": [
                    {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                **extra,
            }
        )

    for choice in answer["choices"]:
        i, msg = choice["index"], choice["message"]
        add(i, {"role": "assistant", "content": "", "refusal": None})
        for call in msg.get("tool_calls") or []:
            args = call["function"]["arguments"]
            add(
                i,
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                },
            )
            for k in range(0, len(args), 8):
                add(i, {"tool_calls": [{"index": 0, "function": {"arguments": args[k : k + 8]}}]})
        if msg.get("content"):
            for k, word in enumerate(msg["content"].split(" ")):
                add(i, {"content": word if k == 0 else " " + word})
        add(i, {}, choice["finish_reason"])
    if include_usage:
        out.append({**head, "choices": [], "usage": answer["usage"]})
    return out


class OpenAIEmulator(EmulatorBase):
    """Serves the OpenAI API under /v1."""

    def __init__(self, model_suffix: str = "-2024-08-06") -> None:
        super().__init__()
        self.model_suffix = model_suffix
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ]
        )

    def check_auth(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        return None

    async def chat(self, request: Request) -> Response:
        rec = await self.record(request)
        if (denied := self.check_auth(request)) is not None:
            return denied
        fault = await self.take_fault()
        if fault is not None and fault.cut_after is None and fault.stall_after is None:
            return fault_response(fault)
        body = rec.body
        if not isinstance(body, dict) or "messages" not in body or "model" not in body:
            return error(
                400,
                "Missing required parameter: 'messages'.",
                "invalid_request_error",
                "missing_required_parameter",
                "messages",
            )
        if body.get("stream_options") is not None and not body.get("stream"):
            return error(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "invalid_request_error",
                None,
                "stream_options",
            )
        answer = completion(body, body["model"] + self.model_suffix)
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            events = [sse(c) for c in chunks(answer, include)] + [b"data: [DONE]\n\n"]
            return sse_response(events, fault=fault)
        return json_response(answer)

    async def embeddings(self, request: Request) -> Response:
        rec = await self.record(request)
        if (denied := self.check_auth(request)) is not None:
            return denied
        fault = await self.take_fault()
        if fault is not None:
            return fault_response(fault)
        body = rec.body
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions") or 4
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float(len(str(x))) / (k + 1) for k in range(dims)],
            }
            for i, x in enumerate(inputs)
        ]
        tokens = sum(len(str(x).split()) for x in inputs)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
