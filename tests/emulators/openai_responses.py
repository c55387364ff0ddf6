"""OpenAI's own Responses API (``POST /v1/responses``) and Azure OpenAI's (``/openai/v1/responses``
and ``/openai/responses?api-version=…``), strict like the real ones: an unknown top-level field
is a 400 ``Unknown parameter``, ``model`` and ``input`` are required, input items must be of a
known type, and an item id of a response that was never stored (``store: false``) is a 404.

Answers are deterministic: ``echo: <last user text>``; with a function tool and a user message
last, a ``function_call``; with a ``web_search`` tool, a ``web_search_call`` item before the
message. Usage counts words (input) and the answer's words (output), with 1 cached token.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.emulators.common import json_response, sse_response
from tests.emulators.openai_api import API_KEY as OPENAI_KEY
from tests.emulators.openai_api import OpenAIEmulator, error

AZURE_KEY = "azure-responses-key"
AZURE_API_VERSIONS = frozenset({"2025-03-01-preview", "2025-04-01-preview"})
# CreateResponse's properties in the spec.
FIELDS = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
        "max_output_tokens", "max_tool_calls", "temperature", "top_p", "top_logprobs",
        "reasoning", "metadata", "store", "previous_response_id", "stream", "stream_options",
        "user", "safety_identifier", "prompt_cache_key", "service_tier", "truncation",
        "include", "background", "prompt", "conversation",
    }
)  # fmt: skip
ITEM_TYPES = frozenset(
    {"message", "function_call", "function_call_output", "reasoning", "web_search_call"}
)


def _words(content: Any) -> list[str]:
    if isinstance(content, str):
        return content.split()
    if isinstance(content, list):
        return [w for p in content if isinstance(p, dict) for w in str(p.get("text", "")).split()]
    return []


class ResponsesEmulator(OpenAIEmulator):
    """The OpenAI emulator (chat, embeddings) plus the Responses API of OpenAI (Bearer key)
    and of Azure OpenAI (api-key)."""

    def __init__(self) -> None:
        super().__init__()
        self.app.router.routes.extend(
            [
                Route("/v1/responses", self.openai, methods=["POST"]),
                Route("/openai/v1/responses", self.azure, methods=["POST"]),
                Route("/openai/responses", self.azure, methods=["POST"]),
            ]
        )

    async def openai(self, request: Request) -> Response:
        rec = await self.record(request)
        if request.headers.get("authorization") != f"Bearer {OPENAI_KEY}":
            return error(401, "Incorrect API key provided.", "invalid_request_error")
        return await self.answer(rec.body)

    async def azure(self, request: Request) -> Response:
        rec = await self.record(request)
        if request.headers.get("api-key") != AZURE_KEY:
            return error(401, "Access denied due to invalid subscription key.", "401")
        version = request.query_params.get("api-version")
        if request.url.path == "/openai/responses" and version not in AZURE_API_VERSIONS:
            return error(404, "Resource not found", "invalid_request_error", "404")
        return await self.answer(rec.body)

    async def answer(self, body: Any) -> Response:
        fault = await self.take_fault()
        if fault is not None and fault.cut_after is None:
            return Response(fault.body, fault.status, media_type=fault.content_type)
        if not isinstance(body, dict):
            return error(400, "We could not parse the JSON body.", "invalid_request_error")
        for name in body:
            if name not in FIELDS:
                return error(
                    400, f"Unknown parameter: '{name}'.", "invalid_request_error",
                    "unknown_parameter", name,
                )  # fmt: skip
        for name in ("model", "input"):
            if name not in body:
                return error(
                    400, f"Missing required parameter: '{name}'.", "invalid_request_error",
                    "missing_required_parameter", name,
                )  # fmt: skip
        items = body["input"]
        if isinstance(items, str):
            items = [{"type": "message", "role": "user", "content": items}]
        for item in items:
            kind = item.get("type", "message")
            if kind not in ITEM_TYPES:
                return error(
                    400, f"Invalid value: '{kind}'.", "invalid_request_error", "invalid_value",
                    "input",
                )  # fmt: skip
            if item.get("id") and body.get("store") is False:
                return error(
                    404,
                    f"Item with id '{item['id']}' not found. Items are not persisted when "
                    "`store` is set to false.",
                    "invalid_request_error",
                )
        response = self.response(body, items)
        if body.get("stream"):
            return sse_response(self.events(response), fault=fault)
        return json_response(response)

    @staticmethod
    def events(response: dict[str, Any]) -> list[bytes]:
        """The typed events OpenAI streams for ``response`` (text word by word, arguments in
        two pieces), each as ``event: <type>`` and its data."""
        out: list[dict[str, Any]] = []

        def add(kind: str, **fields: Any) -> None:
            out.append({"type": kind, "sequence_number": len(out), **fields})

        opening = {**response, "status": "in_progress", "output": [], "usage": None}
        add("response.created", response=opening)
        add("response.in_progress", response=opening)
        for index, item in enumerate(response["output"]):
            opened = {**item, "status": "in_progress"}
            if item["type"] == "function_call":
                opened["arguments"] = ""  # they follow in deltas
            add("response.output_item.added", output_index=index, item=opened)
            if item["type"] == "message":
                part = item["content"][0]
                ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
                add("response.content_part.added", **ids, part={**part, "text": ""})
                for k, word in enumerate(part["text"].split(" ")):
                    add("response.output_text.delta", **ids, delta=word if k == 0 else " " + word)
                add("response.output_text.done", **ids, text=part["text"])
                add("response.content_part.done", **ids, part=part)
            elif item["type"] == "function_call":
                args = item["arguments"]
                for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                    add(
                        "response.function_call_arguments.delta",
                        item_id=item["id"], output_index=index, delta=piece,
                    )  # fmt: skip
                add(
                    "response.function_call_arguments.done",
                    item_id=item["id"], output_index=index, arguments=args,
                )  # fmt: skip
            add("response.output_item.done", output_index=index, item=item)
        add("response.completed", response=response)
        return [
            b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in out
        ]

    @staticmethod
    def response(body: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
        words = _words(body.get("instructions"))
        for item in items:
            words += _words(item.get("content")) + _words(item.get("output"))
        last = items[-1]
        tools = body.get("tools") or []
        output: list[dict[str, Any]] = []
        if any(t.get("type") == "web_search" for t in tools):
            output.append({"type": "web_search_call", "id": "ws_1", "status": "completed"})
        functions = [t for t in tools if t.get("type") == "function"]
        if functions and last.get("role") == "user":
            output.append(
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_native1",
                    "name": functions[0]["name"],
                    "arguments": '{"city": "Paris"}',
                    "status": "completed",
                }
            )
            out_words = 2
        else:
            text = "echo: " + " ".join(_words(last.get("content")) or _words(last.get("output")))
            output.append(
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                    ],
                }
            )
            out_words = len(text.split())
        return {
            "id": "resp_upstream",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "model": str(body["model"]) + "-2024-08-06",
            "output": output,
            "parallel_tool_calls": True,
            "store": body.get("store", True),
            "tools": tools,
            "tool_choice": body.get("tool_choice", "auto"),
            "text": {"format": {"type": "text"}},
            "usage": {
                "input_tokens": len(words),
                "input_tokens_details": {"cached_tokens": 1},
                "output_tokens": out_words,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": len(words) + out_words,
            },
        }
