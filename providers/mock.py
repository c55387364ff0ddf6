"""An offline provider that answers in-process in OpenAI's wire format.

Used by ``make serve`` (no API key needed), demos and benchmarks. It is deterministic:
``mock-echo`` repeats the last user message; any other model writes ``completion_tokens``
words. Tokens are whitespace-separated words. It goes through the same SSE parsing,
usage accounting and error handling as a real provider, via its own in-process transport.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import orjson
from pydantic import Field

from gateway.wire import JSON, Timeouts, UpstreamRequest, UpstreamResponse
from providers.base import Capabilities, Deployment, Provider, ProviderSettings
from providers.openai import OpenAIProvider

_WORDS = (
    "the gateway routes each request to a provider and tracks what every call costs so teams "
    "can switch models without changing code"
).split(" ")


class MockSettings(ProviderSettings):
    """``type: mock`` — latency and sizes of the simulated answers."""

    base_url: str | None = "mock://local/v1"
    latency_ms: float = Field(default=0.0, ge=0, description="Delay before the first byte.")
    chunk_delay_ms: float = Field(default=0.0, ge=0, description="Delay between stream chunks.")
    completion_tokens: int = Field(default=16, ge=1, description="Words in a generated answer.")
    embedding_dimensions: int = Field(default=8, ge=1)


def _count(content: Any) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(_count(part.get("text")) for part in content if isinstance(part, dict))
    return 0


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class _MockResponse:
    def __init__(
        self, status: int, body: bytes | None, events: list[bytes] | None, delay_s: float
    ) -> None:
        self.status = status
        ctype = "text/event-stream" if events is not None else "application/json"
        self.headers: Mapping[str, str] = {"content-type": ctype}
        self._body = body or b""
        self._events = events or []
        self._delay_s = delay_s

    async def read(self) -> bytes:
        return self._body

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        for event in self._events:
            if self._delay_s:
                await asyncio.sleep(self._delay_s)
            yield event

    async def close(self) -> None:
        return None


class MockTransport:
    """Answers chat, legacy completion and embedding requests in-process, in OpenAI's wire
    format."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings

    async def send(self, request: UpstreamRequest, timeouts: Timeouts) -> UpstreamResponse:
        if self.settings.latency_ms:
            await asyncio.sleep(self.settings.latency_ms / 1000)
        body = orjson.loads(request.body or b"{}")
        if request.url.endswith("/embeddings"):
            return _MockResponse(200, orjson.dumps(self._embeddings(body)), None, 0)
        legacy = request.url.endswith("/completions") and not request.url.endswith(
            "/chat/completions"
        )
        answer = self._text_completion(body) if legacy else self._chat(body)
        if not body.get("stream"):
            return _MockResponse(200, orjson.dumps(answer), None, 0)
        chunks = self._text_chunks(answer, body) if legacy else self._chunks(answer, body)
        events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks]
        events.append(b"data: [DONE]\n\n")
        return _MockResponse(200, None, events, self.settings.chunk_delay_ms / 1000)

    async def close(self) -> None:
        return None

    def _chat(self, body: JSON) -> JSON:
        messages: list[JSON] = body.get("messages") or []
        prompt_tokens = sum(_count(m.get("content")) for m in messages)
        last = messages[-1] if messages else {}
        message: JSON = {"role": "assistant", "content": None}
        finish = "stop"
        if body.get("tools") and body.get("tool_choice") != "none" and last.get("role") == "user":
            tool = body["tools"][0]["function"]["name"]
            args = orjson.dumps({"input": _text(last.get("content"))}).decode()
            digest = hashlib.sha256(args.encode()).hexdigest()[:24]
            message["tool_calls"] = [
                {
                    "id": f"call_{digest}",
                    "type": "function",
                    "function": {"name": tool, "arguments": args},
                }
            ]
            finish = "tool_calls"
            completion_tokens = len(args.split())
        else:
            if body.get("model") == "mock-echo":
                text = _text(last.get("content"))
            else:
                n = self.settings.completion_tokens
                text = " ".join(_WORDS[i % len(_WORDS)] for i in range(n))
            fmt = (body.get("response_format") or {}).get("type")
            if fmt in ("json_object", "json_schema"):
                text = orjson.dumps({"text": text}).decode()
            message["content"] = text
            completion_tokens = len(text.split())
        choices = [
            {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
            for i in range(int(body.get("n") or 1))
        ]
        return {
            "id": "chatcmpl-mock" + hashlib.sha256(orjson.dumps(messages)).hexdigest()[:20],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "mock"),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens * len(choices),
                "total_tokens": prompt_tokens + completion_tokens * len(choices),
            },
        }

    def _text_completion(self, body: JSON) -> JSON:
        """OpenAI's legacy /completions answer (a deployment declared with
        ``capabilities: {completions: true}``): the chat answer to the prompt, as text."""
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else _text([{"text": p} for p in prompt or ()])
        answer = self._chat({**body, "messages": [{"role": "user", "content": text}]})
        answer["object"] = "text_completion"
        for choice in answer["choices"]:
            said = choice.pop("message").get("content") or ""
            choice["text"] = f"{text} {said}" if body.get("echo") else said
        return answer

    def _text_chunks(self, answer: JSON, body: JSON) -> list[JSON]:
        head = {k: answer[k] for k in ("id", "object", "created", "model")}
        out: list[JSON] = []
        for choice in answer["choices"]:
            for j, word in enumerate(choice["text"].split(" ")):
                piece = {"text": word if j == 0 else " " + word, "index": choice["index"]}
                out.append({**head, "choices": [{**piece, "finish_reason": None}]})
            end = {"text": "", "index": choice["index"], "finish_reason": choice["finish_reason"]}
            out.append({**head, "choices": [end]})
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append({**head, "choices": [], "usage": answer["usage"]})
        return out

    def _chunks(self, answer: JSON, body: JSON) -> list[JSON]:
        head = {k: answer[k] for k in ("id", "created", "model")}
        head["object"] = "chat.completion.chunk"
        out: list[JSON] = []
        for choice in answer["choices"]:
            i = choice["index"]
            msg = choice["message"]
            out.append(
                {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}}]}
            )
            if msg.get("tool_calls"):
                call = msg["tool_calls"][0]
                args = call["function"]["arguments"]
                first = {
                    "index": 0,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                out.append({**head, "choices": [{"index": i, "delta": {"tool_calls": [first]}}]})
                for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                    delta = {"tool_calls": [{"index": 0, "function": {"arguments": part}}]}
                    out.append({**head, "choices": [{"index": i, "delta": delta}]})
            else:
                words = (msg.get("content") or "").split(" ")
                for j, word in enumerate(words):
                    piece = word if j == 0 else " " + word
                    out.append({**head, "choices": [{"index": i, "delta": {"content": piece}}]})
            out.append(
                {
                    **head,
                    "choices": [
                        {"index": i, "delta": {}, "finish_reason": choice["finish_reason"]}
                    ],
                }
            )
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append({**head, "choices": [], "usage": answer["usage"]})
        return out

    def _embeddings(self, body: JSON) -> JSON:
        raw = body.get("input")
        inputs: list[Any] = raw if isinstance(raw, list) else [raw]
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]
        dims = int(body.get("dimensions") or self.settings.embedding_dimensions)
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += len(item) if isinstance(item, list) else len(text.split())
            digest = hashlib.sha256(text.encode()).digest()
            vector = [round((digest[k % len(digest)] - 128) / 128, 6) for k in range(dims)]
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "mock"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


class MockProvider(OpenAIProvider):
    """``type: mock`` — OpenAI wire format, answered by an in-process transport."""

    type_name: ClassVar[str] = "mock"
    settings_model: ClassVar[type[ProviderSettings]] = MockSettings
    capabilities = Capabilities(logprobs=False)

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        super().__init__(name, settings)
        assert isinstance(settings, MockSettings)
        self.transport = MockTransport(settings)

    def url(self, deployment: Deployment, operation: str) -> str:
        return f"mock://local/v1/{operation}"


__all__ = ["MockProvider", "MockSettings", "MockTransport", "Provider"]
