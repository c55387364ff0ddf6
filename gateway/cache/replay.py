"""Answers as the cache keeps them, and back: a stream captured into one ``chat.completion``,
and a kept ``chat.completion`` replayed as the chunks of a stream (OpenAI's shape)."""

from __future__ import annotations

from typing import Any

from gateway.wire import JSON


class StreamCapture:
    """Folds the chunks of a stream into the ``chat.completion`` they add up to; gives up
    (``abandoned``) once the answer is larger than ``limit`` bytes of text."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.abandoned = False
        self.head: JSON = {}
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunks: list[JSON]) -> None:
        if self.abandoned:
            return
        for chunk in chunks:
            if not self.head:
                self.head = {
                    k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")
                }
            for choice in chunk.get("choices") or ():
                self._add_choice(choice)
        if self.size > self.limit:
            self.abandoned = True
            self._choices.clear()

    def _add_choice(self, choice: JSON) -> None:
        index = choice.get("index", 0)
        out = self._choices.setdefault(
            index, {"index": index, "message": {"role": "assistant", "content": None}}
        )
        delta = choice.get("delta") or {}
        message = out["message"]
        content = delta.get("content")
        if isinstance(content, str) and content:
            message["content"] = (message["content"] or "") + content
            self.size += len(content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            message["refusal"] = message.get("refusal", "") + refusal
            self.size += len(refusal)
        for call in delta.get("tool_calls") or ():
            calls = message.setdefault("tool_calls", [])
            at = call.get("index", len(calls))
            while len(calls) <= at:
                calls.append({"id": None, "type": "function", "function": {"arguments": ""}})
            kept = calls[at]
            if call.get("id"):
                kept["id"] = call["id"]
            if call.get("type"):
                kept["type"] = call["type"]
            function = call.get("function") or {}
            if function.get("name"):
                kept["function"]["name"] = function["name"]
            arguments = function.get("arguments") or ""
            kept["function"]["arguments"] += arguments
            self.size += len(arguments)
        if choice.get("finish_reason"):
            out["finish_reason"] = choice["finish_reason"]

    def completion(self, usage: JSON | None) -> JSON | None:
        """The ``chat.completion`` the stream added up to (None: nothing to keep)."""
        if self.abandoned or not self._choices:
            return None
        choices = [self._choices[i] for i in sorted(self._choices)]
        for choice in choices:
            choice.setdefault("finish_reason", None)
        return {**self.head, "object": "chat.completion", "choices": choices, "usage": usage}


def replay_chunks(completion: JSON, *, include_usage: bool) -> list[JSON]:
    """The chunks of a stream that says what ``completion`` says: per choice, its role and
    content (and tool calls) in one chunk and its finish reason in the next; then, if asked
    for, the usage in a chunk without choices."""
    head = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    if completion.get("system_fingerprint"):
        head["system_fingerprint"] = completion["system_fingerprint"]
    chunks: list[JSON] = []
    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta: JSON = {"role": message.get("role") or "assistant"}
        if message.get("content") is not None:
            delta["content"] = message["content"]
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(message["tool_calls"])
            ]
        chunks.append(
            {**head, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
        )
        chunks.append(
            {
                **head,
                "choices": [
                    {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
                ],
            }
        )
    if include_usage:
        chunks.append({**head, "choices": [], "usage": completion.get("usage")})
    return chunks
